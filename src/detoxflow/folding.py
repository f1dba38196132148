"""Folding activation interventions into the weights: a plain checkpoint, no runtime cost.

Shared by the methods whose intervention is affine in some activation (AcT, ITI-c,
ActAdd). Each function changes the model in place so that its plain forward pass
equals the hooked intervention:

* :func:`fold_affine_output`: ``out_j -> scale_j out_j + shift_j`` on the output of a
  ``Linear`` / GPT-2 ``Conv1D`` (scale its output rows / columns and bias, add the shift
  to the bias), a ``LayerNorm`` (scale its weight and bias, add the shift to the bias) or a
  Llama-style ``RMSNorm`` (scale its weight; the shift, which a bias-less norm cannot
  hold, goes through the linear layers that read the norm: ``bias += W shift``);
* :func:`add_to_input`: a constant added to a linear layer's input (ITI-c on ``o_proj``'s
  input) is ``bias += W v``;
* :func:`add_to_output`: a constant added to a linear layer's output (ActAdd: the residual
  stream after a block is that block's MLP output plus what came before) is ``bias += v``.

A Llama-family layer without a bias gets one through the architecture's own flags
(``mlp_bias`` / ``attention_bias``): the flag is set and every layer it covers gets a zero
bias, so the saved folder loads with plain ``AutoModelForCausalLM.from_pretrained``.
Products are computed in float32 and cast back (one rounding in half precision).
"""

from __future__ import annotations

import re

import torch

from .errors import DetoxflowError

# linear layers each Llama-family bias flag covers (module-name suffixes)
_BIAS_FLAGS = {
    "mlp_bias": re.compile(r"\.mlp\.(gate_proj|up_proj|down_proj)$"),
    "attention_bias": re.compile(r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)$"),
}
# Llama-style RMSNorm -> the linear layers that read its output
_NORM_CONSUMERS = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}


def is_conv1d(module: torch.nn.Module) -> bool:
    """GPT-2 style Conv1D (weight stored [in, out])."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_rmsnorm(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and getattr(module, "bias", None) is None


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise DetoxflowError(f"cannot fold into '{name}': the model has no such module") from None


def _f32(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).to(device=like.device, dtype=torch.float32)


def _config_of(model: torch.nn.Module):
    return getattr(model, "config", None)


@torch.no_grad()
def enable_bias_flag(model: torch.nn.Module, flag: str) -> int:
    """Set ``config.<flag>`` and give every linear layer it covers a zero bias; returns layers changed."""
    config = _config_of(model)
    if config is None or not hasattr(config, flag):
        raise DetoxflowError(f"the architecture has no `{flag}` config flag: a bias cannot be added")
    pattern = _BIAS_FLAGS[flag]
    changed = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and pattern.search(name) and mod.bias is None:
            mod.bias = torch.nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype,
                                                      device=mod.weight.device))
            changed += 1
    setattr(config, flag, True)
    return changed


def ensure_bias(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """The bias of linear layer ``name``, created (zero, with its config flag) where the architecture allows."""
    mod = _module(model, name)
    if getattr(mod, "bias", None) is not None:
        return mod.bias
    for flag, pattern in _BIAS_FLAGS.items():
        if pattern.search(name):
            enable_bias_flag(model, flag)
            return mod.bias
    raise DetoxflowError(f"cannot fold into '{name}': it has no bias and the architecture has no flag to add one")


def _check_untied(model: torch.nn.Module, param: torch.nn.Parameter, name: str) -> None:
    seen = [n for n, p in model.named_parameters(remove_duplicate=False) if p is param]
    if len(seen) > 1:
        raise DetoxflowError(f"cannot fold into '{name}': its weight is tied to {', '.join(seen)}")


def norm_consumers(model: torch.nn.Module, name: str) -> list[str]:
    """The linear layers reading a Llama-style RMSNorm's output (its shift goes into their biases)."""
    prefix, _, leaf = name.rpartition(".")
    if "gemma" in type(model).__name__.lower():
        raise DetoxflowError(f"cannot fold into '{name}': Gemma norms scale by (1 + weight) and its post-norms "
                             "feed the residual stream; intervene on the MLP's linear layers instead")
    if leaf not in _NORM_CONSUMERS:
        raise DetoxflowError(f"cannot fold a shift into RMSNorm '{name}': no bias, and the layers reading it are "
                             "not known (the final norm feeds lm_head, which has no bias); intervene on a linear "
                             "layer instead")
    out = [f"{prefix}.{c}" for c in _NORM_CONSUMERS[leaf]]
    for c in out:
        if not isinstance(_module(model, c), torch.nn.Linear):
            raise DetoxflowError(f"cannot fold a shift into RMSNorm '{name}': expected a Linear at '{c}'")
    return out


