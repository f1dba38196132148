"""CLI of activation transport (Linear-AcT, Mean-AcT): act-estimate, act-fold."""

from __future__ import annotations

from . import add_runtime_args, json_arg, model_load_options, settings_arg


def register(sub) -> None:
    p = sub.add_parser("act-estimate", help="estimate AcT transport maps on a model folder (incrementally)")
    p.add_argument("--model", required=True, help="start model folder (base, or another method's variant)")
    p.add_argument("--toxic", required=True, help="JSONL of toxic texts (source distribution)")
    p.add_argument("--nontoxic", required=True, help="JSONL of non-toxic texts (target distribution)")
    p.add_argument("--method", required=True, choices=["linear_act", "mean_act"])
    p.add_argument("--settings", type=settings_arg("act"), default="{}",
                   help="JSON: the act section's estimation keys (modules, pooling, incremental, ...)")
    p.add_argument("--out", required=True, help="maps .safetensors file")
    p.add_argument("--sentences", default=None, help="optional JSONL of the sampled sentences")
    add_runtime_args(p)
    p.set_defaults(handler=_estimate)

    p = sub.add_parser("act-fold", help="fold AcT maps at one strength into a model folder")
    p.add_argument("--model", required=True, help="start model folder the maps were estimated on")
    p.add_argument("--maps", required=True)
    p.add_argument("--variant", type=json_arg, required=True, help='JSON: {"name", "start", "method", "strength"}')
    p.add_argument("--sentences", default=None, help="sentences for the fold check (folded vs hooked logits)")
    p.add_argument("--out", required=True, help="output model folder")
    add_runtime_args(p, device=False)
    p.set_defaults(handler=_fold)


def _estimate(args) -> None:
    from pathlib import Path

    from ..methods.act.pipeline import run_estimate

    run_estimate(args.model, args.toxic, args.nontoxic, args.method, args.settings, args.out, args.sentences,
                 names=(Path(args.toxic).stem, Path(args.nontoxic).stem), **model_load_options(args))


def _fold(args) -> None:
    from ..methods.act.pipeline import run_fold

    run_fold(args.model, args.maps, args.variant, args.out, sentences=args.sentences, dtype=args.dtype,
             trust_remote_code=args.trust_remote_code)
