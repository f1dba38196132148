"""CLI of the steering baselines (ITI-c, ActAdd): steering-estimate, steering-fold."""

from __future__ import annotations

from . import add_runtime_args, json_arg, model_load_options, settings_arg


def register(sub) -> None:
    p = sub.add_parser("steering-estimate", help="ITI-c head directions or the ActAdd vector of a model folder")
    p.add_argument("--model", required=True, help="start model folder")
    p.add_argument("--method", required=True, choices=["iti_c", "actadd"])
    p.add_argument("--toxic", default=None, help="JSONL of toxic texts (ITI-c)")
    p.add_argument("--nontoxic", default=None, help="JSONL of non-toxic texts (ITI-c)")
    p.add_argument("--settings", type=settings_arg("steering"), default="{}", help="JSON: the steering section")
    p.add_argument("--out", required=True, help="directions .safetensors file")
    add_runtime_args(p)
    p.set_defaults(handler=_estimate)

    p = sub.add_parser("steering-fold", help="fold ITI-c / ActAdd at one strength into a model folder")
    p.add_argument("--model", required=True)
    p.add_argument("--directions", required=True)
    p.add_argument("--variant", type=json_arg, required=True, help='JSON: {"name", "start", "method", "strength"}')
    p.add_argument("--settings", type=settings_arg("steering"), default="{}", help="JSON: the steering section")
    p.add_argument("--out", required=True, help="output model folder")
    add_runtime_args(p, device=False)
    p.set_defaults(handler=_fold)


def _estimate(args) -> None:
    from pathlib import Path

    from ..errors import DetoxflowError
    from ..methods.steering.pipeline import run_estimate

    if args.method == "iti_c" and not (args.toxic and args.nontoxic):
        raise DetoxflowError("steering-estimate --method iti_c needs --toxic and --nontoxic")
    names = (Path(args.toxic).stem, Path(args.nontoxic).stem) if args.toxic else ("toxic", "nontoxic")
    run_estimate(args.model, args.toxic, args.nontoxic, args.method, args.settings, args.out, names=names,
                 **model_load_options(args))


def _fold(args) -> None:
    from ..methods.steering.pipeline import run_fold

    run_fold(args.model, args.directions, args.variant, args.settings, args.out, dtype=args.dtype,
             trust_remote_code=args.trust_remote_code)
