"""The toxic training set: the rows of a dataset recipe, shuffled once with a seed.

The label rule (e.g. Civil Comments ``toxicity > 0.8``) lives in the recipe's
``where``; this step only drops rows without text, shuffles, optionally caps
the number of rows, and records size and source beside the file.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from ...errors import DetoxflowError
from ...io import read_jsonl, write_json, write_jsonl


def shuffle_rows(rows: list[dict], seed: int, max_rows: int | None = None) -> list[dict]:
    """Rows with a non-empty ``text``, in a seeded random order, at most ``max_rows``."""
    kept = [r for r in rows if isinstance(r.get("text"), str) and r["text"].strip()]
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    if max_rows is not None:
        if max_rows < 1:
            raise DetoxflowError(f"task_vectors.max_rows must be >= 1 or null, got {max_rows}")
        order = order[:max_rows]
    return [kept[i] for i in order]


def texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def build_toxic_set(
    rows_path: str | Path,
    out_path: str | Path,
    info_path: str | Path,
    *,
    source: str,
    seed: int,
    max_rows: int | None = None,
    min_rows: int = 1,
) -> dict:
    """Read a recipe's JSONL, shuffle it, write the toxic set and its info JSON."""
    rows = read_jsonl(rows_path)
    total = len(rows)
    rows = shuffle_rows(rows, seed, max_rows)
    if len(rows) < min_rows:
        raise DetoxflowError(
            f"{rows_path}: the toxic training set has {len(rows)} rows with text "
            f"(of {total} in the recipe '{source}'), fewer than the {min_rows} needed; "
            f"loosen the recipe's `where` label rule or use a larger source"
        )
    write_jsonl(out_path, rows)
    info = {
        "source": source,
        "recipe_rows": total,
        "size": len(rows),
        "seed": seed,
        "max_rows": max_rows,
        "sha256_texts": texts_digest([r["text"] for r in rows]),
        "mean_chars": round(sum(len(r["text"]) for r in rows) / max(len(rows), 1), 1),
    }
    write_json(info_path, info)
    return info
