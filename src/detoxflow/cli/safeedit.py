"""CLI of the SafeEdit evaluation (every model variant) and of its data.

safeedit-data       SafeEdit train/test files (hub, local copy, or the AdvBench stand-in)
safeedit-generate   greedy responses of a model folder to the SafeEdit inputs
safeedit-score      judge the responses, write DS / DG / fluency
"""

from __future__ import annotations

import logging

from ..errors import DetoxflowError
from . import add_runtime_args, load_model_and_tokenizer, settings_arg

log = logging.getLogger(__name__)


# -- safeedit-data ------------------------------------------------------------

def _safeedit_data(args) -> None:
    from ..data.safeedit import download_safeedit, read_safeedit_file, resolve_local, write_safeedit

    source = args.settings["source"]
    block = args.settings[source]
    if source == "standin":
        train, test = _standin(args, block)
    else:
        files = {}
        for split in ("train", "test"):
            if source == "hub":
                files[split] = download_safeedit(block[f"{split}_file"], repo=block["repo"], revision=block["revision"])
            else:
                if not block[split]:
                    raise DetoxflowError(f"safeedit.data.local.{split} is empty: give the path of SafeEdit's "
                                         f"{split} JSON file (absolute, or relative to data_root)")
                files[split] = resolve_local(block[split], args.data_root or None)
        train = read_safeedit_file(files["train"])
        test = read_safeedit_file(files["test"], require_generalization=True)
    write_safeedit(args.train, train)
    write_safeedit(args.test, test)
    log.info("SafeEdit data (%s): %d train, %d test instances", source, len(train), len(test))


def _standin(args, st: dict):
    from ..data.safeedit_standin import build_standin, use_model_unsafe_responses
    from ..io import read_jsonl

    if not args.advbench:
        raise DetoxflowError("the SafeEdit stand-in needs --advbench (the AdvBench recipe's JSONL)")
    rows = read_jsonl(args.advbench)
    train, test = build_standin(rows, n_train=st["n_train"], n_test=st["n_test"], seed=st["seed"])
    if st["unsafe_response"] == "model":
        if not args.model:
            raise DetoxflowError("safeedit.data.standin.unsafe_response: model needs --model (the base model)")
        from ..data.safeedit import format_prompt
        from ..evaluation.safeedit.responses import generate_for_prompts, prompt_suffix
        from ..models import declared_prompt_suffix

        model, tok = load_model_and_tokenizer(args)
        ev = args.evaluation
        suffix = prompt_suffix(ev["prompt"], declared_prompt_suffix(args.model))

        def generate(prompts):
            formatted = [format_prompt(p, tok, suffix=suffix, chat_template=ev["prompt"]["chat_template"])
                         for p in prompts]
            got = generate_for_prompts(model, tok, formatted, desc="unsafe responses", **ev["generation"])
            return [got[f] for f in formatted]

        train = use_model_unsafe_responses(train, generate) if train else train
        test = use_model_unsafe_responses(test, generate)
    return train, test


# -- safeedit-generate / safeedit-score -----------------------------------------

def _safeedit_generate(args) -> None:
    from ..data.safeedit import read_safeedit_file, select
    from ..io import write_jsonl
    from ..evaluation.safeedit.responses import build_requests, fill_responses, prompt_suffix
    from ..models import declared_prompt_suffix

    ev = args.settings
    records = select(read_safeedit_file(args.data, require_generalization=True), ev["n_instances"])
    suffix = prompt_suffix(ev["prompt"], declared_prompt_suffix(args.model))
    log.info("prompt suffix (safeedit.prompt.suffix_for: %s): %r", ev["prompt"]["suffix_for"], suffix)
    model, tok = load_model_and_tokenizer(args)
    rows = build_requests(records, tok, suffix=suffix, chat_template=ev["prompt"]["chat_template"])
    stats = fill_responses(model, tok, rows, **ev["generation"])
    log.info("%d SafeEdit inputs of %d instances: %d generated, %d shared, %d prompts cut from the left to fit "
             "the context", len(rows), len(records), stats["generated"], stats["reused"], stats["truncated"])
    write_jsonl(args.out, rows)


def _safeedit_score(args) -> None:
    from ..evaluation.safeedit.responses import metrics_for, score_rows, verdict_cache_from_files

    from ..io import read_jsonl, write_jsonl, write_metrics

    rows = read_jsonl(args.generations)
    if not rows:
        raise DetoxflowError(f"{args.generations}: no responses to judge")
    scored = score_rows(rows, args.judge, cache=verdict_cache_from_files(args.cache, args.judge))
    write_jsonl(args.scored, scored)
    metrics = metrics_for(scored)
    write_metrics(args.metrics, metrics)
    log.info("SafeEdit metrics: %s", metrics)


def register(sub) -> None:
    p = sub.add_parser("safeedit-data", help="write SafeEdit train/test JSON (hub, local copy, or AdvBench stand-in)")
    p.add_argument("--settings", type=settings_arg("safeedit", "data"), required=True,
                   help='JSON: safeedit.data ({"source": standin|hub|local, <source>: its block})')
    p.add_argument("--advbench", default="", help="AdvBench recipe JSONL (stand-in source)")
    p.add_argument("--data-root", default="", help="folder that relative local paths are read from")
    p.add_argument("--model", default="", help="base model folder (stand-in with unsafe_response: model)")
    p.add_argument("--evaluation", type=settings_arg("safeedit"), default="{}",
                   help="JSON: safeedit prompt/generation settings (stand-in with unsafe_response: model)")
    p.add_argument("--train", required=True, help="output: train instances (JSON)")
    p.add_argument("--test", required=True, help="output: test instances (JSON)")
    add_runtime_args(p)
    p.set_defaults(handler=_safeedit_data)

    p = sub.add_parser("safeedit-generate", help="greedy responses of a model to the SafeEdit inputs")
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--data", required=True, help="SafeEdit test JSON")
    p.add_argument("--settings", type=settings_arg("safeedit"), required=True,
                   help="JSON: safeedit n_instances, prompt, generation")
    p.add_argument("--out", required=True, help="output JSONL: id, kind, input, prompt, response")
    add_runtime_args(p)
    p.set_defaults(handler=_safeedit_generate)

    p = sub.add_parser("safeedit-score", help="judge SafeEdit responses; DS / DG / fluency")
    p.add_argument("--generations", required=True)
    p.add_argument("--judge", type=settings_arg("safeedit", "judge"), required=True,
                   help='JSON: safeedit.judge ({"kind": ..., <kind>: its block})')
    p.add_argument("--cache", nargs="*", default=[], help="scored JSONL files whose verdicts may be reused")
    p.add_argument("--scored", required=True, help="output JSONL with the verdicts")
    p.add_argument("--metrics", required=True, help="output JSON: flat dict of metrics")
    p.set_defaults(handler=_safeedit_score)
