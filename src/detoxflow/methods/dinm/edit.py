"""DINM: tune one layer's MLP output projection so the model gives the safe response.

Loss per instance = ``c_edit`` * NLL(safe response | adversarial prompt) +
``c_kl`` * KL(original || edited) over the vocabulary at the answer tokens of
the instance's knowledge-constraint pair. Compared with the reference code:

* the KL term is computed with a graph through the edited weights, so it
  really constrains the edit (the reference computes it under ``no_grad``); its
  reference distribution is the unedited model's, computed once;
* the toxic layer is located for every instance (the reference keeps the
  first instance's layer for all later ones);
* prompt and response are tokenised together with the prompt's tokens masked
  (the reference tokenises the labels apart from the prompt).

Adam without weight decay, schedule or clipping; the model stays in eval mode
(no dropout), so an edit is deterministic. :meth:`DinmEditor.restore` puts the
original weights back bit for bit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import DetoxflowError
from ...runtime import input_device
from .inputs import IGNORE, EditInputs, Encoded, encode_pair, instance_inputs
from .locate import LOCATE_MODES, Location, locate_toxic_layer
from .layers import decoder_layers, mlp_out_param_names
from .upper_stack import UpperStack

log = logging.getLogger(__name__)

#: The editing keys of the ``dinm`` config section (the prompt keys come from ``safeedit.prompt``).
SECTION_KEYS = ("lr", "lr_by_family", "default_lr", "steps", "c_edit", "c_kl", "locate", "locate_min_layer", "layer",
                "max_length", "reuse_lower_layers")


@dataclass
class DinmSettings:
    """Everything an edit depends on; the config schema holds the defaults (:meth:`defaults`)."""

    lr: float | None                 # None: lr_by_family[model_type], else default_lr
    lr_by_family: dict
    default_lr: float
    steps: int
    c_edit: float
    c_kl: float
    locate: str                      # masked | relative | cosine | reference
    locate_min_layer: int            # the located layer is this one or above
    layer: int | None                # fixed layer instead of locating (negative counts from the end)
    max_length: int | None           # cap on prompt + response tokens
    reuse_lower_layers: bool         # run only the layers from the edited one up (checked against the full model)
    suffix: str                      # safeedit.prompt.suffix
    chat_template: bool              # safeedit.prompt.chat_template

    @classmethod
    def from_dict(cls, data: dict) -> "DinmSettings":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise DetoxflowError(f"unknown DINM setting(s) {', '.join(unknown)} (known: {', '.join(known)})")
        missing = [k for k in known if k not in data]
        if missing:
            raise DetoxflowError(f"DINM settings lack {', '.join(missing)}")
        s = cls(**data)
        if s.locate not in LOCATE_MODES:
            raise DetoxflowError(f"dinm.locate: '{s.locate}' is not one of {', '.join(LOCATE_MODES)}")
        if s.steps < 1:
            raise DetoxflowError("dinm.steps must be >= 1")
        return s

    @classmethod
    def defaults(cls, **overrides) -> "DinmSettings":
        """The config schema's defaults (``dinm`` and ``safeedit.prompt``), with ``overrides``."""
        from ...config import section_defaults

        section = section_defaults("dinm")
        prompt = section_defaults("safeedit")["prompt"]
        data = {**{k: section[k] for k in SECTION_KEYS}, "suffix": prompt["suffix"],
                "chat_template": prompt["chat_template"]}
        return cls.from_dict({**data, **overrides})

    def resolve_lr(self, model) -> tuple[float, str]:
        if self.lr is not None:
            return float(self.lr), "config"
        family = getattr(model.config, "model_type", "")
        if family in self.lr_by_family:
            return float(self.lr_by_family[family]), f"family {family}"
        log.warning("no DINM learning rate for model family '%s'; using default_lr %g", family, self.default_lr)
        return float(self.default_lr), "default"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class KnowledgeRef:
    """The unedited model's log-probabilities at the answer tokens of a knowledge pair."""

    enc: Encoded
    logprobs: torch.Tensor   # (n_answer, vocab)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> float32 for the losses; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _answer_positions(enc: Encoded) -> torch.Tensor:
    """Positions whose logits predict the response tokens (one before each)."""
    return torch.nonzero(enc.labels[0] != IGNORE).flatten() - 1


@torch.no_grad()
def knowledge_reference(model, tokenizer, inputs: EditInputs, *, max_length: int | None = None) -> KnowledgeRef:
    device = input_device(model)
    enc = encode_pair(tokenizer, inputs.knowledge_prompt, inputs.knowledge_answer,
                      special_tokens=inputs.special_tokens, max_length=max_length).to(device)
    logits = model(input_ids=enc.input_ids, use_cache=False).logits[0, _answer_positions(enc)]
    return KnowledgeRef(enc, F.log_softmax(_upcast(logits), dim=-1))


