"""AurA response extraction: tokens/s and bytes on disk per sentence, vs the straightforward way.

    .venv/bin/python benchmarks/bench_aura_responses.py [--sentences 64 --batch 16 --model FOLDER]

Ours (detoxflow): length-sorted batches, pooling inside the forward hook into one
preallocated [sentences x units] tensor per module, the forward stopped after the
last recorded module, one safetensors file. Straightforward (the reference code's
layout): batches in data order, full module outputs kept and pooled afterwards,
the whole model run, one ``torch.save`` file per sentence and module.
SmolLM2-135M (30 layers x {gate,up,down}_proj = 109,440 units) on the CPU, Davidson tweets.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import machine, smollm2_dir  # noqa: E402

from detoxflow.methods.aura.modules import select_modules  # noqa: E402
from detoxflow.methods.aura.responses import record_responses, save_responses, tokenize  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402


def straightforward(model, tok, texts, modules, batch, max_tokens, out: Path) -> int:
    """Batches in data order, full outputs captured, pooled after a full forward, a file per sentence/module."""
    captured = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: captured.__setitem__(n, o.detach()))
               for n, m in modules.items()]
    tokens = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            chunk = texts[start:start + batch]
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
            tokens += int(enc["attention_mask"].sum())
            model(**enc, use_cache=False)
            mask = enc["attention_mask"].bool()
            for name, o in captured.items():
                pooled = o.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
                for r in range(len(chunk)):
                    torch.save(pooled[r].clone(), out / f"{start + r}_{name}.pt")
    for h in handles:
        h.remove()
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", default=None, help="SmolLM2 folder (default: materialised under benchmarks/out)")
    ap.add_argument("--data",
                    default=str(Path(__file__).resolve().parents[2] / "shared/data/davidson/labeled_data.csv"))
    args = ap.parse_args()
    texts = pd.read_csv(args.data)["tweet"].sample(args.sentences, random_state=0).tolist()
    folder = args.model or smollm2_dir()
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder, padding_side="right")
    modules = select_modules(model, "auto")
    n_units = sum(m.out_features for m in modules.values())
    print(f"machine: {machine()}")
    print(f"SmolLM2-135M, {len(modules)} modules, {n_units} units, {len(texts)} sentences, batch {args.batch}")
    record_responses(model, tok, texts[:2], modules, batch_size=2)  # warm-up
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        resp, tokens = record_responses(model, tok, texts, modules, batch_size=args.batch, max_tokens=args.max_tokens)
        ours = time.perf_counter() - t0
        path = save_responses(tmp / "responses.safetensors", resp, [1] * len(texts), {})
        ours_bytes = path.stat().st_size
        ids, _ = tokenize(tok, texts, args.max_tokens, False)
        print(f"ours: {tokens} tokens in {ours:.1f} s = {tokens / ours:.0f} tokens/s; "
              f"{ours_bytes / len(texts) / 1e3:.1f} kB per sentence on disk, 1 file")
        (tmp / "naive").mkdir()
        t0 = time.perf_counter()
        tokens_naive = straightforward(model, tok, texts, modules, args.batch, args.max_tokens, tmp / "naive")
        naive = time.perf_counter() - t0
        files = list((tmp / "naive").iterdir())
        naive_bytes = sum(f.stat().st_size for f in files)
        print(f"straightforward: {tokens_naive} tokens in {naive:.1f} s = {tokens_naive / naive:.0f} tokens/s; "
              f"{naive_bytes / len(texts) / 1e3:.1f} kB per sentence on disk, {len(files)} files")
        print(f"speed-up {naive / ours:.2f}x; disk ratio {naive_bytes / ours_bytes:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
