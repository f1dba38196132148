"""SafeEdit instances: load, validate and format them.

SafeEdit (Wang et al., ACL 2024; hub ``zjunlp/SafeEdit``, gated, CC BY-NC-SA 4.0)
is a JSON list of records like::

    {"id": 0, "unsafety category": "...", "adversarial prompt": "...",
     "question": "...", "attack category": "...", "attack name": "...",
     "unsafe generation": "...", "safe generation": "...",
     "generalization test": {"attack_category": "...", "attack_name": "...",
         "test input of only harmful question": "...",
         "test input of other attack prompt input": "...",
         "test input of other question input": "...",
         "test input of other questions and attack prompts": "..."},
     "knowledge constrain": {"prompt": "...", "answer": "..."}}

The same format is written by :mod:`detoxflow.data.safeedit_standin` (an
offline stand-in built from AdvBench). This module is shared by the method
(DINM edits with an instance) and the evaluation (SafeEdit metrics), so it
holds only data handling: no model code, no metrics.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import DetoxflowError
from ..runtime import hf_token

log = logging.getLogger(__name__)

#: Input kinds of one instance, in report order: the edit input (DS) and the
#: four generalization inputs (DG).
INPUT_KINDS = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")
DG_KINDS = INPUT_KINDS[1:]

GENERALIZATION_FIELDS = {
    "DG_onlyQ": "test input of only harmful question",
    "DG_otherA": "test input of other attack prompt input",
    "DG_otherQ": "test input of other question input",
    "DG_otherAQ": "test input of other questions and attack prompts",
}

# field -> (required, type); nested records are checked field by field below.
_TOP_FIELDS: dict[str, tuple[bool, tuple[type, ...]]] = {
    "id": (True, (int, str)),
    "adversarial prompt": (True, (str,)),
    "question": (True, (str,)),
    "safe generation": (True, (str,)),
    "unsafe generation": (True, (str,)),
    "unsafety category": (False, (str,)),
    "attack category": (False, (str,)),
    "attack name": (False, (str,)),
}
_KNOWLEDGE_FIELDS = ("prompt", "answer")

HUB_REPO = "zjunlp/SafeEdit"


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join({int: "an integer", str: "a string", dict: "an object"}.get(t, t.__name__) for t in types)


def validate_records(records: Any, source: str, *, require_generalization: bool = False) -> list[dict]:
    """Check SafeEdit records; return them unchanged.

    Raises :class:`DetoxflowError` naming the source, the record index (and
    id) and the missing or mistyped field. With ``require_generalization``
    the four generalization inputs must be non-empty strings (test and
    validation splits); in the train split they are empty strings.
    """
    if not isinstance(records, list):
        raise DetoxflowError(f"{source}: expected a JSON list of SafeEdit records, got {type(records).__name__}")
    if not records:
        raise DetoxflowError(f"{source}: no SafeEdit records")
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        where = f"{source}: record {i}"
        if not isinstance(rec, dict):
            raise DetoxflowError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if "id" in rec:
            where += f" (id {rec['id']!r})"
        for field, (required, types) in _TOP_FIELDS.items():
            if field not in rec:
                if required:
                    raise DetoxflowError(f"{where}: missing field '{field}'")
                continue
            value = rec[field]
            if isinstance(value, bool) or not isinstance(value, types):
                raise DetoxflowError(
                    f"{where}: field '{field}' must be {_type_names(types)}, got {type(value).__name__}"
                )
        for field in ("adversarial prompt", "safe generation"):
            if not rec[field].strip():
                raise DetoxflowError(f"{where}: field '{field}' is empty")
        know = rec.get("knowledge constrain")
        if not isinstance(know, dict):
            raise DetoxflowError(
                f"{where}: missing field 'knowledge constrain'" if know is None
                else f"{where}: field 'knowledge constrain' must be an object with prompt and answer, "
                     f"got {type(know).__name__}"
            )
        for key in _KNOWLEDGE_FIELDS:
            if not isinstance(know.get(key), str):
                raise DetoxflowError(
                    f"{where}: field 'knowledge constrain.{key}' must be a string, "
                    f"got {type(know.get(key)).__name__ if key in know else 'nothing (missing)'}"
                )
        gen = rec.get("generalization test")
        if gen is None and not require_generalization:
            pass
        elif not isinstance(gen, dict):
            raise DetoxflowError(
                f"{where}: missing field 'generalization test'" if gen is None
                else f"{where}: field 'generalization test' must be an object, got {type(gen).__name__}"
            )
        else:
            for field in GENERALIZATION_FIELDS.values():
                value = gen.get(field, "" if not require_generalization else None)
                if not isinstance(value, str):
                    raise DetoxflowError(
                        f"{where}: field 'generalization test.{field}' must be a string, "
                        f"got {'nothing (missing)' if value is None else type(value).__name__}"
                    )
                if require_generalization and not value.strip():
                    raise DetoxflowError(
                        f"{where}: field 'generalization test.{field}' is empty; the generalization inputs "
                        f"are needed for DG metrics (the SafeEdit train split has none: evaluate on test/val)"
                    )
        key = str(rec["id"])
        if key in seen:
            raise DetoxflowError(f"{where}: duplicate id (also record {seen[key]})")
        seen[key] = i
    return records


def read_safeedit_file(path: str | os.PathLike, *, require_generalization: bool = False) -> list[dict]:
    """Read and validate a SafeEdit JSON file (a JSON list; a JSONL file also works)."""
    p = Path(path)
    if not p.is_file():
        raise DetoxflowError(f"SafeEdit file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DetoxflowError(f"{p}: not valid JSON ({exc})") from None
    return validate_records(records, str(p), require_generalization=require_generalization)


def download_safeedit(filename: str, *, repo: str = HUB_REPO, revision: str | None = None) -> Path:
    """Fetch one SafeEdit file from the (gated) hub repo; the token comes from HF_TOKEN."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise DetoxflowError("huggingface_hub is needed to download SafeEdit") from None
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset", revision=revision,
                                    token=hf_token()))
    except Exception as exc:  # network, gating, missing file: all reported the same way
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DetoxflowError(
            f"could not download '{filename}' from the hub dataset '{repo}' ({first}). SafeEdit is gated: accept "
            f"its terms on huggingface.co, export HF_TOKEN, and check the file name; offline, set "
            f"safeedit.data.source: local (your own copy) or standin (built from AdvBench)"
        ) from None


