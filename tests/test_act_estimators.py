"""Linear-AcT / Mean-AcT estimators against an independent re-derivation of apple/ml-act's formulas."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from detoxflow.activations import record_pooled
from detoxflow.errors import DetoxflowError
from detoxflow.methods.act.estimators import (
    TransportMap, apply_map, estimate, linear_act, mean_act, quantile_bounds, with_strength,
)
from detoxflow.methods.act.incremental import estimate_maps, load_maps, save_maps
from detoxflow.methods.act.points import select_points
from detoxflow.models import load_model, load_tokenizer

TOXIC = ["you are a stupid idiot", "shut up you moron", "what a dumb loser", "I hate you all, jerks",
         "go away, you fool", "nobody likes you, idiot"]
CLEAN = ["the weather is nice today", "I like reading books", "we went to the park", "thanks for the help",
         "the meeting starts at noon", "she planted tomatoes"]


def _recorded(tiny_gpt2_dir):
    """Real recorded activations: mean-pooled ln_2 outputs of a tiny GPT-2 over the sentences above."""
    model = load_model(tiny_gpt2_dir, device="cpu")
    tok = load_tokenizer(tiny_gpt2_dir, padding_side="right")
    mods = OrderedDict([("transformer.h.1.ln_2", model.get_submodule("transformer.h.1.ln_2"))])
    acts, _ = record_pooled(model, tok, TOXIC + CLEAN, mods, pooling="mean", batch_size=4)
    z = acts["transformer.h.1.ln_2"]
    return z[: len(TOXIC)], z[len(TOXIC):]


def test_linear_act_is_least_squares_through_sorted_pairs(tiny_gpt2_dir):
    src, dst = _recorded(tiny_gpt2_dir)
    beta, alpha = linear_act(src, dst)
    x, y = src.double().numpy(), dst.double().numpy()
    for j in range(x.shape[1]):
        slope, intercept = np.polyfit(np.sort(x[:, j]), np.sort(y[:, j]), 1)
        assert beta[j].item() == pytest.approx(slope, rel=1e-6, abs=1e-8)
        assert alpha[j].item() == pytest.approx(intercept, rel=1e-6, abs=1e-8)


def test_linear_act_degenerate_unit_and_sizes():
    src = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    dst = torch.tensor([[3.0, 5.0], [4.0, 7.0], [5.0, 9.0]])
    beta, alpha = linear_act(src, dst)
    assert beta.tolist() == [1.0, 2.0] and alpha.tolist() == [3.0, 5.0]  # constant unit: the mean shift
    with pytest.raises(DetoxflowError, match="as many toxic as non-toxic"):
        linear_act(src, dst[:2])


def test_mean_act_and_std_mask(tiny_gpt2_dir):
    src, dst = _recorded(tiny_gpt2_dir)
    src = src.clone()
    src[:, 0] = 0.5  # no spread: ml-act's mask leaves the unit alone
    beta, alpha = mean_act(src, dst, std_eps=1e-4)
    x, y = src.double().numpy(), dst.double().numpy()
    keep = (x.std(0, ddof=1) > 1e-4) & (y.std(0, ddof=1) > 1e-4)
    want = np.where(keep, y.mean(0) - x.mean(0), 0.0)
    assert np.allclose(alpha.numpy(), want, rtol=1e-9, atol=1e-12)
    assert alpha[0] == 0 and bool((beta == 1).all())


def test_quantiles_strength_and_clipping(tiny_gpt2_dir):
    src, dst = _recorded(tiny_gpt2_dir)
    lo, hi = quantile_bounds(src, (0, 100))
    assert torch.equal(lo, src.double().min(0).values) and torch.equal(hi, src.double().max(0).values)
    lo5, hi95 = quantile_bounds(src, (5, 95))
    assert np.allclose(lo5.numpy(), np.percentile(src.double().numpy(), 5, axis=0))
    assert np.allclose(hi95.numpy(), np.percentile(src.double().numpy(), 95, axis=0))
    tmap = estimate("linear_act", src, dst, quantiles=(0, 100))
    z = torch.cat([src, src * 3.0])  # the sorted extremes themselves and far outside the support
    s = 0.7
    got = apply_map(z, tmap, s).numpy()
    b, a = tmap.beta.numpy(), tmap.alpha.numpy()
    zz = z.numpy()
    inside = (tmap.lo.numpy() < zz) & (zz < tmap.hi.numpy())  # strict, as the reference
    want = np.where(inside, s * (b * zz + a) + (1 - s) * zz, zz)
    assert np.allclose(got, want, atol=1e-6)
    assert not inside.all() and inside.any()
    scale, shift = with_strength(tmap, s)
    assert np.allclose(scale.numpy(), 1 + s * (b - 1)) and np.allclose(shift.numpy(), s * a)
    assert torch.allclose(apply_map(z, tmap, 1.0, clip=False), z * tmap.beta + tmap.alpha, atol=1e-6)


def test_incremental_conditions_on_earlier_maps(tiny_gpt2_dir, tmp_path):
    model = load_model(tiny_gpt2_dir, device="cpu")
    tok = load_tokenizer(tiny_gpt2_dir, padding_side="right")
    points = select_points(model, ["transformer.h.0.ln_2", "transformer.h.1.ln_1"])
    texts, labels = TOXIC + CLEAN, [1] * len(TOXIC) + [0] * len(CLEAN)
    settings = dict(pooling="mean", batch_size=4, max_tokens=32, pool_special_tokens=True, quantiles=(0, 100),
                    std_eps=1e-4, incremental=True)
    incr, cost = estimate_maps(model, tok, texts, labels, points, "linear_act", settings)
    atonce, cost1 = estimate_maps(model, tok, texts, labels, points, "linear_act", dict(settings, incremental=False))
    assert cost["passes"] == 2 and cost1["passes"] == 1
    first = "transformer.h.0.ln_2"
    assert torch.equal(incr[first].beta, atonce[first].beta)
    # the second map, re-derived: record h.1.ln_1 with the first map applied by a hand-written hook
    m0 = incr[first]

    def by_hand(_m, _i, out):
        moved = out * m0.beta + m0.alpha
        return torch.where((m0.lo < out) & (out < m0.hi), moved, out)

    h = model.get_submodule(first).register_forward_hook(by_hand)
    try:
        acts, _ = record_pooled(model, tok, texts, OrderedDict([("transformer.h.1.ln_1",
                                model.get_submodule("transformer.h.1.ln_1"))]), pooling="mean", batch_size=4,
                                max_tokens=32, pool_special_tokens=True)
    finally:
        h.remove()
    z = acts["transformer.h.1.ln_1"].double().numpy()
    j = 3
    slope, _ = np.polyfit(np.sort(z[:6, j]), np.sort(z[6:, j]), 1)
    assert incr["transformer.h.1.ln_1"].beta[j].item() == pytest.approx(slope, rel=1e-5)
    assert not torch.equal(incr["transformer.h.1.ln_1"].beta, atonce["transformer.h.1.ln_1"].beta)
    # maps round-trip through their file
    save_maps(tmp_path / "m.safetensors", incr, {"n_units": 1})
    back, meta = load_maps(tmp_path / "m.safetensors")
    assert list(back) == list(incr) and torch.equal(back[first].hi, incr[first].hi)


def test_execution_order_not_registration_order(tiny_llama_dir):
    model = load_model(tiny_llama_dir, device="cpu")
    names = list(select_points(model, "llama_norms")) + list(select_points(model, "llama"))
    order = list(select_points(model, ["model.layers.0.mlp.down_proj", "model.layers.0.input_layernorm",
                                       "model.layers.0.post_attention_layernorm", "model.layers.0.mlp.up_proj"]))
    assert order == ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
                     "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    assert len(names) == 2 * 2 + 3 * 2
    assert isinstance(TransportMap(beta=torch.ones(1), alpha=torch.zeros(1)), TransportMap)
