"""Generation with AurA folded into the weights vs AurA applied by forward hooks (and the plain model).

    .venv/bin/python benchmarks/bench_aura_generation.py --expertise results/aura/expertise.safetensors \
        [--model results/models/base --prompts 16 --k 5 --tokens 20 --batch 40]

The expertise file comes from a pipeline run on the same model (rule aura_expertise).
Greedy decoding once more checks that both ways produce the same continuations.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, smollm2_dir  # noqa: E402

from detoxflow.generation import generate_continuations  # noqa: E402
from detoxflow.methods.aura.expertise import load_expertise  # noqa: E402
from detoxflow.methods.aura.fold import fold_alphas  # noqa: E402
from detoxflow.methods.aura.hooks import dampening_hooks  # noqa: E402
from detoxflow.methods.aura.interventions import compute_alphas  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expertise", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--data",
                    default=str(Path(__file__).resolve().parents[2] / "shared/data/rtp/challenging_toxic.jsonl"))
    args = ap.parse_args()
    prompts = [json.loads(line)["prompt"]["text"] for line in open(args.data)][: args.prompts]
    folder = args.model or smollm2_dir()
    base, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    aurocs, _ = load_expertise(args.expertise)
    alphas = compute_alphas(aurocs, "aura")
    folded = copy.deepcopy(base)
    fold_alphas(folded, alphas)
    kw = dict(max_new_tokens=args.tokens, do_sample=True, top_p=0.9, temperature=1.0, num_return_sequences=args.k,
              batch_size=args.batch, seed=0)
    print(f"machine: {machine()}")
    print(f"{len(prompts)} prompts x {args.k} continuations x {args.tokens} tokens, batch {args.batch}")
    generate_continuations(base, tok, prompts[:2], **kw)  # warm-up
    times = {}
    for name, model, ctx in (("plain model", base, None), ("hooks", base, alphas), ("folded", folded, None)):
        t0 = time.perf_counter()
        if ctx is None:
            generate_continuations(model, tok, prompts, **kw)
        else:
            with dampening_hooks(model, ctx):
                generate_continuations(model, tok, prompts, **kw)
        times[name] = time.perf_counter() - t0
        n = len(prompts) * args.k
        print(f"{name}: {times[name]:.1f} s, {n / times[name]:.2f} continuations/s")
    print(f"hooks / folded time: {times['hooks'] / times['folded']:.2f}x")
    greedy = dict(max_new_tokens=args.tokens, batch_size=args.batch)
    with dampening_hooks(base, alphas):
        a = generate_continuations(base, tok, prompts, **greedy)
    b = generate_continuations(folded, tok, prompts, **greedy)
    same = sum(x == y for x, y in zip(a, b))
    print(f"greedy continuations identical (hooks vs folded): {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
