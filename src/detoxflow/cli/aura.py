"""CLI of the AurA method: aura-responses, aura-expertise, aura-fold, aura-plots."""

from __future__ import annotations

from . import add_runtime_args, json_arg, model_load_options, settings_arg




def register(sub) -> None:
    p = sub.add_parser("aura-responses", help="record pooled module outputs over toxic / non-toxic sentences")
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--toxic", required=True, help="JSONL of toxic texts (a dataset recipe output)")
    p.add_argument("--nontoxic", required=True, help="JSONL of non-toxic texts")
    p.add_argument("--settings", type=settings_arg("aura"), default="{}",
                   help="JSON: modules, pooling, sentences_per_class, seed, max_tokens, batch_size, "
                        "pool_special_tokens")
    p.add_argument("--out", required=True, help="responses .safetensors file")
    p.add_argument("--sentences", default=None, help="optional JSONL of the sampled sentences and labels")
    add_runtime_args(p)
    p.set_defaults(handler=_responses)

    p = sub.add_parser("aura-expertise", help="AUROC of every recorded unit (toxic = positive)")
    p.add_argument("--responses", required=True)
    p.add_argument("--out", required=True, help="expertise .safetensors file")
    p.set_defaults(handler=_expertise)

    p = sub.add_parser("aura-fold", help="fold an AurA / Det0 / Damp intervention into a model folder")
    p.add_argument("--model", required=True, help="base model folder")
    p.add_argument("--expertise", required=True)
    p.add_argument("--variant", type=json_arg, required=True,
                   help='JSON: {"name", "method": aura|det0|damp, "strength", "k", "alpha"}')
    p.add_argument("--out", required=True, help="output model folder")
    add_runtime_args(p, device=False)
    p.set_defaults(handler=_fold)

    p = sub.add_parser("aura-plots", help="per-layer AUROC / alpha / dampened-unit plots and stats")
    p.add_argument("--expertise", required=True)
    p.add_argument("--variants", type=json_arg, required=True, help="JSON list of variant specs")
    p.add_argument("--auroc-plot", required=True)
    p.add_argument("--dampened-plot", required=True)
    p.add_argument("--stats-csv", required=True)
    p.add_argument("--stats-json", required=True)
    p.set_defaults(handler=_plots)


def _responses(args) -> None:
    from pathlib import Path

    from ..methods.aura.pipeline import run_responses

    run_responses(
        args.model, args.toxic, args.nontoxic, args.settings, args.out, args.sentences,
        names=(Path(args.toxic).stem, Path(args.nontoxic).stem), **model_load_options(args),
    )


def _expertise(args) -> None:
    from ..methods.aura.pipeline import run_expertise

    run_expertise(args.responses, args.out)


def _fold(args) -> None:
    from ..methods.aura.pipeline import run_fold

    run_fold(args.model, args.expertise, args.variant, args.out, dtype=args.dtype,
             trust_remote_code=args.trust_remote_code)


def _plots(args) -> None:
    from ..methods.aura.pipeline import run_plots

    run_plots(args.expertise, args.variants, args.auroc_plot, args.dampened_plot, args.stats_csv, args.stats_json)
