"""CLI of the split-and-merge task-vector method (one subcommand per pipeline step)."""

from __future__ import annotations

import logging

from ..errors import DetoxflowError
from . import json_arg, settings_arg

log = logging.getLogger(__name__)


def _toxic_set(args) -> None:
    from ..methods.task_vectors.toxic_set import build_toxic_set

    info = build_toxic_set(args.rows, args.out, args.info, source=args.source, seed=args.seed,
                           max_rows=args.max_rows, min_rows=args.min_rows)
    log.info("toxic set: %d rows from %s", info["size"], info["source"])


def _split(args) -> None:
    from ..methods.task_vectors.split import write_splits

    info = write_splits(args.rows, args.out, n_splits=args.n_splits, seed=args.seed)
    log.info("split %d rows into %d parts of sizes %s", info["rows"], info["n_splits"], info["sizes"])


def _finetune(args) -> None:
    import torch

    from ..methods.task_vectors.finetune import FinetuneSettings, finetune
    from ..methods.task_vectors.split import read_part

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = FinetuneSettings.from_dict(args.settings)
    texts = [r["text"] for r in read_part(args.split_dir, args.part)]
    finetune(args.base, texts, args.out, args.state_dir, settings, objective=args.objective,
             device=args.device, trust_remote_code=args.trust_remote_code)


def _merge(args) -> None:
    from ..methods.task_vectors.merge import limit_heap_growth, merge_task_vectors

    limit_heap_growth()
    merge_task_vectors(args.base, args.finetuned, args.out, lam=args.lam, negate=not args.add,
                       method=args.method, params=args.params or {})


def _choose_lambda(args) -> None:
    from ..methods.task_vectors.choose_lambda import choose_lambda, write_outputs
    from ..methods.task_vectors.plots import plot_lambda_sweep

    result = choose_lambda(args.points, ppl_margin=args.settings["ppl_margin"], metric=args.settings["metric"])
    write_outputs(result, args.json, args.markdown)
    plot_lambda_sweep(result, args.plot)


def _stats(args) -> None:
    from ..io import atomic_path, write_json
    from ..methods.task_vectors.stats import stats_markdown, task_vector_stats

    families = {}
    for spec in args.family:
        name, sep, folders = spec.partition("=")
        if not sep or not name or not folders:
            raise DetoxflowError(f"--family '{spec}': expected NAME=FOLDER[,FOLDER...]")
        families[name] = folders.split(",")
    stats = task_vector_stats(args.base, families)
    write_json(args.json, stats)
    with atomic_path(args.markdown) as tmp:
        tmp.write_text(stats_markdown(stats))
    log.info("task-vector stats over %d tensors written to %s", stats["tensors"], args.json)


def _nullable_int(text: str):
    return None if text in ("", "None", "null") else int(text)


def register(sub) -> None:
    p = sub.add_parser("tv-toxic-set", help="task vectors: shuffle a recipe's toxic rows once (+ size/source JSON)")
    p.add_argument("--rows", required=True, help="JSONL written by the dataset rule (label rule already applied)")
    p.add_argument("--source", required=True, help="recipe name, recorded in the info JSON")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-rows", type=_nullable_int, default=None, help="keep at most this many rows after shuffling")
    p.add_argument("--min-rows", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--info", required=True)
    p.set_defaults(handler=_toxic_set)

    p = sub.add_parser("tv-split", help="task vectors: split the toxic set into N disjoint parts")
    p.add_argument("--rows", required=True)
    p.add_argument("--n-splits", type=int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True, help="folder receiving part{i}.jsonl and split.json")
    p.set_defaults(handler=_split)

    p = sub.add_parser("tv-finetune", help="task vectors: fine-tune the base model on one split part (resumable)")
    p.add_argument("--base", required=True, help="base model folder")
    p.add_argument("--split-dir", required=True)
    p.add_argument("--part", type=int, required=True)
    p.add_argument("--settings", type=json_arg, required=True, help="the task_vectors.finetune section as JSON")
    p.add_argument("--objective", choices=["descent", "ascent"], default="descent")
    p.add_argument("--state-dir", required=True, help="resumable checkpoint folder (kept outside the output; locked while a fine-tune uses it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_finetune)

    p = sub.add_parser("tv-merge", help="task vectors: theta_pre - lambda * mean_i(theta_i - theta_pre), streamed")
    p.add_argument("--base", required=True)
    p.add_argument("--finetuned", nargs="+", required=True)
    p.add_argument("--lambda", dest="lam", type=float, required=True)
    p.add_argument("--add", action="store_true", help="add the mean task vector instead of negating it")
    p.add_argument("--method", default="task_vector_merge", help="method name recorded in detoxflow.json")
    p.add_argument("--params", type=json_arg, default=None, help="params recorded in detoxflow.json (JSON)")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_merge)

    p = sub.add_parser("tv-choose-lambda", help="task vectors: Ilharco's rule and toxicity matching")
    p.add_argument("--points", type=json_arg, required=True,
                   help='JSON list of {"model", "family" (base|single|merge|ascent), "n_splits", "lambda", '
                        '"perplexity": metrics file, "toxicity": toxicity.json of the plain run}')
    p.add_argument("--settings", type=settings_arg("task_vectors", "choose_lambda"), required=True,
                   help="task_vectors.choose_lambda as JSON")
    p.add_argument("--json", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--plot", required=True)
    p.set_defaults(handler=_choose_lambda)

    p = sub.add_parser("tv-vector-stats", help="task vectors: norms of the (mean) task vectors and cosines between families")
    p.add_argument("--base", required=True)
    p.add_argument("--family", action="append", required=True,
                   help="NAME=FOLDER[,FOLDER...]: fine-tuned folders whose task vectors are averaged (repeatable)")
    p.add_argument("--json", required=True)
    p.add_argument("--markdown", required=True)
    p.set_defaults(handler=_stats)

