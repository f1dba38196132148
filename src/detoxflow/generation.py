"""Batched text generation that returns only the continuation.

The engine (:func:`generate_token_ids`) prefills every prompt ONCE and samples
its ``k`` continuations from copies of the prompt's key/value cache:

* prompts are tokenized once, cut from the LEFT when prompt + ``max_new_tokens``
  would not fit the model's context (the SafeEdit reference cuts from the left
  too), sorted by length and grouped into batches by a token budget
  (``batch_tokens`` >= prompts x (longest prompt + k x max_new_tokens)), then put
  back in the caller's order;
* a batch is left-padded; position ids come from the attention mask, so a padded
  prompt continues exactly like the prompt alone;
* the prefill asks the model for the logits of the last position only
  (``logits_to_keep=1``: the vocabulary projection is not computed for the other
  prompt tokens); the first tokens of the k samples are drawn from those logits,
  then the cache (:class:`transformers.DynamicCache`) is repeated k times
  (``batch_repeat_interleave``) and decoding goes on one token per step;
* a sequence that emitted EOS gets the pad token from then on; decoding stops
  once every sequence has finished;
* sampling applies temperature + top-p with :class:`detoxflow.sampling.NucleusFilter`
  (Transformers' kept set) and draws by inverse CDF from uniforms of the prompt's
  own ``torch.Generator`` (seeded ``seed + prompt index``), so a prompt's samples
  do not depend on which other prompts share its batch or on the batch budget.

Only the generated token ids are decoded, special tokens dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .errors import DetoxflowError
from .runtime import input_device, seed_everything
from .sampling import NucleusFilter

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 8192


def context_length(model) -> int | None:
    """The number of positions the model can attend to (None when its config does not say)."""
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids(model, tokenizer) -> list[int]:
    """The token ids that end a sequence (the generation config's, else the tokenizer's EOS)."""
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


@dataclass
class Generated:
    """Token ids of the continuations, per prompt (in the caller's order) and per sample; a sequence that
    finished ends with its EOS token."""

    ids: list[list[list[int]]]
    truncated: int = 0  # prompts cut from the left to fit the context
    truncated_tokens: list[int] = field(default_factory=list)  # tokens cut, per prompt


def _prompt_token_ids(tokenizer, prompts: Sequence[str], *, limit: int | None, fallback: int) -> tuple[list[list[int]], list[int]]:
    enc = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    ids, cut = [], []
    for row in enc:
        row = list(row) or [fallback]  # an empty prompt continues from BOS (or EOS)
        drop = max(0, len(row) - limit) if limit is not None else 0
        ids.append(row[drop:])
        cut.append(drop)
    return ids, cut


def plan_batches(lengths: Sequence[int], *, k: int, max_new_tokens: int, batch_tokens: int,
                 batch_size: int | None = None) -> list[list[int]]:
    """Group prompt indices into batches, longest first.

    A batch of ``n`` prompts whose longest has ``L`` tokens costs ``n * (L + k * max_new_tokens)``
    tokens; a batch is filled while that stays within ``batch_tokens`` (and, when given, ``n * k`` within
    ``batch_size`` sequences). A prompt that alone exceeds the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        cost = (len(current) + 1) * (new_longest + k * max_new_tokens)
        too_many = batch_size is not None and (len(current) + 1) * k > batch_size
        if current and (cost > batch_tokens or too_many):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def _draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: for each row, the first token whose cumulative probability exceeds u x total."""
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    picks = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return picks.clamp_(max=probs.shape[-1] - 1)


class _Chooser:
    """Next tokens from last-position logits: greedy argmax, or temperature + top-p inverse-CDF sampling."""

    def __init__(self, do_sample: bool, top_p: float, temperature: float):
        self.do_sample = do_sample
        self.filter = NucleusFilter(top_p, temperature) if do_sample else None

    def __call__(self, logits: torch.Tensor, uniforms: torch.Tensor | None) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(dim=-1)
        scores = self.filter(None, logits.float())
        probs = scores.softmax(dim=-1)
        return _draw(probs, uniforms)


def _cache_keyword(model) -> str:
    """``cache`` (Transformers 5.x) or ``past_key_values`` (older models' forward)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def _generate_batch(model, prompt_ids: list[list[int]], seeds: list[int] | None, *, k: int, max_new_tokens: int,
                    chooser: _Chooser, pad_id: int, eos: list[int], device) -> list[list[list[int]]]:
    from transformers import DynamicCache

    n = len(prompt_ids)
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    uniforms = None
    if seeds is not None:  # every prompt's own stream: (k, max_new_tokens) uniforms, whatever the batch
        uniforms = torch.stack([torch.rand(k, max_new_tokens, generator=torch.Generator().manual_seed(s),
                                           dtype=torch.float64) for s in seeds]).view(n * k, max_new_tokens)
        uniforms = uniforms.to(device)
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=-1) - 1).clamp_(min=0)
    cache = DynamicCache(config=model.config)  # filled in place by every forward
    cache_kw = _cache_keyword(model)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **{cache_kw: cache})
    last = out.logits[:, -1, :].repeat_interleave(k, dim=0)  # the k samples share the prompt's logits
    if k > 1:
        cache.batch_repeat_interleave(k)
        mask = mask.repeat_interleave(k, dim=0)
    next_pos = positions[:, -1].repeat_interleave(k, dim=0) + 1
    rows = n * k
    eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    steps = torch.empty((rows, max_new_tokens), dtype=torch.long, device=device)
    produced = 0
    for t in range(max_new_tokens):
        token = chooser(last, uniforms[:, t] if uniforms is not None else None)
        token = token.masked_fill(finished, pad_id)
        steps[:, t] = token
        produced = t + 1
        if eos_t is not None:
            finished |= torch.isin(token, eos_t)
            if bool(finished.all()):
                break
        if t + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        out = model(input_ids=token.unsqueeze(-1), attention_mask=mask, position_ids=next_pos.unsqueeze(-1),
                    use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        last = out.logits[:, -1, :]
        next_pos = next_pos + 1
    got = steps[:, :produced].cpu().tolist()
    if eos:  # a finished sequence ends with its EOS (the pad tokens after it are dropped)
        ends = set(eos)
        got = [row[:next((j + 1 for j, x in enumerate(row) if x in ends), len(row))] for row in got]
    return [got[i * k:(i + 1) * k] for i in range(n)]


def generate_token_ids(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    top_p: float = 1.0,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    batch_size: int | None = None,
    seed: int | None = None,
    max_prompt_tokens: int | None = None,
    desc: str = "generating",
    progress: bool = True,
) -> Generated:
    """The engine: generated token ids (pad after EOS kept) for every prompt and sample; see the module doc."""
    if max_new_tokens < 1:
        raise DetoxflowError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_tokens < 1:
        raise DetoxflowError(f"batch_tokens must be >= 1, got {batch_tokens}")
    k = int(num_return_sequences)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    context = context_length(model)
    limit = max_prompt_tokens
    if context is not None:
        if max_new_tokens >= context:
            raise DetoxflowError(
                f"max_new_tokens = {max_new_tokens} leaves no room for the prompt: the model attends to at most "
                f"{context} positions (config {type(model.config).__name__}); lower the generation's max_new_tokens "
                f"(evaluation.generation.max_new_tokens or safeedit.generation.max_new_tokens) below {context}")
        limit = context - max_new_tokens if limit is None else min(limit, context - max_new_tokens)
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad_id
    ids, cut = _prompt_token_ids(tokenizer, prompts, limit=limit, fallback=fallback)
    truncated = sum(1 for c in cut if c)
    if truncated:
        log.warning("%s: %d of %d prompts cut from the left to fit %s prompt tokens (context %s - %d new tokens)",
                    desc, truncated, len(ids), limit, context, max_new_tokens)
    chooser = _Chooser(do_sample, top_p, temperature)
    if do_sample and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    if seed is not None:
        seed_everything(seed)
    device = input_device(model)
    eos = eos_ids(model, tokenizer)
    batches = plan_batches([len(x) for x in ids], k=k, max_new_tokens=max_new_tokens, batch_tokens=batch_tokens,
                           batch_size=batch_size)
    results: list[list[list[int]] | None] = [None] * len(ids)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        seeds = [seed + i for i in batch] if do_sample else None
        got = _generate_batch(model, [ids[i] for i in batch], seeds, k=k, max_new_tokens=max_new_tokens,
                              chooser=chooser, pad_id=pad_id, eos=eos, device=device)
        for i, samples in zip(batch, got):
            results[i] = samples
    return Generated(ids=results, truncated=truncated, truncated_tokens=cut)  # type: ignore[arg-type]


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
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    batch_size: int | None = None,
    seed: int | None = None,
    max_prompt_tokens: int | None = None,
    desc: str = "generating",
    stats: dict | None = None,
) -> list[list[str]]:
    """Return, for every prompt, ``num_return_sequences`` decoded continuations.

    ``batch_tokens`` is the token budget of a batch (prompts x (longest prompt + k x max_new_tokens));
    ``batch_size``, when given, also caps the sequences (prompts x k) of a batch. With ``seed`` the sampled
    continuations are reproducible, whatever the batching. ``stats``, when given, receives
    ``truncated`` (prompts cut from the left to fit the context) and ``truncated_tokens`` (per prompt).
    """
    got = generate_token_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             top_p=top_p, temperature=temperature, num_return_sequences=num_return_sequences,
                             batch_tokens=batch_tokens, batch_size=batch_size, seed=seed,
                             max_prompt_tokens=max_prompt_tokens, desc=desc)
    if stats is not None:
        stats.update(truncated=got.truncated, truncated_tokens=got.truncated_tokens)
    flat = [sample for samples in got.ids for sample in samples]
    texts = tokenizer.batch_decode(flat, skip_special_tokens=True) if flat else []
    k = int(num_return_sequences)
    return [texts[i * k:(i + 1) * k] for i in range(len(got.ids))]
