"""Batched text generation that returns only the continuation.

Prompts are left-padded; ``generate`` derives position ids from the attention
mask (GPT-2 and Llama families), so a padded batch continues exactly like the
prompt alone. Only the generated token ids are decoded, special tokens dropped.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from .runtime import input_device, seed_everything
from .sampling import NucleusFilter


@torch.no_grad()
def generate_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    top_p: float = 1.0,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 16,
    seed: int | None = None,
    max_prompt_tokens: int | None = None,
    desc: str = "generating",
) -> list[list[str]]:
    """Return, for every prompt, ``num_return_sequences`` decoded continuations.

    ``batch_size`` counts sequences (prompts x return sequences) per forward.
    With ``seed`` the sampled continuations are reproducible for the same
    batch size.
    """
    if seed is not None:
        seed_everything(seed)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    device = input_device(model)
    per_batch = max(1, batch_size // num_return_sequences)
    results: list[list[str]] = []
    if do_sample:  # temperature and top-p in one processor that avoids sorting the vocabulary (sampling.py)
        sample_kwargs = {"do_sample": True, "top_p": 1.0, "temperature": 1.0, "top_k": 0,
                         "logits_processor": LogitsProcessorList([NucleusFilter(top_p, temperature)])}
    else:
        sample_kwargs = {"do_sample": False}
    for start in tqdm(range(0, len(prompts), per_batch), desc=desc, unit="batch"):
        chunk = list(prompts[start:start + per_batch])
        enc = tokenizer(
            chunk,
            return_tensors="pt",
            padding=True,
            truncation=max_prompt_tokens is not None,
            max_length=max_prompt_tokens,
        ).to(device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            **sample_kwargs,
        )
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i in range(len(chunk)):
            results.append(texts[i * num_return_sequences:(i + 1) * num_return_sequences])
    return results
