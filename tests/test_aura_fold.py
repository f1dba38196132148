"""Folding AurA multipliers into the weights gives the same model as applying them with hooks."""

from __future__ import annotations

import copy

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.methods.aura.expertise import save_expertise
from detoxflow.methods.aura.fold import fold_alphas
from detoxflow.methods.aura.hooks import dampening_hooks
from detoxflow.methods.aura.interventions import compute_alphas
from detoxflow.methods.aura.modules import output_units, select_modules
from detoxflow.methods.aura.pipeline import run_fold
from detoxflow.models import load_model, load_tokenizer, read_metadata

TEXTS = ["The quick brown fox jumps over the lazy dog.", "You absolute idiot, shut up", "Hi"]


def _random_alphas(modules, seed=0):
    g = torch.Generator().manual_seed(seed)
    alphas = {}
    for name, m in modules.items():
        a = torch.rand(output_units(m), generator=g)
        a[torch.rand(a.shape, generator=g) < 0.5] = 1.0  # leave about half of the units alone
        a[:3] = 0.0  # Det0-like zeros
        alphas[name] = a
    return alphas


def _logits(model, tok):
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits.float()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype,tol,rel", [("float32", 1e-5, 1e-3), ("bfloat16", 3e-2, 0.1)])
def test_folded_equals_hooked(request, family, dtype, tol, rel):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    model = load_model(folder, dtype=dtype, device="cpu")
    tok = load_tokenizer(folder)
    modules = select_modules(model, "auto")
    kinds = {type(m).__name__ for m in modules.values()}
    assert kinds == ({"Conv1D"} if family == "gpt2" else {"Linear"})
    alphas = _random_alphas(modules)
    base = _logits(model, tok)
    with dampening_hooks(model, alphas):
        hooked = _logits(model, tok)
    assert torch.equal(_logits(model, tok), base)  # hooks removed on exit
    folded_model = copy.deepcopy(model)
    assert fold_alphas(folded_model, alphas) == len(modules)
    folded = _logits(folded_model, tok)
    for m in folded_model.parameters():
        assert m.dtype == getattr(torch, dtype)
    effect = (hooked - base).abs().max()
    gap = (folded - hooked).abs().max()
    scale = base.abs().max()
    assert gap <= tol * scale, (float(gap), float(scale))
    assert gap <= rel * effect  # folded is far closer to hooked than the intervention's own effect


def test_fold_scales_conv1d_columns_and_linear_rows(tiny_gpt2_dir, tiny_llama_dir):
    g = load_model(tiny_gpt2_dir, device="cpu")
    conv = g.transformer.h[0].mlp.c_fc
    w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    a = torch.ones(conv.nf)
    a[5] = 0.25
    fold_alphas(g, {"transformer.h.0.mlp.c_fc": a})
    assert torch.equal(conv.weight[:, 5], w[:, 5] * 0.25) and torch.equal(conv.weight[:, 4], w[:, 4])
    assert torch.equal(conv.bias[5], b[5] * 0.25)

    ll = load_model(tiny_llama_dir, device="cpu")
    lin = ll.model.layers[1].mlp.down_proj
    w = lin.weight.detach().clone()
    a = torch.ones(lin.out_features)
    a[2] = 0.0
    fold_alphas(ll, {"model.layers.1.mlp.down_proj": a})
    assert torch.equal(lin.weight[2], torch.zeros_like(w[2])) and torch.equal(lin.weight[3], w[3])


def test_fold_refuses_tied_and_wrong_shapes(tiny_gpt2_dir):
    model = load_model(tiny_gpt2_dir, device="cpu")
    emb = model.transformer.wte.weight.detach().clone()
    with pytest.raises(DetoxflowError, match="tied"):
        fold_alphas(model, {"lm_head": torch.zeros(model.lm_head.out_features)})
    assert torch.equal(model.transformer.wte.weight, emb)
    with pytest.raises(DetoxflowError, match="output units"):
        fold_alphas(model, {"transformer.h.0.mlp.c_fc": torch.zeros(3)})
    with pytest.raises(DetoxflowError, match="no such module"):
        fold_alphas(model, {"transformer.h.9.mlp.c_fc": torch.zeros(3)})


@pytest.mark.parametrize("method", ["aura", "det0", "damp"])
def test_run_fold_writes_a_plain_model_folder(tmp_path, tiny_llama_dir, method):
    model = load_model(tiny_llama_dir, device="cpu")
    tok = load_tokenizer(tiny_llama_dir)
    modules = select_modules(model, "auto")
    g = torch.Generator().manual_seed(3)
    aurocs = {n: torch.rand(output_units(m), generator=g) for n, m in modules.items()}
    save_expertise(tmp_path / "expertise.safetensors", aurocs, {"n_toxic": 8, "n_nontoxic": 8})
    spec = {"name": method, "method": method, "k": 20, "alpha": 0.5, "strength": 0.8 if method == "aura" else 1.0}
    out = run_fold(tiny_llama_dir, tmp_path / "expertise.safetensors", spec, tmp_path / method)
    meta = read_metadata(out)
    alphas = compute_alphas(aurocs, method, k=20, damp_alpha=0.5, strength=spec["strength"])
    n_dampened = sum(int((a < 1).sum()) for a in alphas.values())
    assert meta["method"] == method and meta["params"]["n_dampened"] == n_dampened
    if method == "aura":
        assert meta["params"]["strength"] == 0.8
    else:
        assert meta["params"]["k"] == 20 and n_dampened == 20
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    with dampening_hooks(model, alphas):
        hooked = _logits(model, tok)
    reloaded = _logits(load_model(out, device="cpu"), load_tokenizer(out))
    assert torch.allclose(reloaded, hooked, atol=1e-5)


def test_hooks_keep_half_precision(tiny_llama_dir):
    model = load_model(tiny_llama_dir, dtype="bfloat16", device="cpu")
    tok = load_tokenizer(tiny_llama_dir)
    name = "model.layers.0.mlp.up_proj"
    seen = {}
    with dampening_hooks(model, {name: torch.full((64,), 0.5, dtype=torch.float32)}):
        h = model.get_submodule(name).register_forward_hook(lambda _m, _i, o: seen.__setitem__("dtype", o.dtype))
        logits = _logits(model, tok)
        h.remove()
    assert seen["dtype"] == torch.bfloat16 and torch.isfinite(logits).all()
