"""Perplexity = exp(token-mean NLL) over a long text with a sliding window.

Each token (but the first) is predicted exactly once: a window of ``window``
tokens moves by ``stride``; only the targets not scored by the previous window
count, each with up to ``window - stride`` tokens of left context from the
overlap. (The seed code averaged per-window exp(loss); this is the standard.)
The vocabulary projection and the cross-entropy are computed only for the scored
positions of each window (``logits_to_keep``), not for the overlap context.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ...errors import DetoxflowError
from ...runtime import input_device


def model_max_positions(model) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.inference_mode()
def sliding_window_nll(model, input_ids: Sequence[int], window: int, stride: int) -> tuple[float, int]:
    """Sum of token NLLs (nats) and number of predicted tokens over ``input_ids``."""
    if stride > window:
        raise DetoxflowError(f"perplexity stride ({stride}) must not exceed the window ({window})")
    ids = torch.as_tensor(list(input_ids), dtype=torch.long)
    n = ids.numel()
    if n < 2:
        raise DetoxflowError("perplexity needs a text of at least 2 tokens")
    device = input_device(model)
    import inspect

    keep_ok = "logits_to_keep" in inspect.signature(model.forward).parameters
    total_nll, total_tokens, prev_end = 0.0, 0, 0
    starts = list(range(0, n, stride))
    for begin in tqdm(starts, desc="perplexity", unit="window"):
        end = min(begin + window, n)
        chunk = ids[begin:end].unsqueeze(0).to(device)
        m = end - begin
        # logits at chunk position j predict token begin+j+1; score j in [first_new, m - 1) (not yet scored)
        first_new = max(prev_end, begin + 1) - (begin + 1)
        if keep_ok:  # the last m - first_new positions: the scored ones and the last (which predicts nothing)
            logits = model(chunk, logits_to_keep=m - first_new).logits[0, :-1].float()
        else:
            logits = model(chunk).logits[0, first_new:-1].float()
        targets = chunk[0, first_new + 1:]
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        total_nll += float(nll)
        total_tokens += int(targets.numel())
        prev_end = end
        if end == n:
            break
    return total_nll, total_tokens


def perplexity(model, tokenizer, text: str, *, window: int, stride: int, max_tokens: int | None = None) -> dict:
    """Perplexity of ``model`` on ``text``; the window is capped at the model's context length."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    limit = model_max_positions(model)
    if limit is not None and window > limit:
        window = limit
        stride = min(stride, window)
    nll, count = sliding_window_nll(model, ids, window, stride)
    mean = nll / count
    return {"perplexity": math.exp(mean), "nll": mean, "n_tokens": count, "window": window, "stride": stride}
