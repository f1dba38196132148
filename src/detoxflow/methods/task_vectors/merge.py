"""Merge task vectors and negate them, streaming one tensor at a time.

    theta = theta_pre - lambda * mean_i(theta_i - theta_pre)          (negate)
    theta = theta_pre + lambda * mean_i(theta_i - theta_pre)          (add)

The paper describes "negate each fine-tuned model, then average"; with one
shared lambda that is the same model.

Rules:

- Every floating-point tensor of the base is combined, so every fine-tuned
  model must hold it (under its own name or, for a tied weight, under an alias
  of the same parameter). Integer and boolean tensors (buffers such as
  position ids or attention masks) are copied from the base untouched.
- A fine-tuned model that lacks a floating tensor of the base, or holds a
  tensor the base does not have, is an error naming the folder, the file and
  the tensors: copying the base's value instead would silently drop that
  tensor's task vector.
- Tied weights are combined once: the base folder's safetensors store a tied
  matrix once (``save_pretrained`` drops the alias), and only the base's keys
  are visited. An alias that a fine-tuned folder happens to store as well is
  ignored; aliases are read off the architecture built from ``config.json``
  on the meta device (no weights are allocated).
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


def _file_dtypes(folder: Path, filename: str) -> dict[str, str]:
    """Tensor name -> safetensors dtype name for every tensor of one file (header only)."""
    from safetensors import safe_open

    with safe_open(str(folder / filename), framework="pt") as fh:
        return {key: fh.get_slice(key).get_dtype() for key in fh.keys()}


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


def tied_aliases(folder: Path) -> dict[str, set[str]]:
    """Tensor name -> the other names of the same parameter or buffer (tied weights).

    Built from the folder's ``config.json`` on the meta device, so nothing is
    allocated. An architecture that transformers cannot build (custom code)
    yields no aliases: every name then has to match exactly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError, AttributeError, OSError, ImportError, RuntimeError) as exc:
        log.debug("no tied-weight aliases for %s: %s", folder, exc)
        return {}
    groups: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(tensor), []).append(name)
    return {name: set(names) - {name} for names in groups.values() if len(names) > 1 for name in names}


def _names(keys: list[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _by_file(keys: list[str], wmap: dict[str, str]) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(wmap[key], []).append(key)
    return sorted(grouped.items())


def source_keys(
    base: Path, finetuned: list[Path], maps: list[dict[str, str]], base_map: dict[str, str]
) -> list[dict[str, str]]:
    """For each fine-tuned model: base tensor name -> the name it is stored under there.

    A floating tensor of the base must be in every fine-tuned model (itself or a
    tied alias), and a fine-tuned model may hold no tensor that is neither a base
    tensor nor an alias of one; otherwise the error names folder, file and tensors.
    """
    dtypes = {}
    for fname in sorted(set(base_map.values())):
        dtypes.update(_file_dtypes(base, fname))
    floating = {key for key in base_map if dtypes.get(key) in FLOAT_DTYPES}
    aliases: dict[str, set[str]] | None = None
    sources, problems = [], []
    for ft, fmap in zip(finetuned, maps):
        found = {key: key for key in base_map if key in fmap}
        missing = sorted(floating - set(found))
        extra = sorted(set(fmap) - set(base_map))
        if missing or extra:
            aliases = tied_aliases(base) if aliases is None else aliases
            for key in list(missing):
                stored = sorted(aliases.get(key, set()) & set(fmap))
                if stored:
                    found[key] = stored[0]
                    missing.remove(key)
            known = set(base_map) | {a for key in base_map for a in aliases.get(key, ())}
            extra = [key for key in extra if key not in known]
        for fname, keys in _by_file(missing, base_map):
            problems.append(f"'{ft}' lacks {_names(keys)} (in the base's {fname})")
        for fname, keys in _by_file(extra, fmap):
            problems.append(f"'{ft}' has tensor(s) the base lacks: {_names(keys)} (in {fname})")
        sources.append(found)
    if problems:
        if len(problems) > 4:
            problems = problems[:4] + [f"{len(problems) - 4} more"]
        raise DetoxflowError(
            f"fine-tuned models do not hold the tensors of the base '{base}': {'; '.join(problems)}. "
            f"A task vector needs every weight in both models: fine-tune and save from this base model"
        )
    return sources


def check_architecture(base: Path, finetuned: list[Path]) -> None:
    """The same ``model_type`` in every folder."""
    base_type = _model_type(base)
    for ft in finetuned:
        ft_type = _model_type(ft)
        if ft_type != base_type:
            raise DetoxflowError(
                f"architecture mismatch: '{ft}' is a {ft_type!r} model, the base '{base}' a {base_type!r} model; "
                f"task vectors only combine fine-tunes of the same base model"
            )


def check_compatible(base: Path, finetuned: list[Path], maps: list[dict[str, str]], base_map: dict[str, str],
                     sources: list[dict[str, str]] | None = None) -> None:
    """Same model_type everywhere and the same shape for every shared tensor."""
    check_architecture(base, finetuned)
    sources = sources or [{key: key for key in base_map if key in fmap} for fmap in maps]
    for ft, fmap, found in zip(finetuned, maps, sources):
        for key, fname in base_map.items():
            if key not in found:
                continue
            a, b = _tensor_shape(base, fname, key), _tensor_shape(ft, fmap[found[key]], found[key])
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
    check_architecture(base, finetuned)  # first: another architecture also has other tensor names
    sources = source_keys(base, finetuned, maps, base_map)
    check_compatible(base, finetuned, maps, base_map, sources)

    n = len(finetuned)
    scale = -float(lam) if negate else float(lam)
    combined, copied_int = [], []
    dtypes: set[str] = set()
    shards: dict[str, list[str]] = {}
    for key, fname in base_map.items():
        shards.setdefault(fname, []).append(key)

    def combine(key: str, fname: str, rows: slice | None) -> torch.Tensor:
        pre = _read_tensor(base, fname, key, rows)
        pre64 = pre.to(torch.float64)
        acc = torch.zeros_like(pre64)
        for ft, fmap, found in zip(finetuned, maps, sources):
            name = found[key]
            acc.add_(_read_tensor(ft, fmap[name], name, rows))  # accumulates in float64, no float64 copy
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
    log.info("wrote %s: %d tensors combined over %d model(s), lambda %s", out_dir, len(combined), n, lam)
    return report