def _logits(model, input_ids: torch.Tensor, stack: UpperStack | None) -> torch.Tensor:
    if stack is not None:
        return stack.logits()
    return model(input_ids=input_ids, use_cache=False).logits


def kl_term(model, ref: KnowledgeRef, stack: UpperStack | None = None) -> torch.Tensor:
    """KL(original || current) averaged over the answer tokens; differentiable in the current weights."""
    logits = _logits(model, ref.enc.input_ids, stack)[0, _answer_positions(ref.enc)]
    current = F.log_softmax(_upcast(logits), dim=-1)
    return F.kl_div(current, ref.logprobs, log_target=True, reduction="batchmean")


def nll_term(model, enc: Encoded, stack: UpperStack | None = None) -> torch.Tensor:
    """Mean NLL of the response tokens given the prompt."""
    logits = _upcast(_logits(model, enc.input_ids, stack)[0, :-1])
    return F.cross_entropy(logits, enc.labels[0, 1:], ignore_index=IGNORE)


@dataclass
class EditRecord:
    id: Any
    layers: list[int]
    lr: float
    steps: int
    nll_before: float
    nll_after: float
    kl_after: float
    losses: list[float]
    distances: list[list[float]] = field(default_factory=list)
    # per located instance: {"id", "layer", "mode", "profiles": {mode: per-layer distance}}
    profiles: list[dict] = field(default_factory=list)
    locate_seconds: float = 0.0
    edit_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def location_profiles(ids: list, locations: list[Location]) -> list[dict]:
    """What an edit record keeps of each location: the instance, the layer and every distance profile."""
    return [{"id": i, "layer": loc.layer, "mode": loc.mode, "profiles": loc.profiles}
            for i, loc in zip(ids, locations) if loc.profiles]


