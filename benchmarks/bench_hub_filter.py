"""Hub recipe filtering: peak memory and time of the Arrow filter vs Python dicts for every row.

Writes a synthetic data set of 1,804,874 rows (google/civil_comments' train
split size) in civil_comments' schema (text string; toxicity, severe_toxicity,
obscene, threat, insult, identity_attack, sexual_explicit float32) as an Arrow
stream file, the form ``datasets`` caches a hub download in, and opens it
memory-mapped with ``Dataset.from_file`` as ``load_dataset`` does. Texts are
windows of the shared Jigsaw comments (mean about 330 characters, as the real
split's 596 MB / 1.8M rows); toxicity is u**10 for uniform u (2.2 % above 0.8).

Then, each in a fresh process so that peak RSS is its own, the recipe
``civil_comments_toxic`` of config.yaml (``toxicity > 0.8``) is run:

- arrow: ``detoxflow.data.recipes.load_recipe`` (hub path, with
  ``datasets.load_dataset`` patched to return the memory-mapped data set):
  the condition is computed in Arrow, only kept rows become Python dicts;
- python: the straightforward way (the code before this change): every row
  read into a Python dict (``read_records`` over the Dataset), then the
  Python ``apply_where`` and the empty-text filter.

Both must give the same texts; the script prints time, peak RSS (VmHWM) and
peak anonymous memory of each (see :class:`AnonPeak` for why both).

    .venv/bin/python benchmarks/bench_hub_filter.py [--rows 1804874]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DETOXFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
SCORES = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack", "sexual_explicit")


def rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: counts the memory-mapped pages touched too)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonPeak:
    """Peak anonymous (process-private) memory, sampled from /proc/self/status every 2 ms.

    VmHWM also counts the pages of the memory-mapped Arrow file a process has
    touched (file-backed, clean: the kernel drops them under pressure, and
    readahead maps whole neighbourhoods of a touched page); RssAnon is what the
    process itself allocated (Python dicts, Arrow buffers).
    """

    def __init__(self):
        import threading

        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def build(path: Path, n_rows: int, batch: int = 100_000) -> None:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from datasets import Features, Value

    features = Features({"text": Value("string"), **{k: Value("float32") for k in SCORES}})
    corpus = " ".join(pd.read_csv(SHARED / "jigsaw_sample" / "train.csv")["comment_text"].str.replace("\n", " "))
    rng = np.random.default_rng(0)
    schema = features.arrow_schema
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, n_rows, batch):
            n = min(batch, n_rows - start)
            lengths = rng.integers(20, 640, n)
            offsets = rng.integers(0, len(corpus) - 640, n)
            texts = [corpus[o:o + k] for o, k in zip(offsets.tolist(), lengths.tolist())]
            columns = {"text": pa.array(texts, pa.string()),
                       "toxicity": pa.array((rng.random(n) ** 10).astype(np.float32))}
            for k in SCORES[1:]:
                columns[k] = pa.array((rng.random(n) ** 4).astype(np.float32))
            writer.write_batch(pa.record_batch([columns[f.name] for f in schema], schema=schema))
    print(f"data: {n_rows:,} rows, {path.stat().st_size / 2**20:.0f} MiB Arrow file", flush=True)


def worker(mode: str, path: Path) -> dict:
    import datasets
    import yaml

    from detoxflow.data import recipes
    from detoxflow.data.readers import read_records
    from detoxflow.data.where import apply_where

    recipe = yaml.safe_load((REPO / "config.yaml").read_text())["datasets"]["civil_comments_toxic"]
    recipe = {"min_rows": 1, "seed": 42, **recipe}
    import pyarrow.compute  # noqa: F401  (import cost outside the measurement, as in a pipeline job)

    baseline, anon_baseline = rss_mb(), AnonPeak.now()
    t0 = time.perf_counter()
    with AnonPeak() as anon:
        ds = datasets.Dataset.from_file(str(path))  # memory-mapped, as load_dataset returns it
        if mode == "arrow":
            datasets.load_dataset = lambda *a, **k: ds
            rows = recipes.load_recipe("civil_comments_toxic", recipe, None)
        else:
            rows = read_records("civil_comments", ds, "hub google/civil_comments", None)
            rows = apply_where(rows, recipe["where"], "civil_comments_toxic")
            rows = [r for r in rows if isinstance(r.get("text"), str) and r["text"].strip()]
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256("\n".join(r["text"] for r in rows).encode()).hexdigest()
    return {"seconds": seconds, "peak_rss_mb": rss_mb(), "baseline_rss_mb": baseline,
            "peak_anon_mb": anon.peak, "anon_baseline_mb": anon_baseline, "kept": len(rows),
            "rows": ds.num_rows, "sha256": digest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_804_874)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "ARROW_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))))
        return

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="hub_filter_bench_"))
    try:
        path = tmp / "civil_comments-train.arrow"
        if not path.is_file():
            build(path, args.rows)
        results = {}
        for mode in ("arrow", "python"):
            env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, str(path)], capture_output=True,
                                  text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{mode} worker failed:\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        a, p = results["arrow"], results["python"]
        assert a["sha256"] == p["sha256"] and a["kept"] == p["kept"], "the two ways kept different rows"
        print(f"civil_comments_toxic (toxicity > 0.8): {a['kept']:,} of {a['rows']:,} rows kept, same texts both ways")
        print("| way | time (s) | peak RSS (MiB) | peak RSS above imports (MiB) "
              "| peak anonymous memory above imports (MiB) |")
        print("|---|---|---|---|---|")
        rss = lambda r: r["peak_rss_mb"] - r["baseline_rss_mb"]  # noqa: E731
        anon = lambda r: r["peak_anon_mb"] - r["anon_baseline_mb"]  # noqa: E731
        for mode, r in results.items():
            print(f"| {mode} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {rss(r):.0f} | {anon(r):.0f} |")
        print(f"python / arrow: peak RSS above imports {rss(p) / rss(a):.1f}x, anonymous memory "
              f"{anon(p) / max(anon(a), 1):.1f}x, time {p['seconds'] / a['seconds']:.0f}x")
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
