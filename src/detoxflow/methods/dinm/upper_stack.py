"""Logits from the edited layer upwards, reusing the unchanged computation below it.

During an edit only the MLP output projection of layer L (or of the lowest of
several layers) changes, so the input of layer L and everything the decoder
layers receive besides the hidden state (rotary embeddings, masks) are the
same at every step. :class:`UpperStack` records them once per sequence with
forward pre-hooks and afterwards runs only layers L.. plus the final norm and
the output head. For the last layer of a 30-layer model this skips 29 of 30
layers in every forward pass of the edit.

Each stack checks itself against the full model when it is built; where an
architecture does something this cannot reproduce (embedding scaling, logit
soft-capping, extra projections) the logits differ and the caller falls back
to the full forward pass.
"""

from __future__ import annotations

import logging

import torch

from .layers import _get, _layout, decoder_layers, layer_output

log = logging.getLogger(__name__)

_FINAL_NORMS = {
    "model.layers": "model.norm",
    "transformer.h": "transformer.ln_f",
    "gpt_neox.layers": "gpt_neox.final_layer_norm",
}


class UpperStack:
    """Logits of one sequence computed from layer ``start`` upwards."""

    def __init__(self, model, input_ids: torch.Tensor, start: int):
        self.model = model
        self.start = start
        layers = decoder_layers(model)
        norm_path = _FINAL_NORMS.get(_layout(model)[0])
        self.norm = _get(model, norm_path) if norm_path else None
        self.head = model.get_output_embeddings()
        self.calls: list[tuple[tuple, dict]] = []
        self.ok = self.norm is not None and self.head is not None
        if not self.ok:
            return
        captured: dict[int, tuple[tuple, dict]] = {}
        handles = []
        for j in range(start, len(layers)):
            def pre(module, args, kwargs, j=j):
                captured[j] = (tuple(args), dict(kwargs))
            handles.append(layers[j].register_forward_pre_hook(pre, with_kwargs=True))
        try:
            with torch.no_grad():
                full = model(input_ids=input_ids, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        if len(captured) != len(layers) - start:
            self.ok = False
            return
        for j in range(start, len(layers)):
            args, kwargs = captured[j]
            kwargs = {k: v for k, v in kwargs.items() if k not in ("use_cache", "past_key_values", "past_key_value",
                                                                     "layer_past")}
            self.calls.append((args, kwargs))
        first_args, first_kwargs = self.calls[0]
        self.hidden = (first_args[0] if first_args else first_kwargs["hidden_states"]).detach()
        with torch.no_grad():
            fast = self.logits()
        scale = float(full.abs().max()) or 1.0
        self.ok = fast.shape == full.shape and float((fast - full).abs().max()) <= 1e-4 * scale
        if not self.ok:
            log.warning("DINM: the forward pass from layer %d does not reproduce %s's logits; using the full "
                        "forward pass", start, type(model).__name__)

    def logits(self) -> torch.Tensor:
        layers = decoder_layers(self.model)
        h = self.hidden
        for j, (args, kwargs) in zip(range(self.start, len(layers)), self.calls):
            if args:
                out = layers[j](h, *args[1:], **kwargs)
            else:
                out = layers[j](**dict(kwargs, hidden_states=h))
            h = layer_output(out)
        return self.head(self.norm(h))
