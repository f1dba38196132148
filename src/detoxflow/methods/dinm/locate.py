"""Locate the toxic layer of one instance: where the safe and unsafe responses differ most.

``masked`` (default): prompt + response tokenised together for each of the two
responses, each run on its own (so no padding enters), the output of every
decoder layer captured by a hook (the residual stream before any final norm,
the same kind of state at every layer), averaged over the response's tokens,
and the layer whose two averages are furthest apart (L2) wins; ties go to the
earliest layer.

``reference``: the behaviour of the reference code, for comparison: the two
responses alone in one padded batch, ``output_hidden_states`` (whose last entry
is the post-final-norm state), and the L2 distance between the whole padded
matrices, padding positions included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import DetoxflowError
from ...runtime import input_device
from .inputs import EditInputs, Encoded, encode_pair
from .layers import decoder_layers, layer_output

LOCATE_MODES = ("masked", "reference")


@dataclass
class Location:
    layer: int                       # 0-indexed decoder layer
    distances: list[float] = field(default_factory=list)
    mode: str = "masked"


@torch.no_grad()
def layer_states(model, enc: Encoded) -> torch.Tensor:
    """(n_layers, L, d): the output of every decoder layer for one unpadded sequence."""
    layers = decoder_layers(model)
    captured: list[torch.Tensor | None] = [None] * len(layers)
    handles = []
    for i, layer in enumerate(layers):
        def hook(module, args, output, i=i):
            captured[i] = layer_output(output)[0].detach()
        handles.append(layer.register_forward_hook(hook))
    try:
        device = input_device(model)
        model(input_ids=enc.input_ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in captured):
        raise DetoxflowError("a decoder layer did not run: cannot locate the toxic layer")
    return torch.stack([c.float() for c in captured])


def response_means(model, tokenizer, prompt: str, response: str, *, special_tokens: bool,
                   max_length: int | None = None) -> torch.Tensor:
    """(n_layers, d): every layer's output averaged over the response's tokens."""
    enc = encode_pair(tokenizer, prompt, response, special_tokens=special_tokens, max_length=max_length)
    states = layer_states(model, enc)
    mask = enc.response_mask.to(states.device)
    return states[:, mask].mean(dim=1)


def locate_toxic_layer(model, tokenizer, inputs: EditInputs, *, mode: str = "masked",
                       max_length: int | None = None) -> Location:
    if mode == "masked":
        safe = response_means(model, tokenizer, inputs.prompt, inputs.safe, special_tokens=inputs.special_tokens,
                              max_length=max_length)
        unsafe = response_means(model, tokenizer, inputs.prompt, inputs.unsafe,
                                special_tokens=inputs.special_tokens, max_length=max_length)
        distances = torch.linalg.vector_norm(safe - unsafe, dim=-1)
    elif mode == "reference":
        distances = _reference_distances(model, tokenizer, inputs.safe, inputs.unsafe)
    else:
        raise DetoxflowError(f"unknown DINM locate mode '{mode}'; use one of {', '.join(LOCATE_MODES)}")
    # argmax returns the first maximum: ties go to the earliest layer
    layer = int(torch.argmax(distances).item())
    return Location(layer=layer, distances=[float(d) for d in distances], mode=mode)


@torch.no_grad()
def _reference_distances(model, tokenizer, safe: str, unsafe: str) -> torch.Tensor:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = input_device(model)
    batch = tokenizer([safe, unsafe], return_tensors="pt", padding=True).to(device)
    hidden = model(**batch, output_hidden_states=True, use_cache=False).hidden_states[1:]
    return torch.stack([torch.dist(h[0].float(), h[1].float(), p=2) for h in hidden])
