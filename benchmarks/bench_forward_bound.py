"""Forward-only stages vs the fp32 matmul bound: sliding-window perplexity and AurA response extraction.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_forward_bound.py [--ppl-tokens 4096 --window 1024
        --stride 512] [--sentences 64 --batch 16] [--dtypes float32 bfloat16]

SmolLM2-135M on the CPU. Perplexity on wikitext-2 (test split, ../shared/data/wikitext-2/wiki.test.raw),
AurA on Davidson tweets (every gate/up/down projection, max pooling, batch 16, 128 tokens). Prints tokens/s
(perplexity: every window token the model reads, overlap included, and the scored tokens; AurA: every
sentence token) and the share of the bound (tokens/s x 2 x params vs the GFLOP/s of a 2048^3 fp32 matmul).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from bench_generation import matmul_gflops  # noqa: E402
from common import machine, smollm2_dir  # noqa: E402

from detoxflow.evaluation.metrics.perplexity import sliding_window_nll  # noqa: E402
from detoxflow.methods.aura.modules import select_modules  # noqa: E402
from detoxflow.methods.aura.responses import record_responses  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtypes", nargs="+", default=["float32"])
    args = ap.parse_args()
    folder = smollm2_dir()
    bound = matmul_gflops()
    print(f"machine: {machine()}  threads: {torch.get_num_threads()}")
    print(f"bound: 2048^3 fp32 matmul {bound:.1f} GFLOP/s")
    text = (SHARED / "wikitext-2" / "wiki.test.raw").read_text()
    texts = pd.read_csv(SHARED / "davidson" / "labeled_data.csv")["tweet"].sample(args.sentences, random_state=0).tolist()
    for dtype in args.dtypes:
        model = load_model(folder, device="cpu", dtype=dtype)
        params = sum(p.numel() for p in model.parameters())
        tok = load_tokenizer(folder)
        ids = tok(text[:200_000], add_special_tokens=False)["input_ids"][: args.ppl_tokens]
        sliding_window_nll(model, ids[:64], 32, 16)  # warm-up
        read = sum(min(b + args.window, len(ids)) - b for b in range(0, len(ids), args.stride)
                   if b == 0 or b + args.window - args.stride < len(ids))
        t0 = time.perf_counter()
        nll, scored = sliding_window_nll(model, ids, args.window, args.stride)
        sec = time.perf_counter() - t0
        share = read / sec * 2 * params / (bound * 1e9)
        print(f"[{dtype}] perplexity {len(ids)} tokens, window {args.window} stride {args.stride}: {sec:.1f} s, "
              f"{read / sec:.0f} tokens read/s ({scored / sec:.0f} scored/s), {100 * share:.1f} % of the fp32 bound "
              f"(ppl {torch.tensor(nll / scored).exp():.3f})")
        atok = load_tokenizer(folder, padding_side="right")
        modules = select_modules(model, "auto")
        record_responses(model, atok, texts[:2], modules, batch_size=2)  # warm-up
        t0 = time.perf_counter()
        _, n_tokens = record_responses(model, atok, texts, modules, batch_size=args.batch, max_tokens=128)
        sec = time.perf_counter() - t0
        share = n_tokens / sec * 2 * params / (bound * 1e9)
        print(f"[{dtype}] AurA responses, {len(texts)} sentences ({n_tokens} tokens), batch {args.batch}: {sec:.1f} s, "
              f"{n_tokens / sec:.0f} tokens/s, {100 * share:.1f} % of the fp32 bound (2 x params per token; the "
              f"forward stops after the last recorded module, so the lm_head is skipped)")


if __name__ == "__main__":
    main()
