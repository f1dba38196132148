"""ITI-c and ActAdd: directions against independent computations, folded == hooked."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch

from detoxflow.activations import record_pooled
from detoxflow.methods.steering.actadd import steering_vector
from detoxflow.methods.steering.iti import head_directions, head_shifts, probe_accuracy, select_heads
from detoxflow.methods.steering.pipeline import fold_steering
from detoxflow.models import load_model, load_tokenizer

TOXIC = ["you are a stupid idiot", "shut up you moron", "what a dumb loser", "I hate you all, jerks",
         "go away, you fool", "nobody likes you, idiot"]
CLEAN = ["the weather is nice today", "I like reading books", "we went to the park", "thanks for the help",
         "the meeting starts at noon", "she planted tomatoes"]


def test_head_directions_match_numpy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, 12, generator=g)
    labels = torch.tensor([1] * 10 + [0] * 10)
    z[:10, :4] += 2.0  # head 0 separates the classes
    d = head_directions(z, labels, n_heads=3, seed=0)
    x = z.double().numpy().reshape(20, 3, 4)
    for h in range(3):
        shift = x[10:, h].mean(0) - x[:10, h].mean(0)
        u = shift / np.linalg.norm(shift)
        assert np.allclose(d["direction"][h].numpy(), u)
        assert d["sigma"][h].item() == pytest.approx(np.std(x[:, h] @ u, ddof=1))
    assert d["accuracy"][0] == 1.0
    assert d["separation"][0].item() == pytest.approx(np.linalg.norm(x[10:, 0].mean(0) - x[:10, 0].mean(0))
                                                      / np.std(x[:, 0] @ (x[10:, 0].mean(0) - x[:10, 0].mean(0))
                                                               / np.linalg.norm(x[10:, 0].mean(0) - x[:10, 0].mean(0)),
                                                               ddof=1))
    assert select_heads({"a": d}, 1) == [("a", 0)]
    # equal accuracies: the larger separation wins
    tie = {"accuracy": torch.tensor([1.0, 1.0]), "separation": torch.tensor([0.5, 2.0])}
    assert select_heads({"l0": tie}, 1) == [("l0", 1)]
    shifts = head_shifts({"a": d}, [("a", 0)], 2.0)
    assert torch.allclose(shifts["a"][:4], 2.0 * d["sigma"][0] * d["direction"][0]) and not shifts["a"][4:].any()


def test_probe_accuracy_separable_and_not():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g)
    y = (x[:, 0] > 0).long()
    assert probe_accuracy(x, y, seed=0) >= 0.9
    assert probe_accuracy(torch.randn(50, 3, generator=g), torch.tensor([0, 1] * 25), seed=0) < 0.9


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_actadd_vector_is_residual_difference(request, family):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    model = load_model(folder, device="cpu")
    tok = load_tokenizer(folder, padding_side="right")
    vec = steering_vector(model, tok, "Love", "Hate", 0)
    with torch.no_grad():
        hs = [model(**tok(p, return_tensors="pt"), output_hidden_states=True).hidden_states[1][0, -1]
              for p in ("Love", "Hate")]
    assert torch.allclose(vec.float(), hs[0] - hs[1], atol=1e-6)
    # folded: the residual stream after block 0 moved by 3 * vec at every position
    folded = copy.deepcopy(model)
    fold_steering(folded, {"vector": vec}, {"method": "actadd", "layer": 0, "positive": "Love",
                                            "negative": "Hate"}, 3.0, {})
    enc = tok(TOXIC[:2], return_tensors="pt", padding=True)
    block = model.get_submodule("transformer.h.0" if family == "gpt2" else "model.layers.0")

    def post(_m, _i, out):
        return (out[0] + 3.0 * vec.float(),) + tuple(out[1:]) if isinstance(out, tuple) else out + 3.0 * vec.float()

    h = block.register_forward_hook(post)
    with torch.no_grad():
        hooked = model(**enc).logits
    h.remove()
    with torch.no_grad():
        got = folded(**enc).logits
    assert torch.allclose(got, hooked, atol=1e-5)


def test_iti_fold_equals_hooked_heads(tiny_llama_dir):
    model = load_model(tiny_llama_dir, device="cpu")
    tok = load_tokenizer(tiny_llama_dir, padding_side="right")
    names = [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]
    acts, _ = record_pooled(model, tok, TOXIC + CLEAN, OrderedDict((n, model.get_submodule(n)) for n in names),
                            pooling="mean", capture="input")
    labels = torch.tensor([1] * 6 + [0] * 6)
    tensors, per_layer = {}, {}
    for i, n in enumerate(names):
        per_layer[n] = head_directions(acts[n], labels, 4, seed=i)
        tensors.update({f"{n}::{k}": v for k, v in per_layer[n].items()})
    meta = {"method": "iti_c", "modules": names, "n_sentences": 12}
    folded = copy.deepcopy(model)
    params = fold_steering(folded, tensors, meta, 4.0, {"iti_c": {"top_k": 3}})
    assert params["top_k"] == 3
    shifts = head_shifts(per_layer, select_heads(per_layer, 3), 4.0)
    assert sum(int((v != 0).any()) for v in shifts.values()) >= 1
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, inp, v=v: (inp[0] + v.float(),) + tuple(inp[1:])) for n, v in shifts.items()]
    enc = tok(CLEAN[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        hooked = model(**enc).logits
        for h in handles:
            h.remove()
        base = model(**enc).logits
        got = folded(**enc).logits
    assert torch.allclose(got, hooked, atol=1e-5) and not torch.allclose(got, base, atol=1e-3)
    assert folded.config.attention_bias is True
