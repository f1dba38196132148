"""AurA expertise: AUROC of every unit at once vs a per-unit sklearn ``roc_auc_score`` loop.

    .venv/bin/python benchmarks/bench_aura_auroc.py [--units 384000 --sentences 256 --loop-units 3000]

384,000 units = GPT2-XL's 48 x (6400 + 1600) recorded outputs; 256 sentences =
the paper's 128 toxic + 128 non-toxic. The sklearn loop (what the reference code
runs, in a process pool) is timed on ``--loop-units`` units and extrapolated
linearly to all units; on those units both results are compared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from detoxflow.methods.aura.expertise import auroc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=384_000)
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--loop-units", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    n = args.sentences
    labels = torch.tensor([1] * (n // 2) + [0] * (n - n // 2))
    # Responses with a weak signal in some units, like real pooled activations.
    x = torch.randn(n, args.units, generator=g)
    x[: n // 2, : args.units // 10] += 0.3
    print(f"machine: {machine()}")
    print(f"{args.units} units x {n} sentences")
    for name, data in (("float32", x), ("bfloat16 (many ties)", x.bfloat16())):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours = auroc(data, labels)
            best = min(best, time.perf_counter() - t0)
        m = args.loop_units
        y = labels.numpy()
        cols = data[:, :m].float().numpy().astype(np.float64)
        t0 = time.perf_counter()
        ref = np.array([roc_auc_score(y, cols[:, j]) for j in range(m)])
        loop = time.perf_counter() - t0
        loop_all = loop / m * args.units
        diff = float(np.abs(ours[:m].numpy() - ref).max())
        print(f"[{name}] all units at once: {best:.2f} s (best of {args.repeats}); "
              f"sklearn loop: {loop:.2f} s for {m} units -> {loop_all:.0f} s extrapolated to {args.units}; "
              f"speed-up {loop_all / best:.0f}x; max |diff| on the {m} units {diff:.1e}")


if __name__ == "__main__":
    main()
