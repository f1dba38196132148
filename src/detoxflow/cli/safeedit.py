"""CLI of the SafeEdit evaluation (every model variant) and of its data.

safeedit-data       SafeEdit train/test files (hub, local copy, or the AdvBench stand-in)
safeedit-generate   greedy responses of a model folder to the SafeEdit inputs
safeedit-score      judge the responses, write DS / DG / fluency
"""

from __future__ import annotations

import logging

from ..errors import DetoxflowError
from . import add_runtime_args, json_arg, load_model_and_tokenizer

log = logging.getLogger(__name__)


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
        from ..evaluation.safeedit.responses import eval_settings, generate_for_prompts
        from ..data.safeedit import format_prompt

        model, tok = load_model_and_tokenizer(args)
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
    from ..evaluation.safeedit.responses import build_requests, eval_settings, fill_responses

    ev = eval_settings(args.settings)
    records = select(read_safeedit_file(args.data, require_generalization=True), ev["n_instances"])
    model, tok = load_model_and_tokenizer(args)
    rows = build_requests(records, tok, **ev["prompt"])
    stats = fill_responses(model, tok, rows, **ev["generation"])
    log.info("%d SafeEdit inputs of %d instances: %d generated, %d shared", len(rows), len(records),
             stats["generated"], stats["reused"])
    write_jsonl(args.out, rows)




def _safeedit_score(args) -> None:
    from ..io import read_jsonl, write_json, write_jsonl
    from ..evaluation.safeedit.responses import metrics_for, score_rows, verdict_cache_from_files

    rows = read_jsonl(args.generations)
    if not rows:
        raise DetoxflowError(f"{args.generations}: no responses to judge")
    scored = score_rows(rows, args.judge, cache=verdict_cache_from_files(args.cache, args.judge))
    write_jsonl(args.scored, scored)
    metrics = metrics_for(scored, args.model_name)
    write_json(args.metrics, metrics)
    log.info("SafeEdit metrics of %s: %s", args.model_name, metrics)


def register(sub) -> None:
    p = sub.add_parser("safeedit-data", help="write SafeEdit train/test JSON (hub, local copy, or AdvBench stand-in)")
    p.add_argument("--settings", type=json_arg, required=True, help="JSON: the safeedit.data block")
    p.add_argument("--advbench", default="", help="AdvBench recipe JSONL (stand-in source)")
    p.add_argument("--data-root", default="", help="folder that relative local paths are read from")
    p.add_argument("--model", default="", help="base model folder (stand-in with unsafe_response: model)")
    p.add_argument("--evaluation", type=json_arg, default={}, help="JSON: prompt/generation settings for the model")
    p.add_argument("--train", required=True, help="output: train instances (JSON)")
    p.add_argument("--test", required=True, help="output: test instances (JSON)")
    add_runtime_args(p)
    p.set_defaults(handler=_safeedit_data)

    p = sub.add_parser("safeedit-generate", help="greedy responses of a model to the SafeEdit inputs")
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--data", required=True, help="SafeEdit test JSON")
    p.add_argument("--settings", type=json_arg, default={}, help="JSON: n_instances, prompt, generation")
    p.add_argument("--out", required=True, help="output JSONL: id, kind, input, prompt, response")
    add_runtime_args(p)
    p.set_defaults(handler=_safeedit_generate)

    p = sub.add_parser("safeedit-score", help="judge SafeEdit responses; DS / DG / fluency")
    p.add_argument("--generations", required=True)
    p.add_argument("--judge", type=json_arg, default={"kind": "offline"}, help="JSON: the safeedit.judge block")
    p.add_argument("--cache", nargs="*", default=[], help="scored JSONL files whose verdicts may be reused")
    p.add_argument("--model-name", default=None)
    p.add_argument("--scored", required=True, help="output JSONL with the verdicts")
    p.add_argument("--metrics", required=True, help="output JSON: flat dict of metrics")
    p.set_defaults(handler=_safeedit_score)
