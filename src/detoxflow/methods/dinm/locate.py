"""Locate the toxic layer of one instance: where the safe and unsafe responses differ most.

``masked`` (default): prompt + response tokenised together for each of the two
responses, each run on its own (so no padding enters), the output of every
decoder layer captured by a hook (the residual stream before any final norm,
the same kind of state at every layer), averaged over the response's tokens,
and the layer whose two averages are furthest apart (L2) wins; ties go to the
earliest layer.

The residual stream of a pre-norm model grows with depth (every layer adds to
it), so the plain L2 distance tends to grow with it and to pick the last layer
whatever the responses. Two scale-free distances between the same two averages:

``relative``: the L2 distance divided by the mean of the two states' norms;

``cosine``: one minus the cosine similarity of the two states.

``locate_min_layer`` leaves the layers below it out of the choice (not out of the profiles): on
SmolLM2 the scale-free distances are largest at layer 0, whose output is still close to the
token embeddings of two different texts (docs/dinm.md).

``reference``: the behaviour of the reference code, for comparison: the two
responses alone in one padded batch, ``output_hidden_states`` (whose last entry
is the post-final-norm state), and the L2 distance between the whole padded
matrices, padding positions included.

Every location records the per-layer profile of each distance it computed
(``Location.profiles``: all three masked distances come from the same two
forward passes), so that the profiles can be compared (``dinm-plots``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import DetoxflowError
from ...runtime import input_device
from .inputs import EditInputs, Encoded, encode_pair
from .layers import decoder_layers, layer_output

#: distances between the response-averaged states of the same forward passes
MASKED_MODES = ("masked", "relative", "cosine")
LOCATE_MODES = (*MASKED_MODES, "reference")


@dataclass
class Location:
    layer: int                       # 0-indexed decoder layer
    distances: list[float] = field(default_factory=list)   # the profile of ``mode`` (the one that chose)
    mode: str = "masked"
    profiles: dict[str, list[float]] = field(default_factory=dict)   # mode -> per-layer distance


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


def masked_distances(safe: torch.Tensor, unsafe: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer distances between two (n_layers, d) stacks of states, for every masked mode."""
    l2 = torch.linalg.vector_norm(safe - unsafe, dim=-1)
    scale = (torch.linalg.vector_norm(safe, dim=-1) + torch.linalg.vector_norm(unsafe, dim=-1)) / 2
    relative = l2 / scale.clamp_min(torch.finfo(scale.dtype).tiny)
    cosine = 1 - torch.nn.functional.cosine_similarity(safe, unsafe, dim=-1)
    return {"masked": l2, "relative": relative, "cosine": cosine}


def locate_toxic_layer(model, tokenizer, inputs: EditInputs, *, mode: str = "masked",
                       max_length: int | None = None, min_layer: int = 0) -> Location:
    """The layer (``min_layer`` or above) whose ``mode`` distance is largest; the profiles cover every layer."""
    n_layers = len(decoder_layers(model))
    if not 0 <= min_layer < n_layers:
        raise DetoxflowError(f"dinm.locate_min_layer = {min_layer} is outside the model's layers 0..{n_layers - 1}")
    if mode in MASKED_MODES:
        safe = response_means(model, tokenizer, inputs.prompt, inputs.safe, special_tokens=inputs.special_tokens,
                              max_length=max_length)
        unsafe = response_means(model, tokenizer, inputs.prompt, inputs.unsafe,
                                special_tokens=inputs.special_tokens, max_length=max_length)
        profiles = masked_distances(safe, unsafe)
    elif mode == "reference":
        profiles = {"reference": _reference_distances(model, tokenizer, inputs.safe, inputs.unsafe)}
    else:
        raise DetoxflowError(f"unknown DINM locate mode '{mode}'; use one of {', '.join(LOCATE_MODES)}")
    distances = profiles[mode]
    # argmax returns the first maximum: ties go to the earliest layer
    layer = min_layer + int(torch.argmax(distances[min_layer:]).item())
    return Location(layer=layer, distances=[float(d) for d in distances], mode=mode,
                    profiles={m: [float(d) for d in p] for m, p in profiles.items()})


@torch.no_grad()
def _reference_distances(model, tokenizer, safe: str, unsafe: str) -> torch.Tensor:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = input_device(model)
    batch = tokenizer([safe, unsafe], return_tensors="pt", padding=True).to(device)
    hidden = model(**batch, output_hidden_states=True, use_cache=False).hidden_states[1:]
    return torch.stack([torch.dist(h[0].float(), h[1].float(), p=2) for h in hidden])
