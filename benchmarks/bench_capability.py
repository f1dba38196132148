"""The capability stage per variant: seconds of one `detoxflow capability` job on SmolLM2 with the
default config (the lastword task, 300 WikiText-2 passages, batch 8), where they go, and lm_eval
against the straightforward way.

    .venv/bin/python benchmarks/bench_capability.py [--model FOLDER] [--n-examples 300] [--batch-size 8]
        [--threads 1]

Model: the embedded SmolLM2-135M-Instruct (materialised under benchmarks/out/) unless --model is given.
1. The job as the DAG runs it for every variant: `detoxflow capability` in a fresh process with
   OMP_NUM_THREADS = --threads (evaluation.threads, 1 by default), wall time; and the same job on
   4 examples, which is its fixed cost (imports of lm_eval and transformers, model load, task set-up).
2. In this process: the model load, and the lm_eval evaluation alone (planning, task data, requests).
3. The straightforward way: every example's log-likelihood and greedy check with the model called
   directly, one example at a time; its accuracy must equal lm_eval's and its perplexity agree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import OUT, machine, smollm2_dir  # noqa: E402

from detoxflow.config import complete_section  # noqa: E402
from detoxflow.data.recipes import load_recipe  # noqa: E402
from detoxflow.evaluation.capability.harness import evaluate_tasks  # noqa: E402
from detoxflow.evaluation.capability.lastword import build_lastword_rows  # noqa: E402
from detoxflow.evaluation.capability.tasks import plan_tasks  # noqa: E402
from detoxflow.io import write_jsonl  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@torch.no_grad()
def straightforward(model, tokenizer, rows) -> tuple[float, float]:
    """(accuracy, perplexity) of the lastword rows, one forward pass per example."""
    greedy, total = 0, 0.0
    for r in rows:
        context, whole = tokenizer.encode(r["context"]), tokenizer.encode(r["context"] + " " + r["target"])
        cont = whole[len(context):]
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
        positions = range(len(context) - 1, len(whole) - 1)
        total += sum(float(logp[p, t]) for p, t in zip(positions, cont))
        greedy += all(int(logp[p].argmax()) == t for p, t in zip(positions, cont))
    return greedy / len(rows), math.exp(-total / len(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-examples", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shared-data", default=str(SHARED))
    args = ap.parse_args()
    folder = Path(args.model) if args.model else smollm2_dir()
    torch.set_num_threads(args.threads)
    texts = [r["text"] for r in load_recipe("wikitext", {"format": "wikitext",
                                                          "local": {"path": "wikitext-2/wiki.test.raw"}},
                                             args.shared_data)]
    lw = complete_section("capability", {"lastword": {"n_examples": args.n_examples}})["lastword"]
    rows = build_lastword_rows(texts, **{k: v for k, v in lw.items() if k != "source"})
    OUT.mkdir(parents=True, exist_ok=True)
    data = OUT / "lastword.jsonl"
    write_jsonl(data, rows)
    settings = complete_section("capability", {"tasks": ["lastword"], "batch_size": args.batch_size})
    print(f"machine: {machine()}; torch threads {args.threads}; load average {os.getloadavg()[0]:.1f}")
    print(f"model: {folder}; lastword: {len(rows)} examples, batch {args.batch_size}")

    # 1. the DAG's job, in a fresh process; and the same job on 4 examples (its start-up: imports, model load)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = OUT / "capability.json"

    def job_seconds(lastword: Path) -> float:
        cmd = [sys.executable, "-m", "detoxflow", "capability", "--model", str(folder), "--settings",
               json.dumps(settings), "--lastword", str(lastword), "--device", "cpu", "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    small = OUT / "lastword_4.jsonl"
    write_jsonl(small, rows[:4])
    startup = job_seconds(small)
    job = job_seconds(data)
    job_metrics = json.loads(out.read_text())["metrics"]

    # 2. in this process: load, then lm_eval alone
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as inc:
        t0 = time.perf_counter()
        specs, manager = plan_tasks(settings, lastword_file=str(data), data_root=None, include_dir=inc)
        metrics, _ = evaluate_tasks(model, tok, specs, manager, settings)
        harness = time.perf_counter() - t0

    # 3. the straightforward way
    t0 = time.perf_counter()
    acc, ppl = straightforward(model, tok, rows)
    direct = time.perf_counter() - t0

    print(f"1. detoxflow capability job (one variant): {job:.1f} s wall "
          f"(acc {job_metrics['capability_lastword_acc']:.4f}, perplexity {job_metrics['capability_lastword_perplexity']:.2f})")
    print(f"   the same job on 4 examples (start-up: imports, model load, task set-up): {startup:.1f} s")
    print(f"2. in one process: model load {load:.1f} s; lm_eval evaluation (batch {args.batch_size}) {harness:.1f} s")
    print(f"3. straightforward loop (batch 1): {direct:.1f} s; lm_eval is {direct / harness:.2f}x as fast")
    print(f"   agreement: acc {metrics['capability_lastword_acc']:.4f} vs {acc:.4f}; perplexity "
          f"{metrics['capability_lastword_perplexity']:.3f} vs {ppl:.3f}")
    assert abs(metrics["capability_lastword_acc"] - acc) < 1e-9
    assert abs(metrics["capability_lastword_perplexity"] / ppl - 1) < 1e-3


if __name__ == "__main__":
    main()
