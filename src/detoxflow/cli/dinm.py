"""CLI of DINM (knowledge editing on SafeEdit instances).

dinm-edit-model           detoxified model folder: DINM edits with a set of instances, kept
dinm-per-instance         the paper's protocol: edit, answer, restore, for every instance
dinm-per-instance-report  judge the per-instance responses, write the protocol's table
dinm-plots                the per-layer distance profiles of the location, one line per instance
"""

from __future__ import annotations

import logging

from . import add_runtime_args, json_arg, load_model_and_tokenizer, settings_arg

log = logging.getLogger(__name__)


def _n_instances(text: str) -> int | None:
    """argparse type: a count, or ``all``."""
    return None if text == "all" else int(text)


def _dinm_edit_model(args) -> None:
    from ..data.safeedit import read_safeedit_file, select
    from ..io import write_json
    from ..methods.dinm import DinmEditor, DinmSettings, edit_model
    from ..models import inference_metadata, save_model_folder
    from ..runtime import seed_everything

    records = select(read_safeedit_file(args.data), args.instances)
    seed_everything(args.seed)
    _edit_dtype(args)
    model, tok = load_model_and_tokenizer(args)
    settings = DinmSettings.defaults(**args.settings)
    editor = DinmEditor(model, tok, settings)
    edits = edit_model(editor, records, mode=args.mode)
    layers = sorted({layer for e in edits for layer in e.layers})
    params = {
        "edit_instances": len(records), "edit_mode": args.mode, "edit_layers": ",".join(map(str, layers)),
        "lr": editor.lr, "steps": settings.steps, "c_edit": settings.c_edit, "c_kl": settings.c_kl,
        "locate": settings.locate if settings.layer is None else "fixed", "chat_template": settings.chat_template,
        **({"locate_min_layer": settings.locate_min_layer} if settings.layer is None and settings.locate_min_layer
           else {}),
    }
    # the suffix DINM edited with: the SafeEdit evaluation gives it to this model under suffix_for: edited
    save_model_folder(model, tok, args.out, method="dinm", params=params, extra=inference_metadata(settings.suffix))
    write_json(args.record, {"params": params, "lr_source": editor.lr_source, "settings": settings.as_dict(),
                             "edits": [e.as_dict() for e in edits]})


def _edit_dtype(args) -> None:
    """DINM trains a layer: under ``model.dtype: auto`` it edits in float32, as the reference does
    (bfloat16 weights would round away updates at its learning rates); an explicit dtype is kept."""
    if args.dtype == "auto":
        args.dtype = "float32"


def _dinm_per_instance(args) -> None:
    from ..data.safeedit import read_safeedit_file, select
    from ..io import read_jsonl, write_json, write_jsonl
    from ..methods.dinm import DinmSettings
    from ..methods.dinm.protocol import run_per_instance

    records = select(read_safeedit_file(args.data, require_generalization=True), args.n_instances)
    cache = None
    if args.vanilla_cache and args.vanilla == "cache":
        cache = {r["prompt"]: r["response"] for r in read_jsonl(args.vanilla_cache)}
    _edit_dtype(args)
    model, tok = load_model_and_tokenizer(args)
    rows, edits, timing = run_per_instance(model, tok, records, settings=DinmSettings.defaults(**args.settings),
                                           evaluation=args.evaluation, vanilla_cache=cache, vanilla=args.vanilla)
    write_jsonl(args.out_generations, rows)
    write_json(args.out_edits, {"edits": edits, "timing": timing})


def _dinm_per_instance_report(args) -> None:
    from ..io import read_json, read_jsonl, write_json, write_jsonl
    from ..io import atomic_path
    from ..evaluation.safeedit.responses import score_rows, verdict_cache_from_files
    from ..methods.dinm.protocol import per_instance_report, report_markdown

    rows = read_jsonl(args.generations)
    edits = read_json(args.edits)
    scored = score_rows(rows, args.judge, cache=verdict_cache_from_files(args.cache, args.judge))
    write_jsonl(args.scored, scored)
    report = per_instance_report(scored, edits["edits"], edits.get("timing"))
    write_json(args.json, report)
    with atomic_path(args.markdown) as tmp:
        tmp.write_text(report_markdown(report))


def _dinm_plots(args) -> None:
    from ..io import read_json
    from ..methods.dinm.plots import plot_layer_profiles, profiles_of

    located = profiles_of(read_json(args.model_edits).get("edits", []), "dinm model (train instances)")
    if args.per_instance_edits:
        located += profiles_of(read_json(args.per_instance_edits).get("edits", []), "per instance (test instances)")
    plot_layer_profiles(located, args.out, chosen_mode=args.locate)
    log.info("layer profiles of %d located instances written to %s", len(located), args.out)


def register(sub) -> None:
    p = sub.add_parser("dinm-edit-model", help="detoxify a model with DINM edits on a set of instances")
    p.add_argument("--model", required=True, help="base model folder")
    p.add_argument("--data", required=True, help="SafeEdit instances to edit with (the train split)")
    p.add_argument("--settings", type=json_arg, required=True, help="JSON: DinmSettings fields (dinm keys + suffix, chat_template; missing ones: schema defaults)")
    p.add_argument("--instances", type=int, required=True, help="edit with the first n instances")
    p.add_argument("--mode", choices=("sequential", "joint"), required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--record", required=True, help="output JSON: per-instance layers and losses")
    add_runtime_args(p)
    p.set_defaults(handler=_dinm_edit_model)

    p = sub.add_parser("dinm-per-instance", help="edit, answer and restore for every test instance")
    p.add_argument("--model", required=True, help="base model folder")
    p.add_argument("--data", required=True, help="SafeEdit test JSON")
    p.add_argument("--settings", type=json_arg, required=True, help="JSON: DinmSettings fields (dinm keys + suffix, chat_template; missing ones: schema defaults)")
    p.add_argument("--evaluation", type=settings_arg("safeedit"), required=True,
                   help="JSON: the safeedit prompt/generation settings")
    p.add_argument("--n-instances", type=_n_instances, required=True, help="first n test instances, or all")
    p.add_argument("--vanilla-cache", default="", help="the base model's safeedit generations JSONL")
    p.add_argument("--vanilla", choices=("cache", "regenerate"), default="cache")
    p.add_argument("--out-generations", required=True)
    p.add_argument("--out-edits", required=True)
    add_runtime_args(p)
    p.set_defaults(handler=_dinm_per_instance)

    p = sub.add_parser("dinm-per-instance-report", help="judge the per-instance responses; vanilla vs DINM table")
    p.add_argument("--generations", required=True)
    p.add_argument("--edits", required=True)
    p.add_argument("--judge", type=settings_arg("safeedit", "judge"), required=True,
                   help='JSON: safeedit.judge ({"kind": ..., <kind>: its block})')
    p.add_argument("--cache", nargs="*", default=[], help="scored JSONL files whose verdicts may be reused")
    p.add_argument("--scored", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--markdown", required=True)
    p.set_defaults(handler=_dinm_per_instance_report)

    p = sub.add_parser("dinm-plots", help="per-layer distance profiles of DINM's location, one line per instance")
    p.add_argument("--model-edits", required=True, help="results/dinm/model_edits.json")
    p.add_argument("--per-instance-edits", default="", help="results/dinm/per_instance/edits.json (optional)")
    p.add_argument("--locate", required=True, help="dinm.locate (the distance that chose the layers)")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(handler=_dinm_plots)
