"""Two generation jobs: one after the other with every core each, or side by side with one thread each.

    .venv/bin/python benchmarks/bench_generation_threads.py [--prompts 16 --k 5 --tokens 20]

This is the choice behind `evaluation.threads`: Snakemake sets OMP_NUM_THREADS to
a rule's `threads`, and runs as many evaluation jobs side by side as --cores allows.
Each job is a fresh process (as under Snakemake); the figure is the generation
time of both jobs, model loading excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, smollm2_dir  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/rtp/challenging_toxic.jsonl"


def job(args) -> None:
    """One generation job: print its generation seconds as JSON."""
    from detoxflow.generation import generate_continuations
    from detoxflow.models import load_model, load_tokenizer

    prompts = [json.loads(line)["prompt"]["text"] for line in open(args.data)][: args.prompts]
    folder = smollm2_dir()
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    t0 = time.perf_counter()
    generate_continuations(model, tok, prompts, max_new_tokens=args.tokens, do_sample=True, top_p=0.9,
                           num_return_sequences=args.k, batch_size=40, seed=0)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def spawn(args, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--job", "--prompts", str(args.prompts), "--k", str(args.k),
           "--tokens", str(args.tokens), "--data", args.data]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def seconds(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a generation job failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        return job(args)
    smollm2_dir()  # materialise once, outside the timings
    cores = os.cpu_count() or 1
    serial = sum(seconds(spawn(args, cores)) for _ in range(2))
    procs = [spawn(args, 1) for _ in range(2)]
    side_by_side = max(seconds(p) for p in procs)  # both started together: the later finisher
    print(f"machine: {machine()}")
    print(f"2 jobs x {args.prompts} prompts x {args.k} samples x {args.tokens} tokens (SmolLM2-135M, fp32)")
    print(f"one after the other, {cores} threads each: {serial:.1f} s")
    print(f"side by side, 1 thread each:          {side_by_side:.1f} s")
    print(f"throughput ratio: {serial / side_by_side:.2f}x")


if __name__ == "__main__":
    main()
