"""Recording pooled activations of a model over sentences: shared by the methods that need them.

AurA (``methods/aura``), Linear-/Mean-AcT (``methods/act``) and ITI-c / ActAdd
(``methods/steering``) all read the same thing: for a list of modules, the
output (or input) of each module pooled over every sentence's tokens, padding
masked out. :func:`record_pooled` does it in one pass per call:

* sentences are batched by length (right padding, so real tokens keep positions
  ``0..L-1`` and never attend to padding);
* pooling happens inside the forward hook into one preallocated ``[N, units]``
  tensor per module (no activation is kept);
* the forward pass stops as soon as every selected module has fired (the rest
  of the network, e.g. a large ``lm_head``, is never run), which is what makes
  AcT's incremental, module-by-module estimation affordable;
* other hooks already on the model (e.g. the interventions of earlier layers
  during incremental estimation) stay active.

Poolings: ``max`` (AurA), ``mean`` (AcT, ITI-c), ``last`` (the last pooled
token: ActAdd's prompt vectors).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .errors import DetoxflowError
from .runtime import input_device

log = logging.getLogger(__name__)

POOLINGS = ("max", "mean", "last")
CAPTURES = ("output", "input")


class _StopForward(Exception):
    """Raised by the last hook that fires, to skip the rest of the forward pass."""


def pool(output: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``output`` [B, T, D] over tokens where ``mask`` [B, T] is true -> [B, D] (output dtype)."""
    if pooling == "max":
        fill = torch.finfo(output.dtype).min
        return output.masked_fill(~mask[..., None], fill).amax(dim=1)
    if pooling == "mean":
        m = mask[..., None].to(torch.float32)
        total = (output.to(torch.float32) * m).sum(dim=1)
        return (total / m.sum(dim=1).clamp_min(1.0)).to(output.dtype)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)
        return output[torch.arange(output.shape[0], device=output.device), last.to(output.device)]
    raise DetoxflowError(f"unknown pooling '{pooling}' (use {', '.join(POOLINGS)})")


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int, pool_special_tokens: bool):
    """Token ids and the per-token pooling mask (special tokens excluded unless asked)."""
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_tokens,
        return_special_tokens_mask=True,
        return_attention_mask=False,
    )
    ids, keep = [], []
    for i, (tok, special) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
        k = [True] * len(tok) if pool_special_tokens else [not s for s in special]
        if not any(k):
            raise DetoxflowError(
                f"sentence {i} has no token to pool over after tokenisation ({texts[i][:60]!r}); "
                "empty texts must be filtered out"
            )
        ids.append(tok)
        keep.append(k)
    return ids, keep


