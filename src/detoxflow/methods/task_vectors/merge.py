"""Merge task vectors and negate them, streaming one tensor at a time.

    theta = theta_pre - lambda * mean_i(theta_i - theta_pre)          (negate)
    theta = theta_pre + lambda * mean_i(theta_i - theta_pre)          (add)

The paper describes "negate each fine-tuned model, then average"; with one
shared lambda that is the same model.

Rules:

- Only floating-point tensors stored in the base model AND every fine-tuned
  model are combined. Integer and boolean tensors (buffers such as position
  ids or attention masks) are copied from the base untouched; a floating
  tensor missing from some fine-tuned model is copied from the base and listed
  in ``detoxflow.json``.
- Tied weights are combined once: the base folder's safetensors store a tied
  matrix once (``save_pretrained`` drops the alias), and only the base's keys
  are visited. An alias that a fine-tuned folder happens to store is ignored.
- A different ``model_type``, a tensor whose shape differs, or no common
  floating tensor at all is an error that names the culprit.

Memory: tensors are read with ``safe_open`` in chunks of rows (about 4M
elements), reopening the files for each read so that no memory map keeps pages
of N models resident, and the result is written straight into the output
safetensors file (same sharding, dtypes and names as the base). Peak memory is
a few chunks, independent of N and of the model's size. Arithmetic is done in
float64 and cast back to each tensor's stored dtype.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
from pathlib import Path

import torch

from ... import __version__
from ...errors import DetoxflowError
from ...io import atomic_path, read_json, write_json
from ...models import METADATA_FILE

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def limit_heap_growth(threshold: int = 1 << 20) -> bool:
    """Serve allocations above ``threshold`` bytes with mmap (glibc), for this whole process.

    glibc raises its mmap threshold after large frees, after which the merge's
    repeated ~16-32 MB chunk buffers come from the heap and fragment it: peak
    memory then creeps up with the number of models. A fixed threshold returns
    every chunk to the OS when freed. Returns False where mallopt is unavailable.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def weight_map(folder: str | os.PathLike) -> dict[str, str]:
    """Tensor name -> safetensors file name (relative to the folder)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        return dict(read_json(index)["weight_map"])
    single = folder / SINGLE_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt") as fh:
            return {k: SINGLE_FILE for k in fh.keys()}
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise DetoxflowError(
        f"model folder '{folder}' has no {SINGLE_FILE} or {INDEX_FILE} (found: {', '.join(found[:8]) or 'nothing'}); "
        f"task-vector merging reads safetensors only: re-save the model with save_pretrained(safe_serialization=True)"
    )


# safetensors dtype names -> (bytes per element, torch dtype name)
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
             "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
SAFETENSORS_TO_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                        "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
# rows of a tensor processed at once: bounds the float64 temporaries (~32 MB each)
CHUNK_ELEMENTS = 1 << 22


def _read_tensor(folder: Path, filename: str, key: str, rows: slice | None = None) -> torch.Tensor:
    """A tensor, or a range of its rows, read from disk.

    The file is opened per read: a long-lived handle's memory map keeps every
    page read resident, which would make memory grow with the number of models.
    """
    from safetensors import safe_open

    with safe_open(str(folder / filename), framework="pt") as fh:
        if rows is None:
            return fh.get_tensor(key)
        return fh.get_slice(key)[rows]


def _tensor_info(folder: Path, filename: str, key: str) -> tuple[str, tuple[int, ...]]:
    """(safetensors dtype name, shape) without reading the data."""
    from safetensors import safe_open

    with safe_open(str(folder / filename), framework="pt") as fh:
        sl = fh.get_slice(key)
        return sl.get_dtype(), tuple(sl.get_shape())


def _tensor_shape(folder: Path, filename: str, key: str) -> tuple[int, ...]:
    return _tensor_info(folder, filename, key)[1]


def row_chunks(shape: tuple[int, ...], chunk_elements: int = CHUNK_ELEMENTS) -> list[slice | None]:
    """Ranges of rows (first dimension) holding about ``chunk_elements`` elements each."""
    if len(shape) == 0 or shape[0] == 0:
        return [None]
    per_row = math.prod(shape[1:])
    step = max(1, chunk_elements // max(per_row, 1))
    if step >= shape[0]:
        return [None]
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


class StreamingSafetensorsWriter:
    """Write a .safetensors file tensor by tensor (chunk by chunk), never holding it in memory.

    The layout (dtype and shape of every tensor) is known up front, so the
    header is written first; tensors must then be written completely, in
    ``self.order``, each as one or more consecutive row chunks.
    """

    def __init__(self, path: Path, layout: dict[str, tuple[str, tuple[int, ...]]]):
        self.path = Path(path)
        self.order = sorted(layout)
        header: dict[str, dict] = {}
        offset = 0
        self._sizes = {}
        for key in self.order:
            dtype, shape = layout[key]
            if dtype not in _ITEMSIZE:
                raise DetoxflowError(f"tensor '{key}': unsupported safetensors dtype {dtype}")
            nbytes = math.prod(shape) * _ITEMSIZE[dtype]
            header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._sizes[key] = nbytes
            offset += nbytes
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        self._header = blob
        self._written = {key: 0 for key in self.order}
        self._next = 0

    def __enter__(self) -> "StreamingSafetensorsWriter":
        self._fh = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(self._header)))
        self._fh.write(self._header)
        return self

    def write(self, key: str, tensor: torch.Tensor) -> None:
        current = self.order[self._next]
        if key != current:
            following = self.order[self._next + 1] if self._next + 1 < len(self.order) else None
            if self._written[current] != self._sizes[current] or key != following:
                raise RuntimeError(f"tensor '{key}' written out of order (expected '{current}')")
            self._next += 1
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        if self._written[key] + data.nbytes > self._sizes[key]:
            raise RuntimeError(f"tensor '{key}': more bytes than its shape holds")
        self._fh.write(memoryview(data))
        self._written[key] += data.nbytes

    def __exit__(self, exc_type, exc, tb) -> None:
        self._fh.close()
        if exc_type is None:
            short = [k for k in self.order if self._written[k] != self._sizes[k]]
            if short:
                raise RuntimeError(f"{self.path}: tensors not completely written: {short[:3]}")


def _model_type(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise DetoxflowError(f"model folder '{folder}' has no config.json: not a Hugging Face model folder")
    return json.loads(cfg.read_text()).get("model_type")


def check_compatible(base: Path, finetuned: list[Path], maps: list[dict[str, str]], base_map: dict[str, str]) -> None:
    """Same model_type everywhere and the same shape for every shared tensor."""
    base_type = _model_type(base)
    for ft in finetuned:
        ft_type = _model_type(ft)
        if ft_type != base_type:
            raise DetoxflowError(
                f"architecture mismatch: '{ft}' is a {ft_type!r} model, the base '{base}' a {base_type!r} model; "
                f"task vectors only combine fine-tunes of the same base model"
            )
    for ft, fmap in zip(finetuned, maps):
        for key, fname in base_map.items():
            if key not in fmap:
                continue
            a, b = _tensor_shape(base, fname, key), _tensor_shape(ft, fmap[key], key)
            if a != b:
                raise DetoxflowError(
                    f"shape mismatch for tensor '{key}': {list(b)} in '{ft}' but {list(a)} in the base '{base}'; "
                    f"the fine-tuned model does not come from this base model"
                )


def merge_task_vectors(
    base_dir: str | os.PathLike,
    finetuned_dirs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    lam: float,
    negate: bool = True,
    method: str = "task_vector_merge",
    params: dict | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict:
    """Write ``theta_pre -/+ lam * mean_i(theta_i - theta_pre)`` as a model folder.

    The output gets the base's config, tokenizer and other files, the combined
    weights (same dtype and sharding as the base) and ``detoxflow.json`` with
    ``method`` and ``params``. Returns a report of what was combined.
    """
    base = Path(base_dir)
    finetuned = [Path(d) for d in finetuned_dirs]
    if not finetuned:
        raise DetoxflowError("no fine-tuned models given to merge")
    for ft in finetuned:
        if not ft.is_dir():
            raise DetoxflowError(f"fine-tuned model folder '{ft}' does not exist")
    base_map = weight_map(base)
    maps = [weight_map(ft) for ft in finetuned]
    check_compatible(base, finetuned, maps, base_map)

    n = len(finetuned)
    scale = -float(lam) if negate else float(lam)
    combined, copied_int, copied_missing = [], [], []
    dtypes: set[str] = set()
    shards: dict[str, list[str]] = {}
    for key, fname in base_map.items():
        shards.setdefault(fname, []).append(key)

    def combine(key: str, fname: str, rows: slice | None) -> torch.Tensor:
        pre = _read_tensor(base, fname, key, rows)
        pre64 = pre.to(torch.float64)
        acc = torch.zeros_like(pre64)
        for ft, fmap in zip(finetuned, maps):
            acc.add_(_read_tensor(ft, fmap[key], key, rows))  # accumulates in float64, no float64 copy
            acc.sub_(pre64)
        return acc.mul_(scale / n).add_(pre64).to(pre.dtype)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(base_map), desc="merge tensors")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for fname, keys in shards.items():
            layout = {key: _tensor_info(base, fname, key) for key in keys}
            with StreamingSafetensorsWriter(tmp / fname, layout) as writer:
                for key in writer.order:
                    dtype, shape = layout[key]
                    if dtype not in FLOAT_DTYPES:
                        kind = "copy"
                        copied_int.append(key)
                    elif any(key not in m for m in maps):
                        kind = "copy"
                        copied_missing.append(key)
                    else:
                        kind = "combine"
                        combined.append(key)
                        dtypes.add(dtype)
                    for rows in row_chunks(shape, chunk_elements):
                        if kind == "copy":
                            writer.write(key, _read_tensor(base, fname, key, rows))
                        else:
                            writer.write(key, combine(key, fname, rows))
                    bar.update(1)
        bar.close()
        if not combined:
            raise DetoxflowError(
                f"no floating-point tensor is shared by the base '{base}' and every fine-tuned model: "
                f"nothing to merge (check that the folders hold the same architecture's weights)"
            )
        for item in base.iterdir():
            if item.name.endswith(".safetensors") or item.name == METADATA_FILE or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        report = {
            "combined_tensors": len(combined),
            "copied_non_floating": copied_int,
            "copied_missing_in_finetuned": copied_missing,
            "finetuned": [str(p) for p in finetuned],
            "base": str(base),
            "negate": negate,
        }
        write_json(tmp / METADATA_FILE, {
            "method": method,
            "params": params or {},
            "dtype": SAFETENSORS_TO_TORCH[dtypes.pop()] if len(dtypes) == 1 else "mixed",
            "detoxflow_version": __version__,
            "task_vectors": report,
        })
    if copied_missing:
        log.warning("%d floating tensors missing from some fine-tuned model were copied from the base: %s",
                    len(copied_missing), ", ".join(copied_missing[:5]))
    log.info("wrote %s: %d tensors combined over %d model(s), lambda %s", out_dir, len(combined), n, lam)
    return report
