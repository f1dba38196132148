"""Readers per source format: raw records (hub rows or a local file) -> flat dict rows with ``text``.

A format fixes the text column and flattens nested records, so a recipe reads
the hub version and the local copy of a data set through the same code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from ..errors import DetoxflowError

Row = dict


def _clean(value):
    """JSON-friendly scalars: NaN -> None, numpy scalars -> Python."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _read_table(path: Path) -> list[Row]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
            return [{k: _clean(v) for k, v in rec.items()} for rec in df.to_dict("records")]
        if suffix == ".jsonl":
            with open(path) as fh:
                return [json.loads(line) for line in fh if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                for key in ("data", "rows", "records"):
                    if isinstance(data.get(key), list):
                        data = data[key]
                        break
            if not isinstance(data, list):
                raise DetoxflowError(f"{path}: expected a JSON list of records")
            return data
        if suffix in (".txt", ".raw", ".tokens", ""):
            return [{"text": line.rstrip("\n")} for line in path.read_text().splitlines()]
    except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DetoxflowError(f"{path}: cannot parse ({exc})") from None
    raise DetoxflowError(f"{path}: unsupported file type '{suffix}' (use csv, tsv, jsonl, json or txt)")


def _with_text(rows: Iterable[Row], field: str, source: str) -> list[Row]:
    out = []
    for i, row in enumerate(rows):
        if field not in row:
            raise DetoxflowError(
                f"{source}: record {i} has no text column '{field}' (columns: {', '.join(sorted(map(str, row)))}); "
                f"set the recipe's text_field"
            )
        out.append({**{k: _clean(v) for k, v in row.items() if k != field}, "text": row[field]})
    return out


def rtp(rows: Iterable[Row], source: str, text_field: str | None) -> list[Row]:
    """RealToxicityPrompts: nested prompt/continuation records -> text = prompt text."""
    out = []
    for i, row in enumerate(rows):
        prompt = row.get("prompt")
        if not isinstance(prompt, dict) or "text" not in prompt:
            raise DetoxflowError(f"{source}: record {i} is not a RealToxicityPrompts record (no prompt.text)")
        flat = {"text": prompt["text"], "challenging": row.get("challenging")}
        for part in ("prompt", "continuation"):
            for key, value in (row.get(part) or {}).items():
                if key == "text":
                    if part == "continuation":
                        flat["continuation"] = value
                elif key not in ("begin", "end"):
                    flat[f"{part}_{key}"] = _clean(value)
        flat["filename"] = row.get("filename")
        out.append(flat)
    return out


def _column_format(default_field: str) -> Callable:
    def read(rows, source, text_field):
        return _with_text(rows, text_field or default_field, source)

    return read


def toxigen_local(folder: Path) -> list[Row]:
    """ToxiGen demonstrations: <group>/{hate,neutral}_<target>[_sentences].txt, one sentence a line."""
    files = sorted(folder.glob("*/*.txt")) or sorted(folder.glob("*.txt"))
    if not files:
        raise DetoxflowError(f"{folder}: no ToxiGen demonstration files (<group>/hate_*.txt, neutral_*.txt)")
    rows = []
    for f in files:
        stem = f.stem
        label = 1 if stem.startswith("hate") else 0 if stem.startswith("neutral") else None
        target = stem.split("_", 1)[1].removesuffix("_sentences") if "_" in stem else stem
        for line in f.read_text().splitlines():
            line = line.strip().lstrip("-").strip()
            if line:
                rows.append({"text": line, "prompt_label": label, "group": f.parent.name, "target_group": target})
    return rows


def _advbench(rows, source, text_field):
    """AdvBench: the request is `goal` in the original CSV, `prompt` in the hub copy (walledai/AdvBench)."""
    rows = list(rows)
    if text_field is None and rows and "goal" not in rows[0] and "prompt" in rows[0]:
        text_field = "prompt"
    return _with_text(rows, text_field or "goal", source)


FORMATS: dict[str, tuple[Callable, str | None]] = {
    # format: (row reader, default text column)
    "rtp": (rtp, None),
    "jigsaw": (_column_format("comment_text"), "comment_text"),
    "civil_comments": (_column_format("text"), "text"),
    "davidson": (_column_format("tweet"), "tweet"),
    "toxigen": (_column_format("generation"), "generation"),
    "wikitext": (_column_format("text"), "text"),
    "advbench": (_advbench, "goal"),
    "csv": (_column_format("text"), "text"),
    "jsonl": (_column_format("text"), "text"),
    "json": (_column_format("text"), "text"),
    "txt": (_column_format("text"), "text"),
}


def read_local(fmt: str, path: Path, text_field: str | None) -> list[Row]:
    if not path.exists():
        raise DetoxflowError(f"data file not found: {path} (check data_root and the recipe's local.path)")
    if fmt == "toxigen" and path.is_dir():
        rows = toxigen_local(path)
        return rows if text_field is None else _with_text(rows, text_field, str(path))
    if path.is_dir():
        raise DetoxflowError(f"{path} is a folder; format '{fmt}' reads a file")
    reader, _ = FORMATS[fmt]
    return reader(_read_table(path), str(path), text_field)


def read_records(fmt: str, records: Iterable[Row], source: str, text_field: str | None) -> list[Row]:
    reader, _ = FORMATS[fmt]
    return reader(records, source, text_field)