class DinmEditor:
    """Locate, edit and restore on one loaded model.

    >>> editor = DinmEditor(model, tokenizer, DinmSettings())
    >>> rec = editor.edit_instance(safeedit_record)   # locate + edit
    >>> ...                                           # evaluate the edited model
    >>> editor.restore()                              # original weights, bit for bit
    """

    def __init__(self, model, tokenizer, settings: DinmSettings | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or DinmSettings()
        self.lr, self.lr_source = self.settings.resolve_lr(model)
        self.n_layers = len(decoder_layers(model))
        self._saved: dict[str, torch.Tensor] = {}
        dtype = next(model.parameters()).dtype
        if dtype != torch.float32:
            log.warning("DINM edits a %s model; the reference edits in float32", dtype)

    # -- inputs -------------------------------------------------------------
    def inputs(self, record: dict) -> EditInputs:
        s = self.settings
        return instance_inputs(record, self.tokenizer, suffix=s.suffix, chat_template=s.chat_template)

    def reference(self, inputs: EditInputs) -> KnowledgeRef:
        return knowledge_reference(self.model, self.tokenizer, inputs, max_length=self.settings.max_length)

    # -- locate -------------------------------------------------------------
    def locate(self, inputs: EditInputs) -> Location:
        fixed = self.settings.layer
        if fixed is not None:
            layer = fixed if fixed >= 0 else self.n_layers + fixed
            if not 0 <= layer < self.n_layers:
                raise DetoxflowError(f"dinm.layer {fixed} out of range for {self.n_layers} layers")
            return Location(layer=layer, distances=[], mode="fixed")
        return locate_toxic_layer(self.model, self.tokenizer, inputs, mode=self.settings.locate,
                                  min_layer=self.settings.locate_min_layer,
                                  max_length=self.settings.max_length)

    # -- edit ---------------------------------------------------------------
    def edit(self, items: list[EditInputs], layers: list[int], refs: list[KnowledgeRef] | None = None,
             *, record_id: Any = None) -> EditRecord:
        """Tune the MLP output projections of ``layers`` on the summed per-instance losses.

        ``refs`` are the knowledge references of ``items`` (computed now, from
        the current weights, when not given).
        """
        s = self.settings
        model = self.model
        device = input_device(model)
        if refs is None:
            refs = [self.reference(it) for it in items]
        encs = [encode_pair(self.tokenizer, it.prompt, it.safe, special_tokens=it.special_tokens,
                            max_length=s.max_length).to(device) for it in items]
        names = sorted({n for layer in layers for n in mlp_out_param_names(model, layer)})
        enc_stacks: list[UpperStack | None] = [None] * len(encs)
        ref_stacks: list[UpperStack | None] = [None] * len(refs)
        if s.reuse_lower_layers:
            start = min(layers)
            enc_stacks = [UpperStack(model, e.input_ids, start) for e in encs]
            ref_stacks = [UpperStack(model, r.enc.input_ids, start) for r in refs]
            if not all(st.ok for st in enc_stacks + ref_stacks):
                enc_stacks, ref_stacks = [None] * len(encs), [None] * len(refs)
        params = dict(model.named_parameters())
        targets = [params[n] for n in names]
        for n in names:
            if n not in self._saved:
                self._saved[n] = params[n].detach().clone()

        flags = {n: p.requires_grad for n, p in params.items()}
        for p in params.values():
            p.requires_grad_(False)
        for p in targets:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(targets, lr=self.lr)
        losses: list[float] = []
        nll_before = 0.0
        start = time.perf_counter()
        try:
            for step in range(s.steps):
                optimiser.zero_grad(set_to_none=True)
                total = 0.0
                for enc, ref, enc_stack, ref_stack in zip(encs, refs, enc_stacks, ref_stacks):
                    nll = nll_term(model, enc, enc_stack)
                    loss = s.c_edit * nll
                    if s.c_kl:
                        loss = loss + s.c_kl * kl_term(model, ref, ref_stack)
                    (loss / len(encs)).backward()
                    total += loss.item() / len(encs)
                    if step == 0:
                        nll_before += nll.item() / len(encs)
                losses.append(total)
                optimiser.step()
        finally:
            for n, p in params.items():
                p.requires_grad_(flags[n])
            for p in targets:
                p.grad = None
        seconds = time.perf_counter() - start
        with torch.no_grad():
            nll_after = sum(float(nll_term(model, e)) for e in encs) / len(encs)
            kl_after = sum(float(kl_term(model, r)) for r in refs) / len(refs)
        return EditRecord(id=record_id, layers=sorted(set(layers)), lr=self.lr, steps=s.steps,
                          nll_before=nll_before, nll_after=nll_after, kl_after=kl_after, losses=losses,
                          edit_seconds=seconds)

    def edit_instance(self, record: dict) -> EditRecord:
        """Locate this instance's layer and edit it (call :meth:`restore` afterwards)."""
        inputs = self.inputs(record)
        start = time.perf_counter()
        loc = self.locate(inputs)
        locate_seconds = time.perf_counter() - start
        rec = self.edit([inputs], [loc.layer], record_id=inputs.id)
        rec.distances = [loc.distances] if loc.distances else []
        rec.profiles = location_profiles([inputs.id], [loc])
        rec.locate_seconds = locate_seconds
        return rec

    # -- restore ------------------------------------------------------------
    @torch.no_grad()
    def restore(self) -> None:
        """Put back the original values of every parameter edited since the last restore/commit."""
        params = dict(self.model.named_parameters())
        for n, value in self._saved.items():
            params[n].copy_(value)
        self._saved.clear()

    def commit(self) -> None:
        """Keep the edits (forget the saved originals)."""
        self._saved.clear()

    @property
    def edited_parameters(self) -> list[str]:
        return sorted(self._saved)


def edit_model(editor: DinmEditor, records: list[dict], *, mode: str = "sequential") -> list[EditRecord]:
    """Detoxify the editor's model with several instances and keep the edits.

    ``sequential``: one instance after another, each on its own located layer
    (located on the model as edited so far). ``joint``: every instance located
    on the original model, then the union of their layers tuned on the mean
    loss of all instances. Either way the KL references are the original
    model's.
    """
    if not records:
        raise DetoxflowError("DINM needs at least one instance to edit the model")
    items = [editor.inputs(r) for r in records]
    refs = [editor.reference(it) for it in items]
    out: list[EditRecord] = []
    if mode == "sequential":
        for it, ref in zip(items, refs):
            start = time.perf_counter()
            loc = editor.locate(it)
            seconds = time.perf_counter() - start
            rec = editor.edit([it], [loc.layer], [ref], record_id=it.id)
            rec.distances = [loc.distances] if loc.distances else []
            rec.profiles = location_profiles([it.id], [loc])
            rec.locate_seconds = seconds
            out.append(rec)
            log.info("instance %s: layer %d, NLL %.3f -> %.3f", it.id, loc.layer, rec.nll_before, rec.nll_after)
    elif mode == "joint":
        start = time.perf_counter()
        locs = [editor.locate(it) for it in items]
        seconds = time.perf_counter() - start
        rec = editor.edit(items, [loc.layer for loc in locs], refs, record_id=[it.id for it in items])
        rec.distances = [loc.distances for loc in locs]
        rec.profiles = location_profiles([it.id for it in items], locs)
        rec.locate_seconds = seconds
        out.append(rec)
        log.info("joint edit of %d instances on layers %s: NLL %.3f -> %.3f", len(items), rec.layers,
                 rec.nll_before, rec.nll_after)
    else:
        raise DetoxflowError(f"dinm.model.mode '{mode}' is not one of sequential, joint")
    editor.commit()
    return out