def resolve_local(path: str, data_root: str | None) -> Path:
    p = Path(path)
    if not p.is_absolute() and data_root:
        p = Path(data_root) / p
    return p


def input_texts(record: dict) -> dict[str, str]:
    """The five evaluation inputs of an instance (kind -> text); empty ones are left out."""
    out = {"DS": record["adversarial prompt"]}
    gen = record.get("generalization test") or {}
    for kind, field in GENERALIZATION_FIELDS.items():
        text = gen.get(field) or ""
        if text.strip():
            out[kind] = text
    return out


def format_prompt(text: str, tokenizer=None, *, suffix: str, chat_template: bool) -> str:
    """The text a model sees for an input: ``text + " " + suffix``, optionally in the chat template.

    The suffix (DINM's, by default) is the ``safeedit.prompt.suffix`` of the config; empty for none.

    With ``chat_template`` the user turn is rendered by the tokenizer's own
    template with the generation prompt, so the response starts right after.
    """
    content = f"{text} {suffix}" if suffix else text
    if not chat_template:
        return content
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DetoxflowError(
            "chat_template: true but the model's tokenizer has no chat template; set chat_template: false"
        )
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def select(records: list[dict], n: int | None) -> list[dict]:
    """The first ``n`` records (all with ``None``); too few is an error."""
    if n is None:
        return records
    if n > len(records):
        raise DetoxflowError(f"asked for {n} SafeEdit instances but the data has only {len(records)}")
    return records[:n]


def write_safeedit(path: str | os.PathLike, records: Iterable[dict]) -> None:
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(list(records), indent=1, ensure_ascii=False) + "\n")
