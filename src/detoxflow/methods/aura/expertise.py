"""Expertise of every unit: the AUROC of its pooled response as a toxicity classifier.

All units at once, exactly. AUROC equals the Mann-Whitney statistic
``U / (n_pos * n_neg)`` with ``U = sum over positives of (#negatives below +
0.5 * #negatives equal)``, which is what ``sklearn.metrics.roc_auc_score``
computes (tied scores count one half, i.e. average ranks).

How: each response is mapped to an order-preserving integer key with the
label in its lowest bit, and every unit's keys are sorted once (numpy's SIMD
sort). With the label bit set for positives, tied negatives sort before tied
positives, so the sorted position of a positive, minus the positives before
it, counts the negatives at or below it. Only for units that do have ties
(common in bfloat16) a second sort with the bit flipped counts the negatives
strictly below; the mean of the two counts gives the one-half credit. All
counts are integers, so the result is exact up to the final division.
Columns are processed in chunks (bounded memory, one thread per core).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ...errors import DetoxflowError
from ...io import atomic_path

DEFAULT_CHUNK_ELEMENTS = 1 << 21  # ~2M responses per chunk (16 MB of int64 keys)


def _sort_keys(block: np.ndarray, shift: int = 0) -> np.ndarray:
    """float32 [d, N] -> integer keys (shifted left by one) whose integer order is the float order.

    ``shift`` > 0 drops low bits that are zero for every value (16 for bfloat16,
    13 for float16 responses), so the keys fit in int32, which sorts twice as fast.
    """
    block = block + np.float32(0.0)  # -0.0 -> +0.0, so that both zeros tie
    i = block.view(np.int32)
    k = i ^ ((i >> 31) & np.int32(0x7FFFFFFF))
    if shift:
        return (k >> shift) << 1  # injective on values whose low `shift` bits are zero
    return k.astype(np.int64) << 1


def _twice_u(block: np.ndarray, label_bit: np.ndarray, n_pos: int, shift: int = 0) -> np.ndarray:
    """2U for each row of ``block`` [d, N] (float32), ``label_bit`` [N] (1 = positive)."""
    if np.isnan(block).any():
        raise DetoxflowError("responses contain NaN; AUROC is undefined")
    base = _sort_keys(block, shift)
    label_bit = label_bit.astype(base.dtype)
    positions = np.arange(block.shape[1], dtype=np.int64)
    s = np.sort(base | label_bit, axis=1)  # ties: negatives first
    sum_a = (s & 1).astype(np.int64) @ positions
    # Sorted keys of equal responses differ by at most the label bit; distinct ones by >= 2.
    tied = (np.diff(s, axis=1) <= 1).any(axis=1)
    sum_b = sum_a.copy()
    if tied.any():
        s = np.sort(base[tied] | (1 - label_bit), axis=1)  # ties: positives first
        sum_b[tied] = (1 - (s & 1)).astype(np.int64) @ positions
    return sum_a + sum_b - n_pos * (n_pos - 1)


def auroc(
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    threads: int | None = None,
) -> torch.Tensor:
    """AUROC of each column of ``scores`` [N, D] for ``labels`` [N] (1/True = positive) -> [D] float64."""
    if scores.dim() != 2:
        raise DetoxflowError(f"scores must be [sentences, units], got shape {tuple(scores.shape)}")
    labels = torch.as_tensor(labels).flatten().bool()
    if labels.numel() != scores.shape[0]:
        raise DetoxflowError(f"{labels.numel()} labels for {scores.shape[0]} sentences")
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DetoxflowError("AUROC needs both toxic and non-toxic sentences")
    n, d = scores.shape
    label_bit = labels.numpy().astype(np.int64)
    shift = {torch.bfloat16: 16, torch.float16: 13}.get(scores.dtype, 0)
    step = max(1, chunk_elements // n)
    # [units, sentences] float32, contiguous rows: each unit's responses sorted along the last axis.
    columns = scores.detach().to("cpu", torch.float32).t().contiguous().numpy()
    out = np.empty(d, dtype=np.float64)

    def work(c0: int) -> None:
        out[c0:c0 + step] = _twice_u(columns[c0:c0 + step], label_bit, n_pos, shift) / (2.0 * n_pos * n_neg)

    starts = range(0, d, step)
    workers = max(1, min(threads or torch.get_num_threads(), len(starts)))
    if workers == 1:
        for c0 in starts:
            work(c0)
    else:  # numpy's sort releases the GIL
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, starts))
    return torch.from_numpy(out)


def compute_expertise(responses_path: str | os.PathLike) -> tuple["OrderedDict[str, torch.Tensor]", dict]:
    """AUROC per module from a responses file, reading one module at a time -> ({module: [units]}, metadata)."""
    from .responses import iter_responses, load_labels, load_metadata

    meta = load_metadata(responses_path)
    labels = load_labels(responses_path)
    aurocs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name, resp in iter_responses(responses_path):
        aurocs[name] = auroc(resp, labels).to(torch.float32)
    meta = dict(meta, n_toxic=int(labels.sum()), n_nontoxic=int((labels == 0).sum()))
    return aurocs, meta


def save_expertise(path: str | os.PathLike, aurocs: dict[str, torch.Tensor], metadata: dict) -> Path:
    from safetensors.torch import save_file

    meta = {"detoxflow": json.dumps(dict(metadata, modules=list(aurocs)), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in aurocs.items()}, str(tmp), metadata=meta)
    return Path(path)


def load_expertise(path: str | os.PathLike) -> tuple["OrderedDict[str, torch.Tensor]", dict]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DetoxflowError(f"{p}: expertise file not found")
    with safe_open(str(p), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("detoxflow", "{}"))
        if "modules" not in meta:
            raise DetoxflowError(f"{p}: not a detoxflow expertise file (no metadata)")
        aurocs = OrderedDict((name, fh.get_tensor(name)) for name in meta["modules"])
    return aurocs, meta
