"""Readers per source format: raw records (a hub data set or a local file) -> flat rows with ``text``.

A format names its text column and the nested records it flattens, so a recipe
reads the hub version and the local copy of a data set into the same columns:
a field ``f`` of a nested record ``p`` becomes column ``p_f`` (its ``text``
field becomes column ``p``), then the text column is renamed ``text``.

Hub data sets stay Arrow tables (memory-mapped by ``datasets``) until the
recipe's ``where`` has picked the rows to keep (:func:`hub_table`); local files
are small and are read into Python rows (:func:`read_local`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ..errors import DetoxflowError

Row = dict


@dataclass(frozen=True)
class Format:
    """Column conventions of a source format."""

    text: tuple[str, ...]          # default text column; the first one present wins
    nested: tuple[str, ...] = ()   # nested records flattened into columns
    line_end: bool = False         # text rows may end with "\n" (hub WikiText); it is dropped


FORMATS: dict[str, Format] = {
    # RealToxicityPrompts: text = prompt.text, continuation = continuation.text, prompt_toxicity, ...
    "rtp": Format(("prompt",), nested=("prompt", "continuation")),
    "jigsaw": Format(("comment_text",)),
    "civil_comments": Format(("text",)),
    "davidson": Format(("tweet",)),
    "toxigen": Format(("generation",)),
    "wikitext": Format(("text",), line_end=True),
    # AdvBench: the request is `goal` in the original CSV, `prompt` in the hub copy (walledai/AdvBench).
    "advbench": Format(("goal", "prompt")),
    "csv": Format(("text",)),
    "jsonl": Format(("text",)),
    "json": Format(("text",)),
    "txt": Format(("text",)),
}


def _clean(value):
    """JSON-friendly scalars: NaN -> None, numpy scalars -> Python."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _flat_name(part: str, field: str) -> str:
    return part if field == "text" else f"{part}_{field}"


def output_names(fmt: str, columns: Sequence[str], text_field: str | None, where: str) -> dict[str, str]:
    """Flattened source column -> output column: the text column becomes ``text``.

    A source column called ``text`` that is not the text column is dropped.
    """
    spec = FORMATS[fmt]
    wanted = (text_field,) if text_field else spec.text
    text = next((c for c in wanted if c in columns), None)
    if text is None:
        shown = [f"{w}.text" if w in spec.nested else w for w in wanted]
        raise DetoxflowError(
            f"{where} has no text column {' or '.join(repr(s) for s in shown)} "
            f"(columns: {', '.join(sorted(map(str, columns)))}); set the recipe's text_field"
        )
    return {c: ("text" if c == text else c) for c in columns if c == text or c != "text"}


# -- local files: Python rows ---------------------------------------------------------------

def _flatten_record(record: Row, nested: tuple[str, ...]) -> Row:
    flat = {}
    for key, value in record.items():
        if key in nested and isinstance(value, dict):
            for field, inner in value.items():
                flat[_flat_name(key, field)] = inner
        else:
            flat[key] = value
    return flat


def _strip_line_end(text):
    return text.removesuffix("\n") if isinstance(text, str) else text


def read_records(fmt: str, records: Iterable[Row], source: str, text_field: str | None) -> list[Row]:
    """Flat rows with ``text`` from raw records (dicts), checked one by one."""
    spec = FORMATS[fmt]
    names_by_columns: dict[tuple, dict[str, str]] = {}
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DetoxflowError(f"{source}: record {i} is not an object with columns (got {type(record).__name__})")
        flat = _flatten_record(record, spec.nested)
        key = tuple(flat)
        if key not in names_by_columns:
            names_by_columns[key] = output_names(fmt, key, text_field, f"{source}: record {i}")
        row = {new: _clean(flat[old]) for old, new in names_by_columns[key].items()}
        if spec.line_end:
            row["text"] = _strip_line_end(row["text"])
        out.append(row)
    return out


def _read_csv(path: Path) -> list[Row]:
    try:
        df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except pd.errors.EmptyDataError:
        raise DetoxflowError(f"{path}: empty file (no header, no rows)") from None
    if df.empty:
        raise DetoxflowError(f"{path}: no rows, only a header ({', '.join(map(str, df.columns))})")
    return [{k: _clean(v) for k, v in rec.items()} for rec in df.to_dict("records")]


def _read_json(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DetoxflowError(f"{path}, line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        for key in ("data", "rows", "records"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise DetoxflowError(f"{path}: expected a JSON list of records (or an object with one under data/rows/records)")
    return data


def _read_table(path: Path) -> list[Row]:
    from ..io import read_jsonl

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            records = _read_csv(path)
        elif suffix == ".jsonl":
            records = read_jsonl(path)
        elif suffix == ".json":
            records = _read_json(path)
        elif suffix in (".txt", ".raw", ".tokens", ""):
            records = [{"text": line} for line in path.read_text().splitlines()]
        else:
            raise DetoxflowError(f"{path}: unsupported file type '{suffix}' (use csv, tsv, jsonl, json or txt)")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DetoxflowError(f"{path}: cannot parse ({first})") from None
    if not records:
        raise DetoxflowError(f"{path}: no records (empty file)")
    return records


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


def read_local(fmt: str, path: Path, text_field: str | None) -> list[Row]:
    if not path.exists():
        raise DetoxflowError(f"data file not found: {path} (check data_root and the recipe's local.path)")
    if fmt == "toxigen" and path.is_dir():
        rows = toxigen_local(path)
        return rows if text_field is None else read_records("jsonl", rows, str(path), text_field)
    if path.is_dir():
        raise DetoxflowError(f"{path} is a folder; format '{fmt}' reads a file")
    return read_records(fmt, _read_table(path), str(path), text_field)


# -- hub data sets: Arrow tables ----------------------------------------------------------

def hub_table(fmt: str, table, source: str, text_field: str | None):
    """The hub table with the output columns of :func:`read_records` (no row is copied to Python)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    spec = FORMATS[fmt]
    names, columns = [], []
    for name, column in zip(table.column_names, table.columns):
        if name in spec.nested and pa.types.is_struct(column.type):
            # ChunkedArray.flatten() merges the record's own nulls into its fields.
            for field, child in zip(column.type, column.flatten()):
                names.append(_flat_name(name, field.name))
                columns.append(child)
        else:
            names.append(name)
            columns.append(column)
    renamed = output_names(fmt, names, text_field, source)
    keep = [i for i, n in enumerate(names) if n in renamed]
    out = pa.Table.from_arrays([columns[i] for i in keep], names=[renamed[names[i]] for i in keep])
    text = out.column("text")
    if spec.line_end and (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        out = out.set_column(out.column_names.index("text"), "text",
                             pc.replace_substring_regex(text, pattern="\n$", replacement="", max_replacements=1))
    return out


def table_rows(table) -> list[Row]:
    """Python rows of an Arrow table (call it on the rows kept after filtering)."""
    return [{k: _clean(v) for k, v in row.items()} for row in table.to_pylist()]
