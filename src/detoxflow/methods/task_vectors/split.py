"""Cut the toxic set into N disjoint parts of (almost) equal size, deterministically.

Parts differ in size by at most one row (nothing is dropped). The assignment
depends only on the row count, N and the seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from ...errors import DetoxflowError
from ...io import atomic_path, read_jsonl, write_json, write_jsonl


def split_indices(n_rows: int, n_splits: int, seed: int) -> list[list[int]]:
    """Row indices of each part: a seeded permutation cut into N contiguous chunks.

    Each part's indices are returned sorted, so a part keeps the toxic set's order.
    """
    if not isinstance(n_splits, int) or n_splits < 1:
        raise DetoxflowError(f"task_vectors.n_splits must be an integer >= 1, got {n_splits!r}")
    if n_splits > n_rows:
        raise DetoxflowError(
            f"task_vectors.n_splits = {n_splits} is larger than the toxic set ({n_rows} rows): "
            f"every part needs at least one row; lower n_splits or raise max_rows"
        )
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    base, extra = divmod(n_rows, n_splits)
    parts, start = [], 0
    for i in range(n_splits):
        size = base + (1 if i < extra else 0)
        parts.append(sorted(order[start:start + size]))
        start += size
    return parts


def split_rows(rows: list[dict], n_splits: int, seed: int) -> list[list[dict]]:
    return [[rows[i] for i in idx] for idx in split_indices(len(rows), n_splits, seed)]


def part_file(split_dir: str | Path, part: int) -> Path:
    return Path(split_dir) / f"part{part}.jsonl"


def write_splits(rows_path: str | Path, out_dir: str | Path, *, n_splits: int, seed: int) -> dict:
    """Write ``part{i}.jsonl`` for i < N plus ``split.json`` into ``out_dir`` (atomically)."""
    rows = read_jsonl(rows_path)
    parts = split_rows(rows, n_splits, seed)
    info = {"source": str(rows_path), "rows": len(rows), "n_splits": n_splits, "seed": seed,
            "sizes": [len(p) for p in parts]}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for i, part in enumerate(parts):
            write_jsonl(part_file(tmp, i), part)
        write_json(tmp / "split.json", info)
    return info


def read_part(split_dir: str | Path, part: int) -> list[dict]:
    path = part_file(split_dir, part)
    if not path.is_file():
        info = Path(split_dir) / "split.json"
        raise DetoxflowError(
            f"{path}: no such split part (the split folder {split_dir} has "
            f"{'an unreadable' if not info.is_file() else 'its'} split.json; part must be < n_splits)"
        )
    return read_jsonl(path)
