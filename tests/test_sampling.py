"""The nucleus filter keeps exactly the tokens Transformers' temperature + top-p warpers keep."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from detoxflow.models import load_model, load_tokenizer
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


def test_inverse_cdf_draw_picks_the_token_whose_interval_holds_u():
    from detoxflow.generation import _draw

    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3]] * 6)
    u = torch.tensor([0.0, 0.1999, 0.2001, 0.69, 0.71, 0.99999])
    assert _draw(probs, u).tolist() == [1, 1, 3, 3, 4, 4]
    # unnormalised rows (masked tokens at 0) are scaled by their total
    assert _draw(probs * 3, u).tolist() == [1, 1, 3, 3, 4, 4]


PEAK = [11, 22, 33, 44, 55, 66, 77, 88, 99, 111, 222, 333]


def _peaked(model):
    """Bias the vocabulary projection so the next token lies among a dozen tokens (a checkable distribution)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[PEAK] = torch.linspace(14.0, 11.0, len(PEAK))
    return model.lm_head.register_forward_hook(lambda m, i, o: o + bias)


def test_first_tokens_follow_the_nucleus_filtered_softmax(tiny_gpt2_dir):
    """Empirical first-token frequencies over 4,000 draws vs the exact top-p / temperature distribution."""
    from detoxflow.generation import generate_token_ids

    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    prompt, top_p, temperature = "The weather in London is", 0.8, 0.9
    handle = _peaked(model)
    try:
        with torch.no_grad():  # exact: Transformers' own warpers on the model's last-position logits
            logits = model(**tok(prompt, return_tensors="pt")).logits[:, -1].double()
        exact = reference_probs(logits, top_p, temperature)[0]
        # 10 copies of the prompt: 10 independent streams (seed + prompt index) of 400 samples
        got = generate_token_ids(model, tok, [prompt] * 10, max_new_tokens=1, do_sample=True, top_p=top_p,
                                 temperature=temperature, num_return_sequences=400, seed=123, batch_tokens=500,
                                 progress=False)
    finally:
        handle.remove()
    draws = torch.tensor([s[0] for samples in got.ids for s in samples])
    n = len(draws)
    counts = torch.bincount(draws, minlength=exact.numel()).double()
    assert (counts[exact == 0] == 0).all()  # never a token outside the nucleus
    support = exact > 0
    assert 2 <= int(support.sum()) <= len(PEAK)
    freq = counts / n
    tv = 0.5 * (freq - exact).abs().sum().item()
    chi2 = (((counts - n * exact) ** 2)[support] / (n * exact[support])).sum().item()
    df = int(support.sum()) - 1
    assert tv < 0.04, tv
    assert chi2 < df + 5 * (2 * df) ** 0.5, (chi2, df)  # ~ the 0.999 quantile for these df


def reference_probs(logits, top_p, temperature):
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    return TopPLogitsWarper(top_p)(None, scores).softmax(dim=-1)


def test_samples_do_not_depend_on_the_batching(tiny_gpt2_dir):
    from detoxflow.generation import generate_token_ids

    model, tok = load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir)
    prompts = ["Hello there", "The weather in London is", "A", "One two three four five six seven"]
    kw = dict(max_new_tokens=8, do_sample=True, top_p=0.9, temperature=1.0, num_return_sequences=3, seed=5,
              progress=False)
    handle = _peaked(model)
    try:
        runs = [generate_token_ids(model, tok, prompts, batch_tokens=b, **kw).ids for b in (1, 80, 10**6)]
        other_seed = generate_token_ids(model, tok, prompts, batch_tokens=10**6, **{**kw, "seed": 6}).ids
    finally:
        handle.remove()
    assert runs[0] == runs[1] == runs[2]
    assert runs[0] != other_seed
    # a prompt's stream is seed + its index: prompt 2 of the first call is prompt 0 of seed 7
    kw7 = {**kw, "seed": 7}
    handle = _peaked(model)
    try:
        shifted = generate_token_ids(model, tok, prompts[2:], batch_tokens=10**6, **kw7).ids
    finally:
        handle.remove()
    assert shifted == runs[0][2:]
    assert len({tuple(s) for s in runs[0][1]}) > 1  # the k samples of a prompt differ
