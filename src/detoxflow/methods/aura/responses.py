"""Record pooled module outputs ("responses") of a model over labelled sentences.

For every selected module the output of each sentence is pooled over its
tokens (max, or mean) with padding masked out, straight into one preallocated
``[sentences x units]`` tensor per module, in the model's dtype. The result is
one safetensors file: one tensor per module plus ``labels`` (1 = toxic), not a
file per sentence.

Efficiency: sentences are batched by length (little padding), pooling happens
inside the forward hook (no activation is kept), and the forward pass stops
as soon as every selected module has fired (the rest of the network, e.g. a
large ``lm_head``, is never run).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ...errors import DetoxflowError
from ...runtime import input_device
from ...io import atomic_path
from .modules import output_units

log = logging.getLogger(__name__)

POOLINGS = ("max", "mean")
LABELS_KEY = "__labels__"


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
    raise DetoxflowError(f"aura.pooling: unknown pooling '{pooling}' (use {' or '.join(POOLINGS)})")


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


@torch.no_grad()
def record_responses(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    modules: "OrderedDict[str, torch.nn.Module]",
    *,
    pooling: str = "max",
    batch_size: int = 16,
    max_tokens: int = 128,
    pool_special_tokens: bool = False,
    desc: str = "responses",
) -> tuple[dict[str, torch.Tensor], int]:
    """Pooled outputs of ``modules`` for every text -> ({module: [N, units] on CPU}, tokens seen).

    Tensors are in the dtype of each module's weight (the model's dtype).
    """
    if pooling not in POOLINGS:
        raise DetoxflowError(f"aura.pooling: unknown pooling '{pooling}' (use {' or '.join(POOLINGS)})")
    if not texts:
        raise DetoxflowError("no sentences to record responses for")
    device = input_device(model)
    ids, keep = tokenize(tokenizer, texts, max_tokens, pool_special_tokens)
    n = len(texts)
    buffers = OrderedDict(
        (name, torch.empty(n, output_units(mod), dtype=mod.weight.dtype)) for name, mod in modules.items()
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0
    state: dict = {"rows": None, "mask": None, "fired": set()}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if name in state["fired"]:
                raise DetoxflowError(
                    f"module '{name}' ran twice in one forward pass; AurA needs modules that run once per token"
                )
            pooled = pool(output, state["mask"], pooling)
            buffers[name][state["rows"]] = pooled.to("cpu", buffers[name].dtype)
            state["fired"].add(name)
            if len(state["fired"]) == len(buffers):
                raise _StopForward

        return hook

    handles = [mod.register_forward_hook(make_hook(name)) for name, mod in modules.items()]
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
                # Right padding: real tokens keep positions 0..L-1 and never attend to padding.
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
    for name, buf in buffers.items():
        if not torch.isfinite(buf).all():
            raise DetoxflowError(
                f"responses of '{name}' contain inf/NaN (overflow in {buf.dtype}?); record in float32 or bfloat16"
            )
    return buffers, n_tokens


def sample_sentences(
    toxic: Sequence[dict],
    nontoxic: Sequence[dict],
    per_class: int,
    seed: int,
    *,
    names: tuple[str, str] = ("toxic", "non-toxic"),
) -> tuple[list[str], list[int]]:
    """Equal numbers of toxic and non-toxic texts (seeded), toxic first -> (texts, labels)."""
    out_texts: list[str] = []
    labels: list[int] = []
    rng = random.Random(seed)
    for rows, label, name in ((toxic, 1, names[0]), (nontoxic, 0, names[1])):
        kind = "toxic" if label else "nontoxic"
        texts = [str(r.get("text") or "").strip() for r in rows]
        texts = [t for t in texts if t]
        # Drop exact duplicates so one sentence cannot count twice.
        texts = list(OrderedDict.fromkeys(texts))
        if len(texts) < per_class:
            raise DetoxflowError(
                f"aura: the {kind} set (recipe '{name}') has {len(texts)} distinct non-empty texts, "
                f"fewer than aura.sentences_per_class={per_class}. Lower aura.sentences_per_class or point "
                f"aura.{kind} at a recipe with more rows (offline, the shared Jigsaw sample has only 43 toxic "
                f"rows: use aura.toxic: davidson_offensive and aura.nontoxic: davidson_neither)."
            )
        chosen = rng.sample(texts, per_class)
        out_texts.extend(chosen)
        labels.extend([label] * per_class)
    return out_texts, labels


def save_responses(
    path: str | os.PathLike,
    responses: dict[str, torch.Tensor],
    labels: Sequence[int],
    metadata: dict,
) -> Path:
    """Write one safetensors file: a [N, units] tensor per module plus ``__labels__``."""
    from safetensors.torch import save_file

    tensors = {name: t.contiguous() for name, t in responses.items()}
    tensors[LABELS_KEY] = torch.tensor(list(labels), dtype=torch.int8)
    meta = {"detoxflow": json.dumps(dict(metadata, modules=list(responses)), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DetoxflowError(f"{p}: responses file not found")
    with safe_open(str(p), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "detoxflow" not in meta:
        raise DetoxflowError(f"{p}: not a detoxflow responses file (no metadata)")
    return json.loads(meta["detoxflow"])


def iter_responses(path: str | os.PathLike):
    """Yield (module, [N, units] tensor) one module at a time (memory-light), after the labels."""
    from safetensors import safe_open

    meta = load_metadata(path)
    with safe_open(str(path), framework="pt") as fh:
        for name in meta["modules"]:
            yield name, fh.get_tensor(name)


def load_labels(path: str | os.PathLike) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor(LABELS_KEY)
