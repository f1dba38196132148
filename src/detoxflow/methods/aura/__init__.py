"""AurA (Suau et al., ICML 2024): dampen neurons in proportion to their toxicity expertise.

Steps: :mod:`.responses` (pooled module outputs over toxic / non-toxic
sentences) -> :mod:`.expertise` (AUROC of every unit) -> :mod:`.interventions`
(alphas of AurA, Det0, Damp) -> :mod:`.fold` (a plain model folder) or
:mod:`.hooks` (runtime, for study). :mod:`.pipeline` wires them for the CLI.
"""

from .expertise import auroc
from .fold import fold_alphas
from .hooks import attach_hooks, dampening_hooks
from .interventions import aura_alpha, compute_alphas, topk_masks, with_strength
from .modules import PRESETS, select_modules
from .responses import pool, record_responses

__all__ = [
    "PRESETS",
    "attach_hooks",
    "aura_alpha",
    "auroc",
    "compute_alphas",
    "dampening_hooks",
    "fold_alphas",
    "pool",
    "record_responses",
    "select_modules",
    "topk_masks",
    "with_strength",
]
