"""Merge-and-negate: peak memory and time of the streamed merge vs loading all N models at once.

Builds a random GPT-2-shaped model (default 8 layers x 576 wide, vocab 50,257:
61M parameters, 245 MB in float32) and N "fine-tuned" copies (the base plus
noise), then, each in a fresh process so that peak RSS is its own:

- streamed: ``detoxflow.methods.task_vectors.merge.merge_task_vectors`` as the
  ``tv-merge`` command runs it (row chunks read with ``safe_open``, the output
  written straight to its safetensors file; glibc mmap threshold fixed);
- all-at-once: the straightforward way, ``safetensors.torch.load_file`` for
  the base and all N models, mean of the differences, ``save_file``.

Both outputs are compared (max abs difference) and the figures printed as a table.

    .venv/bin/python benchmarks/bench_task_vectors_merge.py --n 2 5 10 [--layers 8 --width 576]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(root: Path, n_max: int, layers: int, width: int) -> tuple[Path, list[Path]]:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from detoxflow.models import save_model_folder

    tok = GPT2Tokenizer.from_pretrained(str(REPO.parent / "shared" / "data" / "gpt2_tokenizer"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=layers, n_embd=width, n_head=max(1, width // 64)))
    n_params = sum(p.numel() for p in model.parameters())
    base = save_model_folder(model, tok, root / "base", method="base")
    del model
    tensors = load_file(base / "model.safetensors")
    fts = []
    for i in range(n_max):
        gen = torch.Generator().manual_seed(i + 1)
        out = root / f"ft{i}"
        shutil.copytree(base, out)
        save_file({k: (v + 1e-3 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v
                   for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
        fts.append(out)
    print(f"model: {n_params / 1e6:.1f}M parameters, "
          f"{(base / 'model.safetensors').stat().st_size / 2**20:.0f} MiB safetensors", flush=True)
    return base, fts


def worker(mode: str, base: Path, fts: list[Path], out: Path) -> dict:
    import torch  # noqa: F401  (import cost outside the timing, as in a pipeline job)

    from detoxflow.methods.task_vectors.merge import limit_heap_growth, merge_task_vectors

    baseline = rss_mb()
    t0 = time.perf_counter()
    if mode == "streamed":
        limit_heap_growth()  # as the tv-merge command does
        merge_task_vectors(base, fts, out, lam=1.0)
    else:
        from safetensors.torch import load_file, save_file

        pre = load_file(base / "model.safetensors")
        thetas = [load_file(f / "model.safetensors") for f in fts]  # all N models at once
        merged = {}
        for key, p in pre.items():
            if p.is_floating_point():
                tau = sum(t[key] - p for t in thetas) / len(thetas)
                merged[key] = p - tau
            else:
                merged[key] = p
        out.mkdir(parents=True)
        save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": rss_mb(), "baseline_rss_mb": baseline}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", nargs=4, metavar=("MODE", "BASE", "FTS_JSON", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, base, fts, out = args.worker
        print(json.dumps(worker(mode, Path(base), [Path(f) for f in json.loads(fts)], Path(out))))
        return

    import logging

    logging.disable(logging.WARNING)
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="tv_merge_bench_"))
    try:
        base, fts = build(tmp, max(args.n), args.layers, args.width)
        rows = []
        for n in args.n:
            for mode in ("streamed", "all-at-once"):
                out = tmp / f"out_{mode}_{n}"
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", mode, str(base), json.dumps([str(f) for f in fts[:n]]),
                     str(out)], capture_output=True, text=True, check=True)
                rows.append({"n": n, "mode": mode, **json.loads(proc.stdout.strip().splitlines()[-1])})
            from safetensors.torch import load_file

            a = load_file(tmp / f"out_streamed_{n}" / "model.safetensors")
            b = load_file(tmp / f"out_all-at-once_{n}" / "model.safetensors")
            diff = max((a[k].double() - b[k].double()).abs().max().item() for k in b)
            rows[-1]["max_abs_diff_vs_streamed"] = diff
            for mode in ("streamed", "all-at-once"):
                shutil.rmtree(tmp / f"out_{mode}_{n}")
        print("| N | method | time (s) | peak RSS (MiB) | peak above imports (MiB) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['n']} | {r['mode']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} |")
        for n in args.n:
            s = next(r for r in rows if r["n"] == n and r["mode"] == "streamed")
            a = next(r for r in rows if r["n"] == n and r["mode"] == "all-at-once")
            print(f"N={n}: memory above imports all-at-once / streamed = "
                  f"{(a['peak_rss_mb'] - a['baseline_rss_mb']) / (s['peak_rss_mb'] - s['baseline_rss_mb']):.1f}x, "
                  f"time ratio {a['seconds'] / s['seconds']:.2f}x, outputs differ by at most "
                  f"{a.get('max_abs_diff_vs_streamed', 0):.1e}")
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
