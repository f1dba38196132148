"""CLI of the capability evaluation (every model variant on lm-evaluation-harness tasks).

capability-lastword   the lastword task's examples (JSONL) from a text recipe
capability            a model folder on capability.tasks -> per-model metrics file (capability_* columns)
capability-plot       each capability column against expected maximum toxicity, from summary.csv
"""

from __future__ import annotations

import logging
import tempfile

from ..errors import DetoxflowError
from . import add_runtime_args, load_model_and_tokenizer, settings_arg

log = logging.getLogger(__name__)


def _capability_lastword(args) -> None:
    from ..evaluation.capability.lastword import build_lastword_rows
    from ..io import read_jsonl, write_jsonl

    s = args.settings
    rows = read_jsonl(args.text)
    if any("text" not in r for r in rows):
        line = next(i for i, r in enumerate(rows, 1) if "text" not in r)
        raise DetoxflowError(f"{args.text}: row {line} has no `text` (expected a text recipe's JSONL)")
    examples = build_lastword_rows((r["text"] for r in rows), n_examples=s["n_examples"],
                                   min_context_words=s["min_context_words"], max_context_words=s["max_context_words"],
                                   min_target_chars=s["min_target_chars"], seed=s["seed"])
    if not examples:
        raise DetoxflowError(f"{args.text}: no paragraph has a sentence-final word after "
                             f"{s['min_context_words']} words: no lastword examples")
    if len(examples) < s["n_examples"]:
        log.warning("lastword: %d examples asked, the text gives %d", s["n_examples"], len(examples))
    write_jsonl(args.out, examples)
    log.info("lastword: %d examples written to %s", len(examples), args.out)


def _capability(args) -> None:
    from ..evaluation.capability.harness import evaluate_tasks
    from ..evaluation.capability.tasks import plan_tasks
    from ..io import write_metrics

    s = args.settings
    with tempfile.TemporaryDirectory(prefix="detoxflow-capability-") as include_dir:
        # everything that can fail without a model fails first
        specs, manager = plan_tasks(s, lastword_file=args.lastword or None, data_root=args.data_root or None,
                                    include_dir=include_dir)
        model, tokenizer = load_model_and_tokenizer(args)
        metrics, details = evaluate_tasks(model, tokenizer, specs, manager, s)
    write_metrics(args.out, metrics, **details)
    log.info("capability metrics of %s written to %s", args.model, args.out)


def _capability_plot(args) -> None:
    import pandas as pd

    from ..evaluation.capability.plots import plot_capability_vs_toxicity

    try:
        df = pd.read_csv(args.summary)
    except FileNotFoundError:
        raise DetoxflowError(f"{args.summary}: file not found") from None
    plot_capability_vs_toxicity(df, args.out, source=args.summary)


def register(sub) -> None:
    p = sub.add_parser("capability-lastword", help="the lastword capability task's examples from a text recipe")
    p.add_argument("--text", required=True, help="a text recipe's JSONL (rows with `text`, one paragraph a row)")
    p.add_argument("--settings", required=True, type=settings_arg("capability", "lastword"),
                   help="JSON: capability.lastword (n_examples, min/max_context_words, min_target_chars, seed)")
    p.add_argument("--out", required=True, help="output JSONL: id, context, target")
    p.set_defaults(handler=_capability_lastword)

    p = sub.add_parser("capability", help="a model folder on lm-evaluation-harness tasks (capability_* columns)")
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--settings", required=True, type=settings_arg("capability"),
                   help="JSON: capability tasks, limit, num_fewshot, batch_size, local_copies, csum")
    p.add_argument("--lastword", default="", help="the lastword task's JSONL (when capability.tasks has lastword)")
    p.add_argument("--data-root", default="", help="folder that relative local_copies paths are read from")
    p.add_argument("--out", required=True, help="output JSON metrics file")
    add_runtime_args(p)
    p.set_defaults(handler=_capability)

    p = sub.add_parser("capability-plot", help="capability columns of summary.csv against expected maximum toxicity")
    p.add_argument("--summary", required=True, help="summary.csv")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(handler=_capability_plot)
