"""Atomic file and folder output, and JSON/JSONL helpers.

Every artifact is written to a temporary sibling and renamed into place, so an
interrupted job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DetoxflowError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Works for files and folders. On an exception the temporary is removed and
    ``path`` is left untouched. Permissions are widened to what the umask
    allows, since some writers (safetensors) create files readable by the
    owner only, which breaks sharing results on a cluster file system.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    # mkdtemp makes a folder; a file writer wants the path itself to be free.
    tmp.rmdir()
    try:
        yield tmp
        _apply_umask(tmp)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _apply_umask(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    paths = [path] + (list(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for p in paths:
        if p.is_symlink() or not p.exists():
            continue
        mode = p.stat().st_mode
        os.chmod(p, mode | ((0o777 if p.is_dir() else 0o666) & ~umask))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    p = Path(path)
    if not p.is_file():
        raise DetoxflowError(f"{p}: file not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DetoxflowError(f"{p}: not valid JSON ({exc})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
                n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-empty line.

    Errors give the line number in the file (the JSON parser's own position
    counts inside the line only) and the column within that line.
    """
    p = Path(path)
    if not p.is_file():
        raise DetoxflowError(f"{p}: file not found")
    rows = []
    with open(p, "rb") as fh:
        for i, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DetoxflowError(f"{p}, line {i}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DetoxflowError(f"{p}, line {i}, column {exc.colno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DetoxflowError(f"{p}, line {i}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_metrics(path: str | os.PathLike, metrics: dict[str, Any], **details: Any) -> None:
    """A per-model metrics file: ``metrics`` are the summary table's columns, ``details`` the rest.

    Every evaluation step that adds columns to a model's rows (perplexity,
    SafeEdit, capability) writes this shape, so the summary merges them
    without knowing the step.
    """
    write_json(path, {"metrics": metrics, **details})


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metrics`` of a file written by :func:`write_metrics`."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise DetoxflowError(f"{path}: not a metrics file (expected a JSON object with a `metrics` object)")
    return data["metrics"]


def _jsonable(obj: Any) -> Any:
    """Make numpy/torch scalars and paths JSON-serialisable."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
