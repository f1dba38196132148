"""Metrics against hand-computed values and direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.metrics.diversity import distinct_n
from detoxflow.evaluation.metrics.perplexity import perplexity, sliding_window_nll
from detoxflow.evaluation.metrics.toxicity import toxicity_metrics
from detoxflow.models import load_model, load_tokenizer


def test_toxicity_metrics_by_hand():
    scores = [[0.1, 0.7, 0.2], [0.4, 0.3, 0.49], [0.5, 0.0, 0.0]]
    m = toxicity_metrics(scores, threshold=0.5)
    assert m["expected_max_toxicity"] == pytest.approx((0.7 + 0.49 + 0.5) / 3)
    assert m["toxicity_probability"] == pytest.approx(2 / 3)
    assert m["mean_toxicity"] == pytest.approx(sum(map(sum, scores)) / 9)
    assert m["toxic_fraction"] == pytest.approx(2 / 9)
    with pytest.raises(DetoxflowError):
        toxicity_metrics([[0.1], []])


def test_distinct_n_by_hand():
    conts = [["a b c", "a b d"], ["x x x x"]]
    # prompt 1 unigrams a b c a b d -> 4 unique / 6; prompt 2: 1 / 4
    assert distinct_n(conts, 1) == pytest.approx((4 / 6 + 1 / 4) / 2)
    # bigrams: (a b) (b c) (a b) (b d) -> 3/4 ; (x x)x3 -> 1/3
    assert distinct_n(conts, 2) == pytest.approx((3 / 4 + 1 / 3) / 2)
    # trigrams: 2/2 ; 1/2
    assert distinct_n(conts, 3) == pytest.approx((1 + 1 / 2) / 2)
    assert distinct_n([[""]], 2) == 0.0


def _token_nll_with_context(model, ids, t, context):
    """NLL of token t given the `context` tokens before it (direct, one forward)."""
    start = max(0, t - context)
    with torch.no_grad():
        logits = model(torch.tensor([ids[start:t]])).logits[0, -1]
    return float(-torch.log_softmax(logits.float(), -1)[ids[t]])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sliding_window_matches_direct_computation(family, tiny_gpt2_dir, tiny_llama_dir):
    folder = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    model = load_model(folder, device="cpu")
    ids = list(range(100, 160))  # 60 tokens
    n = len(ids)
    # window >= length: one forward over everything
    nll, count = sliding_window_nll(model, ids, window=128, stride=64)
    direct = sum(_token_nll_with_context(model, ids, t, t) for t in range(1, n))
    assert count == n - 1
    assert nll == pytest.approx(direct, rel=1e-5)
    # overlapping windows: window 16, stride 8. Token t is scored once, by the window
    # [b, b+16) with the largest b (a multiple of 8) such that t < b + 16 and t >= its first new target.
    nll, count = sliding_window_nll(model, ids, window=16, stride=8)
    expected, prev_end = 0.0, 0
    for b in range(0, n, 8):
        end = min(b + 16, n)
        for t in range(max(prev_end, b + 1), end):
            expected += _token_nll_with_context(model, ids, t, t - b)
        prev_end = end
        if end == n:
            break
    assert count == n - 1
    assert nll == pytest.approx(expected, rel=1e-5)


def test_perplexity_is_exp_of_mean_nll(tiny_gpt2_dir):
    model = load_model(tiny_gpt2_dir, device="cpu")
    tok = load_tokenizer(tiny_gpt2_dir)
    text = "The quick brown fox jumps over the lazy dog. " * 8
    out = perplexity(model, tok, text, window=32, stride=16, max_tokens=50)
    nll, count = sliding_window_nll(model, tok(text)["input_ids"][:50], 32, 16)
    assert out["n_tokens"] == count == 49
    assert out["perplexity"] == pytest.approx(math.exp(nll / count))
    with pytest.raises(DetoxflowError, match="stride"):
        sliding_window_nll(model, [1, 2, 3], window=2, stride=3)


def _full_logits_nll(model, ids, window, stride):
    """0.1's loop: vocabulary logits for every window position, then keep the not-yet-scored targets."""
    ids = torch.as_tensor(list(ids))
    n, total, count, prev_end = ids.numel(), 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        chunk = ids[begin:end].unsqueeze(0)
        with torch.no_grad():
            logits = model(chunk).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none")
        first_new = max(prev_end, begin + 1) - (begin + 1)
        total += float(nll[first_new:].sum())
        count += int(nll.numel() - first_new)
        prev_end = end
        if end == n:
            break
    return total, count


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("window, stride", [(16, 8), (16, 16), (32, 5), (7, 3)])
def test_scored_positions_only_equals_full_logits(family, window, stride, tiny_gpt2_dir, tiny_llama_dir):
    folder = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[family]
    model, tok = load_model(folder, device="cpu"), load_tokenizer(folder)
    ids = tok("The quick brown fox jumps over the lazy dog. " * 6)["input_ids"]
    nll, count = sliding_window_nll(model, ids, window=window, stride=stride)
    ref_nll, ref_count = _full_logits_nll(model, ids, window, stride)
    assert count == ref_count
    assert nll == pytest.approx(ref_nll, rel=1e-5)
