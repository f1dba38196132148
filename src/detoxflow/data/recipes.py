"""Turn a dataset recipe (config ``datasets.<name>``) into rows with a ``text`` field.

Source choice: with ``data_root`` set and a ``local`` entry, the local file
``data_root/local.path`` is read; otherwise the hub data set ``hub``. Then the
``where`` conditions (the recipe's own and the chosen source's) are applied,
empty texts dropped, and ``sample`` rows drawn with ``seed``.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

from ..errors import DetoxflowError
from ..runtime import hf_token
from .readers import FORMATS, read_local, read_records

log = logging.getLogger(__name__)

_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a is not None and a > b,
    ">=": lambda a, b: a is not None and a >= b,
    "<": lambda a, b: a is not None and a < b,
    "<=": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}


def apply_where(rows: list[dict], conditions: list[dict], source: str) -> list[dict]:
    for cond in conditions:
        column, op, value = cond["column"], cond["op"], cond["value"]
        if op in ("in", "not_in") and not isinstance(value, list):
            raise DetoxflowError(f"{source}: condition on '{column}': op '{op}' needs a list value")
        if rows and column not in rows[0]:
            raise DetoxflowError(
                f"{source}: no column '{column}' to filter on (columns: {', '.join(sorted(rows[0]))})"
            )
        fn = _OPS[op]
        try:
            rows = [r for r in rows if fn(r.get(column), value)]
        except TypeError as exc:
            raise DetoxflowError(f"{source}: cannot compare column '{column}' with {value!r}: {exc}") from None
    return rows


def _load_hub(name: str, fmt: str, hub: dict, text_field: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise DetoxflowError("the 'datasets' package is needed to load hub data sets") from None
    label = hub["path"] + (f" ({hub['name']})" if hub.get("name") else "") + f", split {hub['split']}"
    try:
        ds = datasets.load_dataset(hub["path"], hub.get("name"), split=hub["split"], token=hf_token())
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DetoxflowError(
            f"dataset recipe '{name}': could not load {label} from the Hugging Face hub ({first}). "
            f"Offline? Set data_root to a folder laid out like shared/data "
            f"(e.g. --configfile workflow/presets/offline.yaml) and give the recipe a `local` path."
        ) from None
    return read_records(fmt, ds, f"hub {label}", text_field)


def load_recipe(name: str, recipe: dict[str, Any], data_root: str | os.PathLike | None) -> list[dict]:
    """Rows of recipe ``name`` (a validated config entry), each with a non-empty ``text``."""
    fmt = recipe["format"]
    if fmt not in FORMATS:
        raise DetoxflowError(f"dataset recipe '{name}': unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    text_field = recipe.get("text_field")
    where = list(recipe.get("where") or [])
    local, hub = recipe.get("local"), recipe.get("hub")
    if data_root and local:
        path = Path(data_root) / local["path"]
        source = str(path)
        log.info("recipe %s: reading local %s", name, path)
        rows = read_local(fmt, path, text_field)
        where += local.get("where") or []
    elif hub:
        source = f"hub {hub['path']}"
        log.info("recipe %s: loading %s from the hub", name, hub["path"])
        rows = _load_hub(name, fmt, hub, text_field)
        where += hub.get("where") or []
    elif local:
        raise DetoxflowError(
            f"dataset recipe '{name}' only has a local source ({local['path']}) and data_root is not set: "
            f"set data_root (e.g. --configfile workflow/presets/offline.yaml)"
        )
    else:
        raise DetoxflowError(f"dataset recipe '{name}' has neither a `hub` nor a `local` source")

    n_read = len(rows)
    rows = apply_where(rows, where, f"dataset recipe '{name}' ({source})")
    rows = [r for r in rows if isinstance(r.get("text"), str) and r["text"].strip()]
    sample = recipe.get("sample")
    if sample is not None:
        if len(rows) < sample:
            raise DetoxflowError(
                f"dataset recipe '{name}': wants sample={sample} rows but only {len(rows)} of {n_read} "
                f"match in {source}; lower `sample` or loosen `where`"
            )
        rows = random.Random(recipe.get("seed", 42)).sample(rows, sample)
    min_rows = recipe.get("min_rows", 1)
    if len(rows) < min_rows:
        raise DetoxflowError(
            f"dataset recipe '{name}': {len(rows)} rows after filtering ({n_read} read from {source}), "
            f"fewer than min_rows={min_rows}"
        )
    log.info("recipe %s: %d rows (of %d read)", name, len(rows), n_read)
    return rows
