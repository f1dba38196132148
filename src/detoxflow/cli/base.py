"""Subcommands for the base model and the dataset recipes."""

from __future__ import annotations

from ..errors import DetoxflowError
from . import json_arg


def _materialise(args) -> None:
    from ..models import materialise

    materialise(args.spec, args.out, dtype=args.dtype, revision=args.revision or None,
                trust_remote_code=args.trust_remote_code)


def _dataset(args) -> None:
    from ..data.recipes import load_recipe
    from ..io import write_jsonl

    if not isinstance(args.recipe, dict):
        raise DetoxflowError("--recipe must be a JSON object")
    rows = load_recipe(args.name, args.recipe, args.data_root or None)
    write_jsonl(args.out, rows)


def register(sub) -> None:
    p = sub.add_parser("materialise", help="write the base model once as a safetensors Hugging Face folder")
    p.add_argument("--spec", required=True, help="hub id, local folder, or embedded:smollm2")
    p.add_argument("--revision", default="")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_materialise)

    p = sub.add_parser("dataset", help="turn a dataset recipe into a JSONL file of rows with `text`")
    p.add_argument("--name", required=True, help="recipe name (for messages)")
    p.add_argument("--recipe", required=True, type=json_arg, help="the recipe as JSON")
    p.add_argument("--data-root", default="", help="folder laid out like shared/data (empty: hub)")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_dataset)
