"""Per-unit dampening factors (alphas) of AurA and of the Det0 / Damp baselines.

* AurA: ``alpha = min(1, 2 (1 - AUROC))`` where ``AUROC > 0.5``, else 1:
  the better a unit separates toxic from non-toxic text, the more it is damped;
  units anti-correlated with toxicity are left alone.
* Det0: ``alpha = 0`` for the ``k`` units of highest AUROC (over the whole
  model), 1 elsewhere.
* Damp: ``alpha = damp_alpha`` (default 0.5) for the same top-``k`` units.

A strength ``s`` in [0, 1] interpolates between the model (s = 0) and the full
intervention (s = 1): the output is multiplied by ``1 - s (1 - alpha)``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

from ...errors import DetoxflowError

METHODS = ("aura", "det0", "damp")


def aura_alpha(auroc: torch.Tensor) -> torch.Tensor:
    """AurA's dampening factor per unit (float32)."""
    a = auroc.to(torch.float32)
    return torch.where(a > 0.5, (2.0 * (1.0 - a)).clamp(max=1.0), torch.ones_like(a))


def with_strength(alpha: torch.Tensor, strength: float) -> torch.Tensor:
    """``1 - s (1 - alpha)``: s = 0 leaves the model as is, s = 1 applies alpha fully."""
    if not 0.0 <= strength <= 1.0:
        raise DetoxflowError(f"aura strength must lie in [0, 1], got {strength}")
    return 1.0 - strength * (1.0 - alpha.to(torch.float32))


def topk_masks(aurocs: Mapping[str, torch.Tensor], k: int) -> "OrderedDict[str, torch.Tensor]":
    """Boolean mask per module of the ``k`` units with the highest AUROC over all modules.

    Ties at the boundary go to the unit that comes first (module order, then
    unit index), so the choice is deterministic.
    """
    names = list(aurocs)
    sizes = [aurocs[n].numel() for n in names]
    total = sum(sizes)
    if not 1 <= k <= total:
        raise DetoxflowError(f"top-k: k must lie in [1, {total}] (the number of recorded units), got {k}")
    flat = torch.cat([aurocs[n].reshape(-1).to(torch.float64) for n in names])
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[order] = True
    return OrderedDict(zip(names, torch.split(chosen, sizes)))


def compute_alphas(
    aurocs: Mapping[str, torch.Tensor],
    method: str,
    *,
    k: int | None = None,
    damp_alpha: float = 0.5,
    strength: float = 1.0,
) -> "OrderedDict[str, torch.Tensor]":
    """Effective per-unit multipliers (float32, strength applied) for ``method``."""
    if method == "aura":
        raw = OrderedDict((n, aura_alpha(a)) for n, a in aurocs.items())
    elif method in ("det0", "damp"):
        if k is None:
            raise DetoxflowError(f"{method} needs k (the number of units to dampen)")
        value = 0.0 if method == "det0" else float(damp_alpha)
        if method == "damp" and not 0.0 <= value <= 1.0:
            raise DetoxflowError(f"aura.damp.alpha must lie in [0, 1], got {value}")
        raw = OrderedDict(
            (n, torch.where(m, torch.full(m.shape, value), torch.ones(m.shape)))
            for n, m in topk_masks(aurocs, int(k)).items()
        )
    else:
        raise DetoxflowError(f"unknown intervention '{method}' (use {', '.join(METHODS)})")
    return OrderedDict((n, with_strength(a, strength)) for n, a in raw.items())


def count_dampened(alphas: Mapping[str, torch.Tensor]) -> int:
    """Units whose multiplier is below 1."""
    return int(sum(int((a < 1.0).sum()) for a in alphas.values()))
