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

Memory: tensors are read with ``safe_open`` one at a time, reopening the files
for each tensor so that no memory map keeps pages of N models resident; the
output is written shard by shard, mirroring the base folder's sharding. Peak
memory is therefore about one output shard plus a few tensors, whatever N is.
Arithmetic is done in float64 and cast back to each tensor's stored dtype.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ... import __version__
from ...errors import DetoxflowError
from ...io import atomic_path, read_json, write_json
from ...models import METADATA_FILE

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


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


def _read_tensor(folder: Path, filename: str, key: str) -> torch.Tensor:
    from safetensors import safe_open

    # Open per tensor: a long-lived handle's memory map keeps every page read
    # resident, which would make memory grow with the number of models.
    with safe_open(str(folder / filename), framework="pt") as fh:
        return fh.get_tensor(key)


def _tensor_shape(folder: Path, filename: str, key: str) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(str(folder / filename), framework="pt") as fh:
        return tuple(fh.get_slice(key).get_shape())


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
) -> dict:
    """Write ``theta_pre -/+ lam * mean_i(theta_i - theta_pre)`` as a model folder.

    The output gets the base's config, tokenizer and other files, the combined
    weights (same dtype and sharding as the base) and ``detoxflow.json`` with
    ``method`` and ``params``. Returns a report of what was combined.
    """
    from safetensors.torch import save_file

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

    from tqdm.auto import tqdm

    bar = tqdm(total=len(base_map), desc="merge tensors")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for fname, keys in shards.items():
            out: dict[str, torch.Tensor] = {}
            for key in keys:
                pre = _read_tensor(base, fname, key)
                if not pre.is_floating_point():
                    out[key] = pre
                    copied_int.append(key)
                elif any(key not in m for m in maps):
                    out[key] = pre
                    copied_missing.append(key)
                else:
                    pre64 = pre.to(torch.float64)
                    acc = torch.zeros_like(pre64)
                    for ft, fmap in zip(finetuned, maps):
                        acc += _read_tensor(ft, fmap[key], key).to(torch.float64)
                        acc -= pre64
                    acc.mul_(scale / n).add_(pre64)
                    out[key] = acc.to(pre.dtype).contiguous()
                    combined.append(key)
                    dtypes.add(str(pre.dtype).replace("torch.", ""))
                    del acc, pre64
                bar.update(1)
            save_file(out, str(tmp / fname), metadata={"format": "pt"})
            del out
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
            "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
            "detoxflow_version": __version__,
            "task_vectors": report,
        })
    if copied_missing:
        log.warning("%d floating tensors missing from some fine-tuned model were copied from the base: %s",
                    len(copied_missing), ", ".join(copied_missing[:5]))
    log.info("wrote %s: %d tensors combined over %d model(s), lambda %s", out_dir, len(combined), n, lam)
    return report
