"""The nucleus filter keeps exactly the tokens Transformers' temperature + top-p warpers keep."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from detoxflow.generation import generate_continuations
from detoxflow.models import load_model, load_tokenizer
from detoxflow.runtime import seed_everything
from detoxflow.sampling import NucleusFilter


def reference_kept(scores, top_p, temperature):
    out = TemperatureLogitsWarper(temperature)(None, scores.clone()) if temperature != 1.0 else scores.clone()
    return torch.isfinite(TopPLogitsWarper(top_p)(None, out))


@pytest.mark.parametrize("spread, candidates", [(4.0, 1024), (4.0, 8), (0.05, 64)])
@pytest.mark.parametrize("top_p, temperature", [(0.9, 1.0), (0.5, 0.7), (0.95, 1.3), (1.0, 0.8)])
def test_kept_tokens_equal_transformers(spread, candidates, top_p, temperature):
    # spread 4: peaked rows (nucleus within the candidates); spread 0.05: near-flat rows over 5,000 tokens,
    # and candidates 8: both force the full-sort fallback for (some) rows
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(16, 5000, generator=g, dtype=torch.float64) * spread
    ours = NucleusFilter(top_p, temperature, candidates=candidates)(None, scores.clone())
    kept = torch.isfinite(ours)
    assert torch.equal(kept, reference_kept(scores, top_p, temperature))
    assert kept.sum(dim=-1).min() >= 1
    # kept logits are the temperature-scaled ones
    assert torch.allclose(ours[kept], (scores / temperature)[kept])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        NucleusFilter(0.0)
    with pytest.raises(ValueError, match="temperature"):
        NucleusFilter(0.9, temperature=0)


def test_sampled_continuations_equal_transformers_top_p(tiny_gpt2_dir):
    """Same seed, same batch: generate with Transformers' own warpers gives the same text."""
    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    prompts = ["Hello there", "The weather in London is"]
    ours = generate_continuations(model, tok, prompts, max_new_tokens=8, do_sample=True, top_p=0.8,
                                  temperature=0.7, num_return_sequences=3, batch_size=6, seed=5)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    seed_everything(5)
    out = model.generate(**enc, max_new_tokens=8, do_sample=True, top_p=0.8, temperature=0.7, top_k=0,
                         num_return_sequences=3, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert ours == [texts[0:3], texts[3:6]]
