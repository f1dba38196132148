"""ActAdd (Turner et al., 2023, "Activation Addition"), as a constant folded into the weights.

The steering vector is the difference of the residual stream after block ``layer`` between a
contrast pair of prompts (``positive`` minus ``negative``; the paper's example "Love" - "Hate"),
times a coefficient. The paper adds the position-aligned difference of the two (padded)
prompts to the first positions of the user's prompt; a checkpoint can only hold a constant,
so here the difference at the prompts' last token is added at every position (after block
``layer``, i.e. to the bias of that block's MLP output projection: exact).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ...activations import record_pooled
from ...errors import DetoxflowError
from ...module_names import ARCHITECTURE_PRESETS

# model_type family -> (decoder block, its MLP output projection, its attention output projection) patterns
LAYOUTS = {
    "gpt2": ("transformer.h.{i}", "transformer.h.{i}.mlp.c_proj", "transformer.h.{i}.attn.c_proj"),
    "llama": ("model.layers.{i}", "model.layers.{i}.mlp.down_proj", "model.layers.{i}.self_attn.o_proj"),
}


def layout(model) -> tuple[str, str, str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = ARCHITECTURE_PRESETS.get(model_type)
    if family not in LAYOUTS or "gemma" in str(model_type):
        raise DetoxflowError(f"steering: no known layer layout for model type '{model_type}' "
                             f"(supported: GPT-2 and Llama-family models)")
    return LAYOUTS[family]


def n_layers(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)


@torch.no_grad()
def steering_vector(model, tokenizer, positive: str, negative: str, layer: int) -> torch.Tensor:
    """h(positive) - h(negative) at the last prompt token, residual stream after block ``layer`` (float64)."""
    if not 0 <= layer < n_layers(model):
        raise DetoxflowError(f"steering.actadd.layer {layer} is outside 0..{n_layers(model) - 1}")
    block = layout(model)[0].format(i=layer)
    acts, _ = record_pooled(model, tokenizer, [positive, negative], OrderedDict([(block, model.get_submodule(block))]),
                            pooling="last", batch_size=2, max_tokens=64, pool_special_tokens=False,
                            desc="actadd")
    z = acts[block].to(torch.float64)
    return z[0] - z[1]
