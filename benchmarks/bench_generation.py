"""Batched RTP generation vs one `generate` call per prompt (the reference code's way),
and detoxflow's nucleus filter vs Transformers' top-p warper (full vocabulary sort).

    .venv/bin/python benchmarks/bench_generation.py [--prompts 16 --k 5 --tokens 20 --batch 40]

Same prompts, same sampling settings, SmolLM2-135M on the CPU; prints seconds,
continuations per second and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import machine, smollm2_dir  # noqa: E402

from detoxflow.generation import generate_continuations  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/rtp/challenging_toxic.jsonl"))
    args = ap.parse_args()
    prompts = [json.loads(line)["prompt"]["text"] for line in open(args.data)][: args.prompts]
    folder = smollm2_dir()
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    kw = dict(max_new_tokens=args.tokens, do_sample=True, top_p=0.9, temperature=1.0, num_return_sequences=args.k)

    generate_continuations(model, tok, prompts[:2], batch_size=args.batch, seed=0, **kw)  # warm-up
    t0 = time.perf_counter()
    generate_continuations(model, tok, prompts, batch_size=args.batch, seed=0, **kw)
    batched = time.perf_counter() - t0

    # the same batches through Transformers' own temperature / top-p warpers
    tok.padding_side = "left"
    per_batch = max(1, args.batch // args.k)
    t0 = time.perf_counter()
    for start in range(0, len(prompts), per_batch):
        enc = tok(prompts[start:start + per_batch], return_tensors="pt", padding=True)
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=args.tokens, do_sample=True, top_p=0.9, temperature=1.0, top_k=0,
                           num_return_sequences=args.k, pad_token_id=tok.pad_token_id)
    hf_top_p = time.perf_counter() - t0

    t0 = time.perf_counter()
    for p in prompts:  # one generate call per prompt, as the reference code does
        generate_continuations(model, tok, [p], batch_size=args.k, seed=0, **kw)
    per_prompt = time.perf_counter() - t0

    n = args.prompts * args.k
    print(f"machine: {machine()}  threads: {torch.get_num_threads()}")
    print(f"{args.prompts} prompts x {args.k} samples x {args.tokens} new tokens (SmolLM2-135M, fp32)")
    print(f"batched (batch {args.batch} sequences): {batched:.1f} s  ({n / batched:.1f} continuations/s)")
    print(f"batched, Transformers' top-p warper: {hf_top_p:.1f} s  ({n / hf_top_p:.1f} continuations/s)")
    print(f"one generate call per prompt:        {per_prompt:.1f} s  ({n / per_prompt:.1f} continuations/s)")
    print(f"speed-up of batching: {per_prompt / batched:.2f}x; of the nucleus filter: {hf_top_p / batched:.2f}x")


if __name__ == "__main__":
    main()
