"""Turn a dataset recipe (config ``datasets.<name>``) into rows with a ``text`` field.

Source choice: with ``data_root`` set and a ``local`` entry, the local file
``data_root/local.path`` is read; otherwise the hub data set ``hub``. Then the
``where`` conditions (the recipe's own and the chosen source's) are checked
against the source's column types and applied (on a hub data set in Arrow,
before any row becomes a Python dict), empty texts dropped, and ``sample`` rows
drawn with ``seed``.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

from ..errors import DetoxflowError
from ..runtime import hf_token
from .readers import FORMATS, hub_table, read_local, table_rows
from .where import apply_where, filter_table

__all__ = ["apply_where", "load_recipe"]

log = logging.getLogger(__name__)


def _hub_label(hub: dict) -> str:
    return hub["path"] + (f" ({hub['name']})" if hub.get("name") else "") + f", split {hub['split']}"


def _load_hub_dataset(name: str, hub: dict):
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise DetoxflowError("the 'datasets' package is needed to load hub data sets") from None
    try:
        return datasets.load_dataset(hub["path"], hub.get("name"), split=hub["split"], token=hf_token())
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DetoxflowError(
            f"dataset recipe '{name}': could not load {_hub_label(hub)} from the Hugging Face hub ({first}). "
            f"Offline? Set data_root to a folder laid out like shared/data "
            f"(e.g. --configfile workflow/presets/offline.yaml) and give the recipe a `local` path."
        ) from None


def _hub_rows(name: str, fmt: str, hub: dict, text_field: str | None, where: list[dict]) -> tuple[list[dict], int]:
    """(rows meeting ``where``, rows read): filtered in Arrow, only kept rows become Python dicts.

    A hub data set is memory-mapped by ``datasets``; civil_comments has 1.8M rows,
    which as Python dicts would take gigabytes.
    """
    ds = _load_hub_dataset(name, hub)
    label = f"hub {_hub_label(hub)}"
    try:
        table = hub_table(fmt, ds.with_format("arrow")[:], label, text_field)
    except DetoxflowError as exc:
        raise DetoxflowError(f"dataset recipe '{name}': {exc}") from None
    kept = filter_table(table, where, f"dataset recipe '{name}' ({label})", getattr(ds, "features", None))
    return table_rows(kept), table.num_rows


def _local_rows(name: str, fmt: str, path: Path, text_field: str | None, where: list[dict]) -> tuple[list[dict], int]:
    try:
        rows = read_local(fmt, path, text_field)
    except DetoxflowError as exc:
        raise DetoxflowError(f"dataset recipe '{name}': {exc}") from None
    return apply_where(rows, where, f"dataset recipe '{name}' ({path})"), len(rows)


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
        rows, n_read = _local_rows(name, fmt, path, text_field, where + list(local.get("where") or []))
    elif hub:
        source = f"hub {hub['path']}"
        log.info("recipe %s: loading %s from the hub", name, hub["path"])
        rows, n_read = _hub_rows(name, fmt, hub, text_field, where + list(hub.get("where") or []))
    elif local:
        raise DetoxflowError(
            f"dataset recipe '{name}' only has a local source ({local['path']}) and data_root is not set: "
            f"set data_root (e.g. --configfile workflow/presets/offline.yaml)"
        )
    else:
        raise DetoxflowError(f"dataset recipe '{name}' has neither a `hub` nor a `local` source")

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
