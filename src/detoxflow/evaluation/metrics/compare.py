"""Is variant A less toxic than variant B? Paired bootstrap over prompts.

Both variants continued the same prompts, so prompts are resampled with
replacement and the same resample is applied to both; the interval is the
percentile interval of the difference A - B of each toxicity metric. With 100
prompts, differences in toxicity probability below ~0.1 are usually noise: this
is how to tell.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import DetoxflowError
from .toxicity import score_matrix, toxicity_metrics_batch


def _as_matrix(scores: Sequence[Sequence[float]], name: str) -> np.ndarray:
    lengths = {len(s) for s in scores}
    if len(lengths) != 1 or 0 in lengths:
        raise DetoxflowError(f"{name}: every prompt needs the same, non-zero number of scored continuations")
    return score_matrix(scores)


def paired_bootstrap(
    scores_a: Sequence[Sequence[float]],
    scores_b: Sequence[Sequence[float]],
    *,
    threshold: float = 0.5,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per metric of :func:`toxicity_metrics`: ``difference`` (A - B), ``low``, ``high``."""
    a, b = _as_matrix(scores_a, "variant A"), _as_matrix(scores_b, "variant B")
    if a.shape[0] != b.shape[0]:
        raise DetoxflowError(f"the variants scored different numbers of prompts ({a.shape[0]} vs {b.shape[0]})")
    if not 0 < confidence < 1:
        raise DetoxflowError(f"confidence must be in (0, 1), got {confidence}")
    idx = np.random.default_rng(seed).integers(0, a.shape[0], size=(resamples, a.shape[0]))
    point_a, point_b = toxicity_metrics_batch(a, threshold), toxicity_metrics_batch(b, threshold)
    # every resample at once: a[idx] is [resamples, prompts, k]
    boot_a, boot_b = toxicity_metrics_batch(a[idx], threshold), toxicity_metrics_batch(b[idx], threshold)
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name in point_a:
        diff = boot_a[name] - boot_b[name]
        out[name] = {"difference": float(point_a[name] - point_b[name]),
                     "low": float(np.percentile(diff, tail)), "high": float(np.percentile(diff, 100 - tail))}
    return out
