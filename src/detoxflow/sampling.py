"""Temperature + nucleus (top-p) filtering without sorting the whole vocabulary.

Transformers' ``TopPLogitsWarper`` sorts all V logits of every row at every
step; for a small model with a 49k vocabulary on a CPU that sort is about a
quarter of the generation time. The nucleus almost always lies within the few
hundred most likely tokens, so :class:`NucleusFilter` takes the top
``candidates`` probabilities (a partial selection) and sorts only the rows whose
candidates hold less than ``top_p`` of the mass. The kept set is Transformers'
(keep token ``i`` iff the probability of the tokens ranked above it is below
``top_p``), so sampling draws from the same distribution; only where a cumulative
sum lies within float rounding of ``top_p`` can the boundary token differ.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class NucleusFilter(LogitsProcessor):
    """Divide by ``temperature``, then mask (to -inf) every token outside the top-p nucleus.

    Temperature lives here too because ``generate`` runs user processors before
    its own warpers; pass ``temperature=1.0, top_p=1.0`` to ``generate``.
    """

    def __init__(self, top_p: float, temperature: float = 1.0, candidates: int = 1024):
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.top_p, self.temperature, self.candidates = float(top_p), float(temperature), int(candidates)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        probs = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(dim=-1)
        k = min(self.candidates, scores.shape[-1])
        top, idx = probs.topk(k, dim=-1)  # sorted, largest first
        above = top.cumsum(dim=-1) - top  # mass of the tokens ranked above each candidate
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, idx, above < self.top_p)
        short = top.sum(dim=-1) < self.top_p  # nucleus extends beyond the candidates: sort those rows fully
        if short.any():
            rows = short.nonzero().squeeze(-1)
            full, full_idx = probs[rows].sort(dim=-1, descending=True)
            keep[rows] = torch.zeros_like(full, dtype=torch.bool).scatter_(
                -1, full_idx, (full.cumsum(dim=-1) - full) < self.top_p)
        return scores.masked_fill(~keep, float("-inf"))
