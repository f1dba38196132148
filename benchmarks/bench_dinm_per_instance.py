"""DINM per instance: seconds to locate + edit (layers below the edited one computed once per edit vs
at every step), and the protocol's evaluation with the base model's responses cached vs regenerated
for every instance.

    .venv/bin/python benchmarks/bench_dinm_per_instance.py [--model FOLDER] [--instances 3]
        [--max-new-tokens 24] [--chat-template] [--device cpu]

Model: the embedded SmolLM2-135M-Instruct (materialised under benchmarks/out/) unless --model is given.
Instances: the offline SafeEdit stand-in built from ../shared/data/advbench. The protocol runs twice
on the same instances: once reusing the base model's responses (what the DAG does: the base
model's SafeEdit responses exist anyway for its own row of the table), once generating the vanilla
responses again before every edit (the straightforward way). Both must give the same responses.
The edit alone is timed a second time with ``reuse_lower_layers: false`` (a full forward pass at
every step, the straightforward way) and must give the same losses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
from common import machine, smollm2_dir  # noqa: E402

from detoxflow.data.safeedit_standin import build_standin  # noqa: E402
from detoxflow.methods.dinm import DinmEditor, DinmSettings  # noqa: E402
from detoxflow.models import load_model, load_tokenizer  # noqa: E402
from detoxflow.evaluation.safeedit.responses import build_requests, fill_responses  # noqa: E402
from detoxflow.methods.dinm.protocol import run_per_instance  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--chat-template", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    folder = Path(args.model) if args.model else smollm2_dir()
    model = load_model(folder, device=args.device)
    tok = load_tokenizer(folder)
    rows = pd.read_csv(SHARED / "advbench" / "harmful_behaviors.csv").to_dict("records")
    _, test = build_standin(rows, n_train=0, n_test=args.instances, seed=42)
    evaluation = {"prompt": {"chat_template": args.chat_template},
                  "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": 8}}
    dinm = {"chat_template": args.chat_template}
    print(f"machine: {machine()}")
    print(f"model: {folder} ({model.config.model_type}, {model.config.num_hidden_layers} layers), device {args.device}")
    print(f"{args.instances} stand-in instances, {args.max_new_tokens} new tokens, chat template {args.chat_template}")

    # the base model's responses, as the DAG has them from results/eval/base/safeedit_generations.jsonl
    base_rows = build_requests(test, tok, chat_template=args.chat_template)
    t0 = time.perf_counter()
    fill_responses(model, tok, base_rows, max_new_tokens=args.max_new_tokens, batch_size=8)
    base_seconds = time.perf_counter() - t0
    cache = {r["prompt"]: r["response"] for r in base_rows}

    t0 = time.perf_counter()
    rows_c, edits_c, _ = run_per_instance(model, tok, test, dinm=dinm, evaluation=evaluation, vanilla_cache=cache)
    cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows_r, edits_r, timing_r = run_per_instance(model, tok, test, dinm=dinm, evaluation=evaluation,
                                                 vanilla="regenerate")
    regenerated = time.perf_counter() - t0
    same = [r["response"] for r in rows_c] == [r["response"] for r in rows_r]

    # the edit with a full forward pass at every step
    full_editor = DinmEditor(model, tok, DinmSettings(chat_template=args.chat_template, reuse_lower_layers=False))
    full_edit, full_losses = [], []
    for rec in test:
        r = full_editor.edit_instance(rec)
        full_editor.restore()
        full_edit.append(r.edit_seconds)
        full_losses.append(r.losses)
    same_losses = all(abs(a - b) <= 1e-4 * abs(b) for e, fl in zip(edits_c, full_losses)
                      for a, b in zip(e["losses"], fl))

    n = len(edits_c) + len(edits_r)
    locate = sum(e["locate_seconds"] for e in edits_c + edits_r) / n
    edit = sum(e["edit_seconds"] for e in edits_c + edits_r) / n
    evaluate = sum(e["eval_seconds"] for e in edits_c + edits_r) / n
    print(f"layers located: {[e['layer'] for e in edits_c]}")
    print(f"per instance: locate {locate:.2f} s + edit ({edits_c[0]['steps']} Adam steps) {edit:.2f} s "
          f"= {locate + edit:.2f} s; answering the 5 inputs after the edit {evaluate:.2f} s")
    full = sum(full_edit) / len(full_edit)
    print(f"edit with a full forward pass at every step: {full:.2f} s; ratio full / reuse {full / edit:.2f}x; "
          f"same losses: {same_losses}")
    print(f"base model responses (generated once, reused): {base_seconds:.1f} s for {len(base_rows)} inputs")
    print(f"protocol, vanilla from the cache:   {cached:.1f} s ({cached / args.instances:.1f} s/instance)")
    print(f"protocol, vanilla regenerated:      {regenerated:.1f} s ({regenerated / args.instances:.1f} s/instance; "
          f"{timing_r['vanilla_generate_seconds']:.1f} s of it vanilla generation)")
    print(f"ratio regenerated / cached: {regenerated / cached:.2f}x; identical responses: {same}")


if __name__ == "__main__":
    main()
