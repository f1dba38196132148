"""Batched, left-padded generation equals generating each prompt alone."""

from __future__ import annotations

import pytest
import torch

from detoxflow.generation import generate_continuations
from detoxflow.models import load_model, load_tokenizer

PROMPTS = [
    "Hello",
    "The weather today in the city of London is",
    "I think that",
    "One two three four five six seven eight nine ten eleven twelve",
]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_greedy_equals_unbatched(family, tiny_gpt2_dir, tiny_llama_dir):
    folder = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    model = load_model(folder, device="cpu")
    tok = load_tokenizer(folder)
    batched = generate_continuations(model, tok, PROMPTS, max_new_tokens=12, batch_size=4)
    single = [generate_continuations(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    # and the continuation is exactly the new tokens, decoded: compare with a manual greedy loop
    for prompt, (cont,) in zip(PROMPTS, batched):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            for _ in range(12):
                nxt = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        new = ids[0, len(tok(prompt)["input_ids"]):]
        assert cont == tok.decode(new, skip_special_tokens=True)


def test_sampling_is_seeded_and_returns_k(tiny_gpt2_dir):
    model = load_model(tiny_gpt2_dir, device="cpu")
    tok = load_tokenizer(tiny_gpt2_dir)
    kw = dict(max_new_tokens=6, do_sample=True, top_p=0.9, temperature=1.0, num_return_sequences=3, batch_size=6)
    a = generate_continuations(model, tok, PROMPTS[:2], seed=1, **kw)
    b = generate_continuations(model, tok, PROMPTS[:2], seed=1, **kw)
    c = generate_continuations(model, tok, PROMPTS[:2], seed=2, **kw)
    assert a == b and a != c
    assert [len(x) for x in a] == [3, 3]


def test_special_tokens_are_dropped(tiny_gpt2_dir):
    model = load_model(tiny_gpt2_dir, device="cpu")
    tok = load_tokenizer(tiny_gpt2_dir)
    # force the model to emit EOS first: bias the output towards the EOS id
    with torch.no_grad():
        model.lm_head.weight.data.zero_()
        model.transformer.wte.weight.data[tok.eos_token_id] += 0  # tied: keep shape
    bias_hook = model.lm_head.register_forward_hook(
        lambda m, i, o: o + torch.nn.functional.one_hot(torch.tensor(tok.eos_token_id), o.shape[-1]) * 100
    )
    try:
        out = generate_continuations(model, tok, ["Hello there"], max_new_tokens=5)
    finally:
        bias_hook.remove()
    assert out == [[""]]
    assert "<|endoftext|>" not in out[0][0]