@torch.no_grad()
def add_to_input(model: torch.nn.Module, name: str, vector: torch.Tensor) -> None:
    """A constant ``vector`` added to the input of linear layer ``name``: ``bias += W vector``."""
    mod = _module(model, name)
    if isinstance(mod, torch.nn.Linear):
        w = mod.weight.to(torch.float32)
        delta = w @ _f32(vector, w)
    elif is_conv1d(mod):
        w = mod.weight.to(torch.float32)
        delta = _f32(vector, w) @ w
    else:
        raise DetoxflowError(f"cannot add to the input of '{name}': {type(mod).__name__} is not Linear/Conv1D")
    bias = ensure_bias(model, name)
    bias.copy_((bias.to(torch.float32) + delta).to(bias.dtype))


@torch.no_grad()
def add_to_output(model: torch.nn.Module, name: str, vector: torch.Tensor) -> None:
    """A constant ``vector`` added to the output of linear layer ``name``: ``bias += vector``."""
    mod = _module(model, name)
    if not isinstance(mod, torch.nn.Linear) and not is_conv1d(mod):
        raise DetoxflowError(f"cannot add to the output of '{name}': {type(mod).__name__} is not Linear/Conv1D")
    bias = ensure_bias(model, name)
    bias.copy_((bias.to(torch.float32) + _f32(vector, bias)).to(bias.dtype))


@torch.no_grad()
def fold_affine_output(model: torch.nn.Module, name: str, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make module ``name``'s output ``scale * out + shift`` (per unit) by changing its weights.

    Fold modules upstream first (model order): a norm's shift is pushed through the current
    weights of the layers that read it.
    """
    mod = _module(model, name)
    w = getattr(mod, "weight", None)
    if w is None:
        raise DetoxflowError(f"cannot fold into '{name}': {type(mod).__name__} has no weight")
    _check_untied(model, w, name)
    a, c = _f32(scale, w), _f32(shift, w)
    if isinstance(mod, torch.nn.Linear):
        if a.numel() != mod.out_features:
            raise DetoxflowError(f"'{name}' has {mod.out_features} outputs but a map of {a.numel()} units")
        w.copy_((w.to(torch.float32) * a[:, None]).to(w.dtype))
        needs_bias = bool((c != 0).any())
        if mod.bias is None and needs_bias:
            ensure_bias(model, name)
        if mod.bias is not None:
            mod.bias.copy_((mod.bias.to(torch.float32) * a + c).to(mod.bias.dtype))
    elif is_conv1d(mod):
        w.copy_((w.to(torch.float32) * a[None, :]).to(w.dtype))
        mod.bias.copy_((mod.bias.to(torch.float32) * a + c).to(mod.bias.dtype))
    elif isinstance(mod, torch.nn.LayerNorm):
        if mod.bias is None:
            raise DetoxflowError(f"cannot fold a shift into LayerNorm '{name}': it has no bias")
        w.copy_((w.to(torch.float32) * a).to(w.dtype))
        mod.bias.copy_((mod.bias.to(torch.float32) * a + c).to(mod.bias.dtype))
    elif is_rmsnorm(mod):
        consumers = norm_consumers(model, name) if bool((c != 0).any()) else []
        for consumer in consumers:
            add_to_input(model, consumer, c)
        w.copy_((w.to(torch.float32) * a).to(w.dtype))
    else:
        raise DetoxflowError(f"cannot fold into '{name}': {type(mod).__name__} is not Linear, Conv1D, LayerNorm "
                             "or RMSNorm")
