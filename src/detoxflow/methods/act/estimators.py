"""Per-unit transport maps from the toxic (source) to the non-toxic (target) activations.

Both estimators take pooled activations ``z_src`` [Ns, D] (toxic sentences) and
``z_dst`` [Nd, D] (non-toxic) of one module and return, per unit ``j``, an
affine map ``t_j(z) = beta_j z + alpha_j`` (AcT, Rodriguez et al., ICLR 2025;
reference code apple/ml-act):

* **Linear-AcT** (``linear_act``): the 1-D optimal transport between two
  empirical distributions with the same number of points pairs them by sorting;
  the map is the least-squares line through the sorted pairs
  ``(sort(z_src)_i, sort(z_dst)_i)``:
  ``beta = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)``,
  ``alpha = mean y - beta mean x`` (computed in float64).
* **Mean-AcT** (``mean_act``): ``beta = 1``, ``alpha = mean(z_dst) - mean(z_src)``
  for units whose standard deviation exceeds ``std_eps`` in both sets; other
  units are left alone (``alpha = 0``), as ml-act's mask does.

The source support (``quantile_bounds``) is recorded too: ml-act transports an
activation only where it lies strictly inside the source's ``[q_lo, q_hi]``
quantiles (Linear-AcT: ``q_0_100``, the min and max; Mean-AcT: no bounds).

With strength ``s`` the intervention is ``s t(z) + (1 - s) z``, i.e. the affine
map ``(1 + s (beta - 1)) z + s alpha`` (:func:`with_strength`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import DetoxflowError

METHODS = ("linear_act", "mean_act")


@dataclass
class TransportMap:
    """One module's per-unit map ``beta * z + alpha``, transported only where lo < z < hi."""

    beta: torch.Tensor
    alpha: torch.Tensor
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None


def _check(z_src: torch.Tensor, z_dst: torch.Tensor) -> None:
    if z_src.ndim != 2 or z_dst.ndim != 2 or z_src.shape[1] != z_dst.shape[1]:
        raise DetoxflowError(f"activations must be [N, D] with the same D, got {tuple(z_src.shape)} and "
                             f"{tuple(z_dst.shape)}")
    if len(z_src) < 2 or len(z_dst) < 2:
        raise DetoxflowError("at least two sentences per class are needed to estimate a transport map")


def linear_act(z_src: torch.Tensor, z_dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta, alpha) [D] in float64: least squares through the sorted (source, target) pairs.

    Needs the same number of source and target sentences (1-D OT by sorting). A unit whose
    source values are all equal has no slope to fit: it gets the mean shift (beta = 1).
    """
    _check(z_src, z_dst)
    if len(z_src) != len(z_dst):
        raise DetoxflowError(f"Linear-AcT pairs sorted activations: it needs as many toxic as non-toxic "
                             f"sentences (got {len(z_src)} and {len(z_dst)})")
    x = torch.sort(z_src.to(torch.float64), dim=0).values
    y = torch.sort(z_dst.to(torch.float64), dim=0).values
    mx, my = x.mean(0), y.mean(0)
    xb, yb = x - mx, y - my
    sxx = (xb * xb).sum(0)
    flat = sxx <= 0
    beta = torch.where(flat, torch.ones_like(sxx), (xb * yb).sum(0) / torch.where(flat, torch.ones_like(sxx), sxx))
    alpha = my - beta * mx
    return beta, alpha


def mean_act(z_src: torch.Tensor, z_dst: torch.Tensor, std_eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta = 1, alpha) [D] in float64: the mean shift, on units with std > std_eps in both sets."""
    _check(z_src, z_dst)
    x, y = z_src.to(torch.float64), z_dst.to(torch.float64)
    keep = (x.std(0) > std_eps) & (y.std(0) > std_eps)
    alpha = torch.where(keep, y.mean(0) - x.mean(0), torch.zeros(x.shape[1], dtype=torch.float64))
    return torch.ones_like(alpha), alpha


def quantile_bounds(z_src: torch.Tensor, quantiles: tuple[float, float] | None) -> tuple:
    """(lo, hi) [D] of the source activations at the given percentiles, or (None, None) for no bounds."""
    if quantiles is None:
        return None, None
    q_lo, q_hi = (float(q) / 100.0 for q in quantiles)
    x = z_src.to(torch.float64)
    return torch.quantile(x, q_lo, dim=0), torch.quantile(x, q_hi, dim=0)


def estimate(method: str, z_src: torch.Tensor, z_dst: torch.Tensor, *, quantiles=None,
             std_eps: float = 1e-4) -> TransportMap:
    """The map of one module for ``method`` (``linear_act`` / ``mean_act``), float32 on CPU."""
    if method == "linear_act":
        beta, alpha = linear_act(z_src, z_dst)
    elif method == "mean_act":
        beta, alpha = mean_act(z_src, z_dst, std_eps=std_eps)
    else:
        raise DetoxflowError(f"unknown AcT method '{method}' (use {', '.join(METHODS)})")
    lo, hi = quantile_bounds(z_src, quantiles)
    f32 = (lambda t: None if t is None else t.to(torch.float32))
    return TransportMap(beta=f32(beta), alpha=f32(alpha), lo=f32(lo), hi=f32(hi))


def with_strength(tmap: TransportMap, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of ``s t(z) + (1 - s) z`` (the map folded into the weights; no bounds)."""
    s = float(strength)
    return 1.0 + s * (tmap.beta - 1.0), s * tmap.alpha


def apply_map(z: torch.Tensor, tmap: TransportMap, strength: float, *, clip: bool = True) -> torch.Tensor:
    """The reference intervention on activations ``z`` [..., D]: transported where lo < z < hi."""
    scale, shift = with_strength(tmap, strength)
    dev = dict(device=z.device, dtype=z.dtype)
    moved = z * scale.to(**dev) + shift.to(**dev)
    if not clip or tmap.lo is None:
        return moved
    inside = (tmap.lo.to(**dev) < z) & (z < tmap.hi.to(**dev))
    return torch.where(inside, moved, z)
