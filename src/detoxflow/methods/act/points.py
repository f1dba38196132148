"""Where AcT intervenes: module patterns per architecture, in the order the forward pass runs them.

Presets follow apple/ml-act's model configs: GPT-2 transports the output of every
LayerNorm (``.+ln_.+``: ``ln_1``, ``ln_2`` of each block and ``ln_f``); Llama-family
models the outputs of the MLP's linear layers (``gate_proj``, ``up_proj``, ``down_proj``,
the reference's ``icml24`` set for Llama-3-8B); ``llama_norms`` the block norms
(``input_layernorm``, ``post_attention_layernorm``), folded exactly into the norm weight and
the biases of the layers that read them. Gemma-2's default in the reference (the post-norms,
whose output joins the residual stream through a bias-less RMSNorm) cannot be folded: use the
``llama`` preset (the MLP's linear layers) there.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from ...activations import execution_order
from ...errors import DetoxflowError
from ...folding import is_conv1d, is_rmsnorm
from ...module_names import ARCHITECTURE_PRESETS, abbreviate_names, pattern_to_regex

PRESETS: dict[str, list[str]] = {
    "gpt2": ["transformer.h.*.ln_1", "transformer.h.*.ln_2", "transformer.ln_f"],
    "llama": ["model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj", "model.layers.*.mlp.down_proj"],
    "llama_norms": ["model.layers.*.input_layernorm", "model.layers.*.post_attention_layernorm"],
}


def resolve_patterns(spec: str | Sequence[str], model: torch.nn.Module) -> list[str]:
    if isinstance(spec, str):
        if spec == "auto":
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            family = ARCHITECTURE_PRESETS.get(model_type)
            if family not in PRESETS:
                raise DetoxflowError(f"act.modules: auto has no preset for model type '{model_type}'; give a "
                                     f"preset ({', '.join(PRESETS)}) or module patterns")
            return list(PRESETS[family])
        if spec in PRESETS:
            return list(PRESETS[spec])
        return [spec]
    if not spec:
        raise DetoxflowError("act.modules is an empty list")
    return list(spec)


def _foldable(module: torch.nn.Module) -> bool:
    return (isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) or is_conv1d(module)
            or is_rmsnorm(module))


def select_points(model: torch.nn.Module, spec) -> "OrderedDict[str, torch.nn.Module]":
    """The modules to transport, in execution order; each a Linear / Conv1D / LayerNorm / RMSNorm."""
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen: dict[str, torch.nn.Module] = {}
    for pattern in resolve_patterns(spec, model):
        regex = pattern_to_regex(pattern)
        hits = [(n, m) for n, m in named if regex.fullmatch(n)]
        if not hits:
            raise DetoxflowError(f"act.modules: pattern '{pattern}' matches no module; modules that exist "
                                 f"(digits shown as *): {abbreviate_names(n for n, _ in named)}")
        chosen.update(hits)
    bad = [f"{n} ({type(m).__name__})" for n, m in chosen.items() if not _foldable(m)]
    if bad:
        raise DetoxflowError(f"act.modules: cannot fold a per-unit map into {', '.join(bad[:5])}: select "
                             "Linear, Conv1D, LayerNorm or RMSNorm modules")
    order = execution_order(model, list(chosen))
    return OrderedDict((n, chosen[n]) for n in order)
