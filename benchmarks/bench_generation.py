"""RTP generation: detoxflow's engine vs batched HF ``generate`` (0.1's way) vs one ``generate`` per prompt,
against a matmul bound measured in the same run.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_generation.py [--prompts 100 --k 5 --tokens 20]
        [--batch-tokens 8192] [--hf-batch 40] [--skip-per-prompt]

Default workload: the first 100 prompts of ../shared/data/rtp/challenging_toxic.jsonl x 5 samples x 20 new
tokens, top-p 0.9, SmolLM2-135M fp32 on the CPU. Prints seconds, continuations/s, useful tokens/s (every
prompt's tokens once + every generated token), the share of the bound (useful tokens/s x 2 x params vs the
fp32 GFLOP/s of a 2048^3 matmul) and the ratios.
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
from transformers import LogitsProcessorList  # noqa: E402

from detoxflow.generation import generate_continuations  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402
from detoxflow.sampling import NucleusFilter  # noqa: E402


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n^3 matmul (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


@torch.no_grad()
def hf_batched(model, tok, prompts, *, k, tokens, batch, seed=0):
    """0.1's generate_continuations: HF generate with num_return_sequences=k; batch counts sequences."""
    torch.manual_seed(seed)
    tok.padding_side = "left"
    per_batch = max(1, batch // k)
    out_texts = []
    proc = LogitsProcessorList([NucleusFilter(0.9, 1.0)])
    for start in range(0, len(prompts), per_batch):
        enc = tok(prompts[start:start + per_batch], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=True, top_p=1.0, temperature=1.0, top_k=0,
                             logits_processor=proc, num_return_sequences=k, pad_token_id=tok.pad_token_id)
        out_texts += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out_texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch-tokens", type=int, nargs="+", default=[8192])
    ap.add_argument("--hf-batch", type=int, default=40, help="sequences per batch of the HF generate baseline")
    ap.add_argument("--skip-per-prompt", action="store_true")
    ap.add_argument("--engine-dtypes", nargs="*", default=[],
                    help="also run the engine with the model loaded in these dtypes (e.g. bfloat16)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/rtp/challenging_toxic.jsonl"))
    args = ap.parse_args()
    prompts = [json.loads(line)["prompt"]["text"] for line in open(args.data)][: args.prompts]
    folder = smollm2_dir()
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    params = sum(p.numel() for p in model.parameters())
    n = len(prompts) * args.k
    useful = sum(len(tok(p)["input_ids"]) for p in prompts) + n * args.tokens
    kw = dict(max_new_tokens=args.tokens, do_sample=True, top_p=0.9, temperature=1.0, num_return_sequences=args.k)

    bound = matmul_gflops()
    print(f"machine: {machine()}  threads: {torch.get_num_threads()}")
    print(f"{len(prompts)} prompts x {args.k} samples x {args.tokens} new tokens (SmolLM2-135M, fp32, "
          f"{params / 1e6:.1f} M params); useful tokens {useful}")
    print(f"bound: 2048^3 fp32 matmul {bound:.1f} GFLOP/s -> {bound * 1e9 / (2 * params):.0f} tokens/s")

    def report(name, sec):
        rate = useful / sec
        share = rate * 2 * params / (bound * 1e9)
        print(f"{name:<44} {sec:7.1f} s  {n / sec:6.1f} continuations/s  {rate:6.0f} useful tokens/s  "
              f"{100 * share:4.1f} % of bound")
        return sec

    generate_continuations(model, tok, prompts[:2], seed=0, **kw)  # warm-up
    times = {}
    for bt in args.batch_tokens:
        t0 = time.perf_counter()
        generate_continuations(model, tok, prompts, batch_tokens=bt, seed=0, **kw)
        times[f"engine {bt}"] = report(f"(a) engine, batch_tokens {bt}", time.perf_counter() - t0)
    for dtype in args.engine_dtypes:
        other = load_model(folder, device="cpu", dtype=dtype)
        generate_continuations(other, tok, prompts[:2], seed=0, **kw)
        t0 = time.perf_counter()
        generate_continuations(other, tok, prompts, batch_tokens=args.batch_tokens[0], seed=0, **kw)
        report(f"(a') engine, {dtype}, batch_tokens {args.batch_tokens[0]}", time.perf_counter() - t0)
        del other
    t0 = time.perf_counter()
    hf_batched(model, tok, prompts, k=args.k, tokens=args.tokens, batch=args.hf_batch)
    times["hf"] = report(f"(b) HF generate, batch {args.hf_batch} sequences (0.1)", time.perf_counter() - t0)
    if not args.skip_per_prompt:
        t0 = time.perf_counter()
        for p in prompts:
            hf_batched(model, tok, [p], k=args.k, tokens=args.tokens, batch=args.k)
        times["per"] = report("(c) one HF generate call per prompt", time.perf_counter() - t0)
    best = min(v for key, v in times.items() if key.startswith("engine"))
    print(f"engine vs HF batched: {times['hf'] / best:.2f}x"
          + (f"; vs one call per prompt: {times['per'] / best:.2f}x" if "per" in times else ""))


if __name__ == "__main__":
    main()
