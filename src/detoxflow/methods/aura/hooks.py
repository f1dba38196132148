"""Apply per-unit multipliers at run time with forward hooks (for study and checks).

The hook multiplies a module's output by ``alpha`` at every position, in the
output's dtype. The pipeline instead folds the same multipliers into the
weights (:mod:`.fold`), which needs no hook and costs nothing at inference.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

from ...errors import DetoxflowError


def attach_hooks(model: torch.nn.Module, alphas: Mapping[str, torch.Tensor]) -> list:
    """Register one forward hook per module; returns the handles (call ``.remove()`` on each)."""
    handles = []
    for name, alpha in alphas.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            for h in handles:
                h.remove()
            raise DetoxflowError(f"model has no module '{name}' to hook") from None
        cache: dict = {}

        def hook(_module, _inputs, output, alpha=alpha, cache=cache):
            key = (output.device, output.dtype)
            a = cache.get(key)
            if a is None:
                a = cache[key] = alpha.to(device=output.device, dtype=output.dtype)
            return output * a

        handles.append(module.register_forward_hook(hook))
    return handles


@contextlib.contextmanager
def dampening_hooks(model: torch.nn.Module, alphas: Mapping[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
    """Context manager: the model with the multipliers applied by hooks inside the block."""
    handles = attach_hooks(model, alphas)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
