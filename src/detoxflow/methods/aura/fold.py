"""Fold per-unit multipliers into the weights: a plain checkpoint, no runtime cost.

Multiplying the output unit ``j`` of a linear layer by ``alpha_j`` equals
scaling row ``j`` of an ``nn.Linear`` weight (``[out, in]``) and its bias, or
column ``j`` of a GPT-2 ``Conv1D`` weight (stored ``[in, out]``) and its bias.
The product is computed in float32 and cast back, so half-precision models
lose nothing beyond one rounding; a weight tied to another parameter (a tied
``lm_head`` / embedding) is refused.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ...errors import DetoxflowError
from .modules import _is_conv1d, output_units, tied_parameters


@torch.no_grad()
def fold_alphas(model: torch.nn.Module, alphas: Mapping[str, torch.Tensor]) -> int:
    """Scale the selected layers' output units in place; returns the number of layers changed."""
    tied = tied_parameters(model)
    changed = 0
    for name, alpha in alphas.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise DetoxflowError(f"cannot fold into '{name}': the model has no such module") from None
        if not isinstance(module, torch.nn.Linear) and not _is_conv1d(module):
            raise DetoxflowError(f"cannot fold into '{name}': {type(module).__name__} is not Linear/Conv1D")
        if id(module.weight) in tied:
            raise DetoxflowError(
                f"cannot fold into '{name}': its weight is tied to {', '.join(tied[id(module.weight)])}"
            )
        units = output_units(module)
        a = alpha.reshape(-1).to(device=module.weight.device, dtype=torch.float32)
        if a.numel() != units:
            raise DetoxflowError(f"'{name}' has {units} output units but {a.numel()} multipliers were given")
        if bool((a == 1.0).all()):
            continue
        w = module.weight
        if isinstance(module, torch.nn.Linear):
            w.copy_((w.to(torch.float32) * a[:, None]).to(w.dtype))
        else:  # Conv1D: weight [in, out]
            w.copy_((w.to(torch.float32) * a[None, :]).to(w.dtype))
        if module.bias is not None:
            b = module.bias
            b.copy_((b.to(torch.float32) * a).to(b.dtype))
        changed += 1
    return changed
