"""Record pooled module outputs ("responses") of a model over labelled sentences.

For every selected module the output of each sentence is pooled over its
tokens (max, or mean) with padding masked out, straight into one preallocated
``[sentences x units]`` tensor per module, in the model's dtype. The result is
one safetensors file: one tensor per module plus ``labels`` (1 = toxic), not a
file per sentence.

The recording is the shared :mod:`detoxflow.activations` (batched by length,
pooled inside the forward hook, the forward pass stopped once every selected
module has fired), also used by AcT and the steering methods.
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

from ...activations import pool, record_pooled, tokenize  # noqa: F401  (pool, tokenize: re-exported)
from ...errors import DetoxflowError
from ...io import atomic_path
from .modules import output_units

log = logging.getLogger(__name__)

POOLINGS = ("max", "mean")  # AurA poolings (activations.record_pooled also has "last")
LABELS_KEY = "__labels__"


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

    The recording itself is :func:`detoxflow.activations.record_pooled` (shared with AcT and the
    steering methods); tensors are in the dtype of each module's output (the model's dtype).
    """
    if pooling not in POOLINGS:
        raise DetoxflowError(f"aura.pooling: unknown pooling '{pooling}' (use {' or '.join(POOLINGS)})")
    for mod in modules.values():
        output_units(mod)  # a Linear / Conv1D (checked again when folding)
    return record_pooled(
        model, tokenizer, texts, modules, pooling=pooling, batch_size=batch_size, max_tokens=max_tokens,
        pool_special_tokens=pool_special_tokens, capture="output", desc=desc,
    )


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
