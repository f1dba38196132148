"""CLI of DINM and of the SafeEdit evaluation.

safeedit-data       SafeEdit train/test files (hub, local copy, or the AdvBench stand-in)
safeedit-generate   greedy responses of a model folder to the SafeEdit inputs
safeedit-score      judge the responses, write DS / DG / fluency
dinm-edit           detoxified model folder: DINM edits with a set of instances, kept
dinm-per-instance   the paper's protocol: edit, answer, restore, for every instance
dinm-report         judge the per-instance responses, write the protocol's table
"""

from __future__ import annotations

import logging

from ..errors import DetoxflowError
from . import json_arg

log = logging.getLogger(__name__)

# dinm config keys that are not DinmSettings fields
_DINM_SECTION_ONLY = ("enabled", "model", "per_instance", "prompt")


def dinm_settings(section: dict) -> dict:
    """The ``dinm:`` config section -> keyword arguments of DinmSettings."""
    out = {k: v for k, v in section.items() if k not in _DINM_SECTION_ONLY}
    prompt = section.get("prompt") or {}
    if "suffix" in prompt:
        out["suffix"] = prompt["suffix"]
    if "chat_template" in prompt:
        out["chat_template"] = prompt["chat_template"]
    return out


def _runtime(p) -> None:
    p.add_argument("--dtype", default="float32", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--trust-remote-code", action="store_true")


def _load(args):
    from ..models import load_model, load_tokenizer

    model = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    return model, load_tokenizer(args.model)


# -- safeedit-data ------------------------------------------------------------

def _safeedit_data(args) -> None:
    from ..data.safeedit import download_safeedit, read_safeedit_file, resolve_local, write_safeedit

    s = args.settings or {}
    source = s.get("source", "standin")
    if source == "standin":
        train, test = _standin(args, s.get("standin") or {})
    elif source in ("hub", "local"):
        files = {}
        for split in ("train", "test"):
            if source == "hub":
                hub = s.get("hub") or {}
                name = hub.get(f"{split}_file")
                if not name:
                    raise DetoxflowError(f"safeedit.data.hub.{split}_file is empty")
                files[split] = download_safeedit(name, repo=hub.get("repo", "zjunlp/SafeEdit"),
                                                 revision=hub.get("revision"))
            else:
                path = (s.get("local") or {}).get(split)
                if not path:
                    raise DetoxflowError(f"safeedit.data.local.{split} is empty: give the path of SafeEdit's "
                                         f"{split} JSON file (absolute, or relative to data_root)")
                files[split] = resolve_local(path, args.data_root or None)
        train = read_safeedit_file(files["train"])
        test = read_safeedit_file(files["test"], require_generalization=True)
    else:
        raise DetoxflowError(f"safeedit.data.source: '{source}' is not one of standin, hub, local")
    write_safeedit(args.train, train)
    write_safeedit(args.test, test)
    log.info("SafeEdit data (%s): %d train, %d test instances", source, len(train), len(test))


def _standin(args, st: dict):
    from ..data.safeedit_standin import build_standin, use_model_unsafe_responses
    from ..io import read_jsonl

    if not args.advbench:
        raise DetoxflowError("the SafeEdit stand-in needs --advbench (the AdvBench recipe's JSONL)")
    rows = read_jsonl(args.advbench)
    train, test = build_standin(rows, n_train=int(st.get("n_train", 4)), n_test=int(st.get("n_test", 8)),
                                seed=int(st.get("seed", 42)))
    mode = st.get("unsafe_response", "target")
    if mode == "model":
        if not args.model:
            raise DetoxflowError("safeedit.data.standin.unsafe_response: model needs --model (the base model)")
        from ..safety.evaluate import eval_settings, generate_for_prompts
        from ..data.safeedit import format_prompt

        model, tok = _load(args)
        ev = eval_settings(args.evaluation)

        def generate(prompts):
            formatted = [format_prompt(p, tok, **ev["prompt"]) for p in prompts]
            got = generate_for_prompts(model, tok, formatted, desc="unsafe responses", **ev["generation"])
            return [got[f] for f in formatted]

        train = use_model_unsafe_responses(train, generate) if train else train
        test = use_model_unsafe_responses(test, generate)
    elif mode != "target":
        raise DetoxflowError(f"safeedit.data.standin.unsafe_response: '{mode}' is not one of target, model")
    return train, test


# -- safeedit-generate / safeedit-score -----------------------------------------

def _safeedit_generate(args) -> None:
    from ..data.safeedit import read_safeedit_file, select
    from ..io import write_jsonl
    from ..safety.evaluate import build_requests, eval_settings, fill_responses

    ev = eval_settings(args.settings)
    records = select(read_safeedit_file(args.data, require_generalization=True), ev["n_instances"])
    model, tok = _load(args)
    rows = build_requests(records, tok, **ev["prompt"])
    stats = fill_responses(model, tok, rows, **ev["generation"])
    log.info("%d SafeEdit inputs of %d instances: %d generated, %d shared", len(rows), len(records),
             stats["generated"], stats["reused"])
    write_jsonl(args.out, rows)


def _cache_from(files, judge) -> dict:
    from ..io import read_jsonl
    from ..safety.evaluate import verdict_cache

    cache: dict = {}
    for f in files or []:
        cache.update(verdict_cache(read_jsonl(f), judge))
    return cache


def _safeedit_score(args) -> None:
    from ..io import read_jsonl, write_json, write_jsonl
    from ..safety.evaluate import metrics_for, score_rows

    rows = read_jsonl(args.generations)
    if not rows:
        raise DetoxflowError(f"{args.generations}: no responses to judge")
    scored = score_rows(rows, args.judge, cache=_cache_from(args.cache, args.judge))
    write_jsonl(args.scored, scored)
    metrics = metrics_for(scored, args.model_name)
    write_json(args.metrics, metrics)
    log.info("SafeEdit metrics of %s: %s", args.model_name, metrics)


# -- dinm ------------------------------------------------------------------------

def _dinm_edit(args) -> None:
    from ..data.safeedit import read_safeedit_file, select
    from ..io import write_json
    from ..methods.dinm import DinmEditor, DinmSettings, edit_model
    from ..models import save_model_folder
    from ..runtime import seed_everything

    section = args.settings or {}
    block = section.get("model") or {}
    n, mode = block.get("instances", 4), block.get("mode", "sequential")
    records = select(read_safeedit_file(args.data), n)
    seed_everything(int(block.get("seed", 0)))
    model, tok = _load(args)
    settings = DinmSettings.from_dict(dinm_settings(section))
    editor = DinmEditor(model, tok, settings)
    edits = edit_model(editor, records, mode=mode)
    layers = sorted({layer for e in edits for layer in e.layers})
    params = {
        "edit_instances": len(records), "edit_mode": mode, "edit_layers": ",".join(map(str, layers)),
        "lr": editor.lr, "steps": settings.steps, "c_edit": settings.c_edit, "c_kl": settings.c_kl,
        "locate": settings.locate if settings.layer is None else "fixed", "chat_template": settings.chat_template,
    }
    save_model_folder(model, tok, args.out, method="dinm", params=params)
    write_json(args.record, {"params": params, "lr_source": editor.lr_source, "settings": settings.as_dict(),
                             "edits": [e.as_dict() for e in edits]})


def _dinm_per_instance(args) -> None:
    from ..data.safeedit import read_safeedit_file, select
    from ..io import read_jsonl, write_json, write_jsonl
    from ..safety.protocol import run_per_instance

    section = args.dinm or {}
    n = args.n_instances if args.n_instances is not None else (section.get("per_instance") or {}).get("n_instances")
    records = select(read_safeedit_file(args.data, require_generalization=True), n)
    cache = None
    if args.vanilla_cache and args.vanilla == "cache":
        cache = {r["prompt"]: r["response"] for r in read_jsonl(args.vanilla_cache)}
    model, tok = _load(args)
    rows, edits, timing = run_per_instance(model, tok, records, dinm=dinm_settings(section),
                                           evaluation=args.evaluation, vanilla_cache=cache, vanilla=args.vanilla)
    write_jsonl(args.out_generations, rows)
    write_json(args.out_edits, {"edits": edits, "timing": timing})


def _dinm_report(args) -> None:
    from ..io import read_json, read_jsonl, write_json, write_jsonl
    from ..io import atomic_path
    from ..safety.evaluate import score_rows
    from ..safety.protocol import per_instance_report, report_markdown

    rows = read_jsonl(args.generations)
    edits = read_json(args.edits)
    scored = score_rows(rows, args.judge, cache=_cache_from(args.cache, args.judge))
    write_jsonl(args.scored, scored)
    report = per_instance_report(scored, edits["edits"], edits.get("timing"))
    write_json(args.json, report)
    with atomic_path(args.markdown) as tmp:
        tmp.write_text(report_markdown(report))


def register(sub) -> None:
    p = sub.add_parser("safeedit-data", help="write SafeEdit train/test JSON (hub, local copy, or AdvBench stand-in)")
    p.add_argument("--settings", type=json_arg, required=True, help="JSON: the safeedit.data block")
    p.add_argument("--advbench", default="", help="AdvBench recipe JSONL (stand-in source)")
    p.add_argument("--data-root", default="", help="folder that relative local paths are read from")
    p.add_argument("--model", default="", help="base model folder (stand-in with unsafe_response: model)")
    p.add_argument("--evaluation", type=json_arg, default={}, help="JSON: prompt/generation settings for the model")
    p.add_argument("--train", required=True, help="output: train instances (JSON)")
    p.add_argument("--test", required=True, help="output: test instances (JSON)")
    _runtime(p)
    p.set_defaults(handler=_safeedit_data)

    p = sub.add_parser("safeedit-generate", help="greedy responses of a model to the SafeEdit inputs")
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--data", required=True, help="SafeEdit test JSON")
    p.add_argument("--settings", type=json_arg, default={}, help="JSON: n_instances, prompt, generation")
    p.add_argument("--out", required=True, help="output JSONL: id, kind, input, prompt, response")
    _runtime(p)
    p.set_defaults(handler=_safeedit_generate)

    p = sub.add_parser("safeedit-score", help="judge SafeEdit responses; DS / DG / fluency")
    p.add_argument("--generations", required=True)
    p.add_argument("--judge", type=json_arg, default={"kind": "offline"}, help="JSON: the safeedit.judge block")
    p.add_argument("--cache", nargs="*", default=[], help="scored JSONL files whose verdicts may be reused")
    p.add_argument("--model-name", default=None)
    p.add_argument("--scored", required=True, help="output JSONL with the verdicts")
    p.add_argument("--metrics", required=True, help="output JSON: flat dict of metrics")
    p.set_defaults(handler=_safeedit_score)

    p = sub.add_parser("dinm-edit", help="detoxify a model with DINM edits on a set of instances")
    p.add_argument("--model", required=True, help="base model folder")
    p.add_argument("--data", required=True, help="SafeEdit instances to edit with (the train split)")
    p.add_argument("--settings", type=json_arg, required=True, help="JSON: the dinm section")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--record", required=True, help="output JSON: per-instance layers and losses")
    _runtime(p)
    p.set_defaults(handler=_dinm_edit)

    p = sub.add_parser("dinm-per-instance", help="edit, answer and restore for every test instance")
    p.add_argument("--model", required=True, help="base model folder")
    p.add_argument("--data", required=True, help="SafeEdit test JSON")
    p.add_argument("--dinm", type=json_arg, required=True, help="JSON: the dinm section")
    p.add_argument("--evaluation", type=json_arg, default={}, help="JSON: the safeedit prompt/generation settings")
    p.add_argument("--n-instances", type=int, default=None)
    p.add_argument("--vanilla-cache", default="", help="the base model's safeedit generations JSONL")
    p.add_argument("--vanilla", choices=("cache", "regenerate"), default="cache")
    p.add_argument("--out-generations", required=True)
    p.add_argument("--out-edits", required=True)
    _runtime(p)
    p.set_defaults(handler=_dinm_per_instance)

    p = sub.add_parser("dinm-report", help="judge the per-instance responses; vanilla vs DINM table")
    p.add_argument("--generations", required=True)
    p.add_argument("--edits", required=True)
    p.add_argument("--judge", type=json_arg, default={"kind": "offline"})
    p.add_argument("--cache", nargs="*", default=[], help="scored JSONL files whose verdicts may be reused")
    p.add_argument("--scored", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--markdown", required=True)
    p.set_defaults(handler=_dinm_report)
