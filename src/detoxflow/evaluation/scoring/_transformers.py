"""Batched inference with a Hugging Face sequence classifier (shared by the
detoxify and hf-classifier scorers)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

log = logging.getLogger(__name__)

# tokenizers without a real limit report a huge sentinel as model_max_length
_SANE_MAX_LENGTH = 1_000_000


def prepare_tokenizer(tokenizer, model) -> None:
    """Give a tokenizer without a pad token one (EOS, else UNK) and tell the model."""
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def effective_max_length(tokenizer, requested: int | None, model=None) -> int | None:
    """``requested`` capped by the tokenizer's own limit, or (when the tokenizer
    has no real limit) by the model's number of positions."""
    own = getattr(tokenizer, "model_max_length", None)
    if own is not None and own >= _SANE_MAX_LENGTH:
        own = None
    if own is None and model is not None:
        cfg = model.config
        own = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if requested is None:
        return own
    return min(requested, own) if own is not None else requested


def empty_substitute(tokenizer) -> str | None:
    """A text to score instead of "" when the tokenizer turns "" into zero tokens.

    Tokenizers that add special tokens (BERT, RoBERTa) give "" a non-empty
    input already; plain BPE tokenizers (GPT-2) do not, and a zero-length row
    cannot go through the model. A single space is the closest non-empty text.
    """
    if len(tokenizer("", add_special_tokens=True)["input_ids"]) > 0:
        return None
    return " "


@torch.no_grad()
def classify_logits(model, tokenizer, texts: Sequence[str], *, max_length: int | None,
                    device: torch.device, empty_as: str | None = None) -> torch.Tensor:
    """Logits (float32, CPU) of shape [len(texts), num_labels]."""
    batch = [empty_as if (empty_as is not None and t == "") else t for t in texts]
    enc = tokenizer(
        batch,
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_tensors="pt",
    )
    enc = {k: v.to(device) for k, v in enc.items()}
    logits = model(**enc).logits
    return logits.float().cpu()
