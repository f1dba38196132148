"""SafeEdit evaluation of a model folder: generate greedy responses, judge them, compute metrics.

One row per (instance, input kind): ``{"id", "kind", "input", "prompt",
"response"}``. Identical prompts (e.g. the same bare question shared by several
instances) are generated once. Responses are the generated tokens only (cut by
token ids by :func:`detoxflow.generation.generate_continuations`), greedy.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

from ...data.safeedit import format_prompt, input_texts
from ...errors import DetoxflowError
from .judges import judge_identity, judge_with_cache, make_judge
from .metrics import safeedit_metrics

log = logging.getLogger(__name__)


SUFFIX_FOR = ("all", "edited")


def prompt_suffix(prompt: dict, declared: str | None) -> str:
    """The suffix a model's SafeEdit inputs get under ``safeedit.prompt`` (``suffix``, ``suffix_for``).

    ``suffix_for: all`` (the project's choice): ``prompt["suffix"]`` for every model. ``edited`` (the
    reference's protocol): the suffix the model's folder declares (``declared``, from
    :func:`detoxflow.models.declared_prompt_suffix`; DINM declares the one it edited with), none otherwise.
    """
    mode = prompt["suffix_for"]
    if mode not in SUFFIX_FOR:
        raise DetoxflowError(f"safeedit.prompt.suffix_for: {mode!r} is not one of {', '.join(SUFFIX_FOR)}")
    return prompt["suffix"] if mode == "all" else (declared or "")


def build_requests(records: Sequence[dict], tokenizer, *, suffix: str, chat_template: bool) -> list[dict]:
    """The evaluation rows (without responses) of the instances, in instance then kind order."""
    rows = []
    for rec in records:
        for kind, text in input_texts(rec).items():
            rows.append({"id": rec["id"], "kind": kind, "input": text,
                         "prompt": format_prompt(text, tokenizer, suffix=suffix, chat_template=chat_template)})
    return rows


def generate_for_prompts(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_tokens: int,
                         desc: str = "safeedit", stats: dict | None = None) -> dict[str, str]:
    """Greedy responses for the distinct prompts (the engine sorts them by length and batches by tokens).

    A prompt longer than the model's context minus ``max_new_tokens`` is cut from the left (as the
    reference does); ``stats``, when given, receives ``truncated`` (how many).
    """
    from ...generation import generate_continuations  # torch: imported only where generation happens

    distinct = list(OrderedDict.fromkeys(prompts))
    info: dict = {}
    if distinct:
        outs = generate_continuations(model, tokenizer, distinct, max_new_tokens=max_new_tokens, do_sample=False,
                                      batch_tokens=batch_tokens, desc=desc, stats=info)
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + info.get("truncated", 0)
    if not distinct:
        return {}
    return {p: o[0] for p, o in zip(distinct, outs)}


def fill_responses(model, tokenizer, rows: list[dict], *, max_new_tokens: int, batch_tokens: int,
                   cache: dict[str, str] | None = None, desc: str = "safeedit") -> dict:
    """Give every row a ``response``; prompts in ``cache`` are not generated again (the cache is extended).

    Returns ``generated``, ``reused`` and ``truncated`` (prompts cut from the left to fit the context).
    """
    cache = {} if cache is None else cache
    todo = [r["prompt"] for r in rows if r["prompt"] not in cache]
    info: dict = {}
    new = generate_for_prompts(model, tokenizer, todo, max_new_tokens=max_new_tokens, batch_tokens=batch_tokens,
                               desc=desc, stats=info)
    cache.update(new)
    for r in rows:
        r["response"] = cache[r["prompt"]]
    return {"generated": len(new), "reused": len(rows) - len(new), "truncated": info.get("truncated", 0)}


def score_rows(rows: list[dict], judge_settings: dict, *, cache: dict[str, dict] | None = None) -> list[dict]:
    """Add the judge's verdict (``label`` and the judge's extras) to every row."""
    judge = make_judge(judge_settings)
    try:
        verdicts = judge_with_cache(judge, [r["response"] for r in rows], cache)
    finally:
        judge.close()
    identity = judge_identity(judge_settings)
    return [{**r, **v, "judge": identity} for r, v in zip(rows, verdicts)]


def verdict_cache(scored_rows: Sequence[dict], judge_settings: dict) -> dict[str, dict]:
    """response -> verdict from rows that the same judge (same settings) has already scored."""
    keep = ("label", "refusal", "toxicity", "p_unsafe")
    identity = judge_identity(judge_settings)
    return {r["response"]: {k: r[k] for k in keep if k in r} for r in scored_rows
            if "label" in r and r.get("judge") == identity}


def verdict_cache_from_files(paths: Sequence[str], judge_settings: dict) -> dict[str, dict]:
    """:func:`verdict_cache` over several scored JSONL files (e.g. the base model's, for the vanilla answers)."""
    from ...io import read_jsonl

    cache: dict[str, dict] = {}
    for path in paths or []:
        cache.update(verdict_cache(read_jsonl(path), judge_settings))
    return cache


def metrics_for(rows: Sequence[dict]) -> dict:
    return safeedit_metrics(rows)