def _tensor_of(value) -> torch.Tensor:
    """A module's output (or first input) tensor: decoder blocks may return tuples."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise DetoxflowError(f"cannot record a {type(value).__name__}: expected a tensor")
    return value


@torch.no_grad()
def record_pooled(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    modules: "OrderedDict[str, torch.nn.Module]",
    *,
    pooling: str = "mean",
    batch_size: int = 16,
    max_tokens: int = 128,
    pool_special_tokens: bool = False,
    capture: str = "output",
    desc: str = "activations",
) -> tuple[dict[str, torch.Tensor], int]:
    """Pooled outputs (``capture="output"``) or inputs (``"input"``) of ``modules`` for every text.

    Returns ({module: [N, units] on CPU, in the activation's dtype}, tokens seen).
    """
    if pooling not in POOLINGS:
        raise DetoxflowError(f"unknown pooling '{pooling}' (use {', '.join(POOLINGS)})")
    if capture not in CAPTURES:
        raise DetoxflowError(f"unknown capture '{capture}' (use {' or '.join(CAPTURES)})")
    if not texts:
        raise DetoxflowError("no sentences to record activations for")
    device = input_device(model)
    ids, keep = tokenize(tokenizer, texts, max_tokens, pool_special_tokens)
    n = len(texts)
    buffers: "OrderedDict[str, torch.Tensor | None]" = OrderedDict((name, None) for name in modules)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0
    state: dict = {"rows": None, "mask": None, "fired": set()}

    def store(name: str, value) -> None:
        if name in state["fired"]:
            raise DetoxflowError(
                f"module '{name}' ran twice in one forward pass; recording needs modules that run once per token"
            )
        value = _tensor_of(value)
        pooled = pool(value, state["mask"], pooling)
        if buffers[name] is None:
            buffers[name] = torch.empty(n, pooled.shape[-1], dtype=pooled.dtype)
        buffers[name][state["rows"]] = pooled.to("cpu", buffers[name].dtype)
        state["fired"].add(name)
        if len(state["fired"]) == len(buffers):
            raise _StopForward

    def make_hook(name: str):
        if capture == "output":
            def hook(_module, _inputs, output):
                store(name, output)
            return hook

        def pre_hook(_module, inputs):
            store(name, inputs)
        return pre_hook

    handles = [
        mod.register_forward_hook(make_hook(name)) if capture == "output"
        else mod.register_forward_pre_hook(make_hook(name))
        for name, mod in modules.items()
    ]
    order = sorted(range(n), key=lambda i: len(ids[i]))
    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch"):
            rows = order[start:start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            pool_mask = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, i in enumerate(rows):
                L = len(ids[i])
                input_ids[r, :L] = torch.tensor(ids[i])
                attention[r, :L] = 1
                pool_mask[r, :L] = torch.tensor(keep[i])
                n_tokens += L
            state.update(rows=torch.tensor(rows), mask=pool_mask.to(device), fired=set())
            try:
                model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False)
            except _StopForward:
                pass
            missing = [m for m in buffers if m not in state["fired"]]
            if missing:
                raise DetoxflowError(f"modules never ran in the forward pass: {', '.join(missing[:5])}")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out: dict[str, torch.Tensor] = OrderedDict()
    for name, buf in buffers.items():
        assert buf is not None
        if not torch.isfinite(buf).all():
            raise DetoxflowError(
                f"activations of '{name}' contain inf/NaN (overflow in {buf.dtype}?); record in float32 or bfloat16"
            )
        out[name] = buf
    return out, n_tokens


@torch.no_grad()
def execution_order(model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """``names`` in the order their modules first run in a forward pass (one token, batch of one).

    ``named_modules()`` lists modules in registration order, which is not always the order of
    computation (a Llama layer registers its attention and MLP before its norms). Estimation that
    conditions on earlier interventions, and folding that pushes a shift downstream, need the latter.
    """
    seen: list[str] = []
    handles = []
    for name in names:
        mod = model.get_submodule(name)

        def hook(_m, _i, _o, name=name):
            if name not in seen:
                seen.append(name)

        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        ids = torch.zeros((1, 2), dtype=torch.long, device=input_device(model))
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if n not in seen]
    if missing:
        raise DetoxflowError(f"modules never ran in the forward pass: {', '.join(missing[:5])}")
    return seen


def sample_balanced(toxic: Sequence[dict], nontoxic: Sequence[dict], per_class: int, seed: int, *,
                    section: str, names: tuple[str, str] = ("toxic", "nontoxic")) -> tuple[list[str], list[int]]:
    """``per_class`` distinct non-empty texts of each recipe (seeded), toxic first -> (texts, labels 1/0)."""
    import random

    rng = random.Random(seed)
    texts_out: list[str] = []
    labels: list[int] = []
    for rows, label, name in ((toxic, 1, names[0]), (nontoxic, 0, names[1])):
        texts = list(OrderedDict.fromkeys(t for t in (str(r.get("text") or "").strip() for r in rows) if t))
        if len(texts) < per_class:
            raise DetoxflowError(f"{section}: recipe '{name}' has {len(texts)} distinct non-empty texts, fewer "
                                 f"than {section}.sentences_per_class={per_class}")
        texts_out += rng.sample(texts, per_class)
        labels += [label] * per_class
    return texts_out, labels
