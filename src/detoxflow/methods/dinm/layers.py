"""Where the decoder layers and their MLP output projections live, per architecture family."""

from __future__ import annotations

import torch

from ...errors import DetoxflowError

# (path to the list of decoder layers, MLP output projection inside a layer)
_LAYOUTS = (
    ("model.layers", "mlp.down_proj"),          # Llama, Mistral, Qwen2, Gemma, Phi-3, SmolLM
    ("transformer.h", "mlp.c_proj"),            # GPT-2 (c_proj weight and bias)
    ("gpt_neox.layers", "mlp.dense_4h_to_h"),   # Pythia / GPT-NeoX
    ("model.decoder.layers", "fc2"),            # OPT
)


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _layout(model) -> tuple[str, str]:
    for layers_path, proj_path in _LAYOUTS:
        layers = _get(model, layers_path)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) and _get(layers[0], proj_path) is not None:
            return layers_path, proj_path
    raise DetoxflowError(
        f"DINM does not know where the decoder layers / MLP output projection of a "
        f"{type(model).__name__} are (known layouts: "
        + ", ".join(f"{a}[i].{b}" for a, b in _LAYOUTS) + ")"
    )


def decoder_layers(model) -> torch.nn.ModuleList:
    return _get(model, _layout(model)[0])


def mlp_out_projection(model, layer: int) -> torch.nn.Module:
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise DetoxflowError(f"layer {layer} out of range: the model has {len(layers)} decoder layers")
    return _get(layers[layer], _layout(model)[1])


def mlp_out_param_names(model, layer: int) -> list[str]:
    """Full parameter names of a layer's MLP output projection (weight, and bias where there is one)."""
    layers_path, proj_path = _layout(model)
    module = mlp_out_projection(model, layer)
    prefix = f"{layers_path}.{layer}.{proj_path}"
    return [f"{prefix}.{name}" for name, _ in module.named_parameters(recurse=False)]


def mlp_out_params(model, layer: int) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    return {name: params[name] for name in mlp_out_param_names(model, layer)}


def layer_output(output) -> torch.Tensor:
    """The hidden state a decoder layer returns (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output
