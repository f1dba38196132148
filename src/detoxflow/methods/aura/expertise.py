"""Expertise of every unit: the AUROC of its pooled response as a toxicity classifier.

All units at once, exactly: AUROC equals the Mann-Whitney statistic
``U / (n_pos * n_neg)`` with ``U = sum over positives of (#negatives below +
0.5 * #negatives equal)``. Per column the negative responses are sorted once and
every positive response is located in them with two binary searches (left and
right insertion points): the counts are integers, ties count one half, so the
result equals ``sklearn.metrics.roc_auc_score`` (which averages tied ranks)
up to float rounding of the final division. Columns are processed in chunks
so memory stays bounded for a million units.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

from ...errors import DetoxflowError
from ...io import atomic_path

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # ~4M responses per chunk (16 MB in float32)


def auroc(
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """AUROC of each column of ``scores`` [N, D] for ``labels`` [N] (1/True = positive) -> [D] float64."""
    if scores.dim() != 2:
        raise DetoxflowError(f"scores must be [sentences, units], got shape {tuple(scores.shape)}")
    labels = torch.as_tensor(labels).to(scores.device).bool().flatten()
    if labels.numel() != scores.shape[0]:
        raise DetoxflowError(f"{labels.numel()} labels for {scores.shape[0]} sentences")
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DetoxflowError("AUROC needs both toxic and non-toxic sentences")
    pos_rows = labels.nonzero().flatten()
    neg_rows = (~labels).nonzero().flatten()
    n, d = scores.shape
    step = max(1, chunk_elements // n)
    out = torch.empty(d, dtype=torch.float64, device=scores.device)
    for c0 in range(0, d, step):
        block = scores[:, c0:c0 + step]
        # [units, sentences], contiguous rows: sorting and searching run along the last dim.
        neg = block.index_select(0, neg_rows).t().to(torch.float32).contiguous()
        pos = block.index_select(0, pos_rows).t().to(torch.float32).contiguous()
        if torch.isnan(neg).any() or torch.isnan(pos).any():
            raise DetoxflowError("responses contain NaN; AUROC is undefined")
        neg, _ = torch.sort(neg, dim=1)
        below = torch.searchsorted(neg, pos, side="left")
        at_or_below = torch.searchsorted(neg, pos, side="right")
        # 2U = sum(#below + #at_or_below): integers, exact in int64.
        twice_u = (below + at_or_below).sum(dim=1)
        out[c0:c0 + step] = twice_u.to(torch.float64) / (2.0 * n_pos * n_neg)
    return out


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
