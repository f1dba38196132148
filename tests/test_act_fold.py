"""AcT / steering interventions folded into the weights == the hooked intervention; plain HF loading."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from detoxflow.errors import DetoxflowError
from detoxflow.folding import add_to_input, add_to_output
from detoxflow.methods.act.estimators import TransportMap
from detoxflow.methods.act.hooks import transport_hooks
from detoxflow.methods.act.pipeline import fold_maps
from detoxflow.methods.act.points import select_points
from detoxflow.models import load_model, load_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "You absolute idiot, shut up", "Hi"]
TOL = {"float32": (1e-5, 1e-3), "bfloat16": (3e-2, 0.15)}


def _random_maps(points, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = {}
    for name, mod in points.items():
        d = mod.weight.shape[0] if not type(mod).__name__ == "Conv1D" else mod.nf
        if isinstance(mod, torch.nn.Linear):
            d = mod.out_features
        maps[name] = TransportMap(beta=0.5 + torch.rand(d, generator=g), alpha=0.3 * torch.randn(d, generator=g))
    return maps


def _logits(model, tok):
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits.float()


def _compare(base, hooked, folded, dtype):
    tol, rel = TOL[dtype]
    effect = (hooked - base).abs().max()
    gap = (folded - hooked).abs().max()
    assert gap <= tol * base.abs().max(), (float(gap), float(base.abs().max()))
    assert gap <= rel * effect, (float(gap), float(effect))
    return float(gap)


@pytest.mark.parametrize("family,preset", [("gpt2", "gpt2"), ("llama", "llama"), ("llama", "llama_norms")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_act_folded_equals_hooked(request, tmp_path, family, preset, dtype):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    model = load_model(folder, dtype=dtype, device="cpu")
    tok = load_tokenizer(folder)
    points = select_points(model, preset)
    maps = _random_maps(points)
    base = _logits(model, tok)
    with transport_hooks(model, maps, 0.8, clip=False):
        hooked = _logits(model, tok)
    folded_model = copy.deepcopy(model)
    fold_maps(folded_model, maps, 0.8)
    _compare(base, hooked, _logits(folded_model, tok), dtype)
    if family == "llama":
        flag = "mlp_bias" if preset == "llama" else "attention_bias"
        assert getattr(folded_model.config, flag) is True
    # the folder loads with plain transformers, every weight present, same logits
    folded_model.save_pretrained(tmp_path / "m", safe_serialization=True)
    plain, info = AutoModelForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True,
                                                       dtype=getattr(torch, dtype))
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(_logits(plain.eval(), tok), _logits(folded_model, tok))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_constants_into_biases(request, family):
    """ITI-c's shift of o_proj's input and ActAdd's shift of the residual stream, folded."""
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    model = load_model(folder, device="cpu")
    tok = load_tokenizer(folder)
    o_proj = "transformer.h.0.attn.c_proj" if family == "gpt2" else "model.layers.0.self_attn.o_proj"
    block = "transformer.h.0" if family == "gpt2" else "model.layers.0"
    mlp_out = "transformer.h.0.mlp.c_proj" if family == "gpt2" else "model.layers.0.mlp.down_proj"
    v_in = torch.randn(32)
    v_res = torch.randn(32)
    base = _logits(model, tok)

    def pre(_m, inputs):
        return (inputs[0] + v_in,) + tuple(inputs[1:])

    def post(_m, _i, out):
        if isinstance(out, tuple):
            return (out[0] + v_res,) + tuple(out[1:])
        return out + v_res

    h1 = model.get_submodule(o_proj).register_forward_pre_hook(pre)
    h2 = model.get_submodule(block).register_forward_hook(post)
    hooked = _logits(model, tok)
    h1.remove()
    h2.remove()
    folded = copy.deepcopy(model)
    add_to_input(folded, o_proj, v_in)
    add_to_output(folded, mlp_out, v_res)
    _compare(base, hooked, _logits(folded, tok), "float32")


def test_unfoldable_points_are_refused(tiny_llama_dir):
    model = load_model(tiny_llama_dir, device="cpu")
    points = select_points(model, ["model.norm"])
    maps = _random_maps(points)
    with pytest.raises(DetoxflowError, match="final norm feeds lm_head"):
        fold_maps(model, maps, 1.0)
    with pytest.raises(DetoxflowError, match="cannot fold a per-unit map"):
        select_points(model, ["model.layers.0.mlp.act_fn"])


def test_run_fold_writes_a_plain_folder_with_its_chain_and_fold_check(tiny_gpt2_dir, tmp_path):
    from detoxflow.io import write_jsonl
    from detoxflow.methods.act.incremental import save_maps
    from detoxflow.methods.act.pipeline import run_fold
    from detoxflow.models import read_metadata

    model = load_model(tiny_gpt2_dir, device="cpu")
    points = select_points(model, "gpt2")
    maps = _random_maps(points)
    for m in maps.values():  # a support that clips some activations
        m.lo, m.hi = torch.full_like(m.beta, -0.5), torch.full_like(m.beta, 0.5)
    save_maps(tmp_path / "maps.safetensors", maps, {"n_units": 160, "incremental": True, "n_sentences": 4})
    write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in TEXTS])
    out = run_fold(tiny_gpt2_dir, tmp_path / "maps.safetensors",
                   {"name": "linear_act_s0.5", "start": "base", "method": "linear_act", "strength": 0.5},
                   tmp_path / "folded", sentences=tmp_path / "s.jsonl")
    meta = read_metadata(out)
    assert meta["chain"] == ["linear_act"] and meta["params"]["strength"] == 0.5
    check = meta["fold_check"]
    assert check["vs_unclipped"] < 1e-4 * check["logit_scale"] < check["vs_clipped"]
    folded = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = load_tokenizer(tiny_gpt2_dir)
    with transport_hooks(model, maps, 0.5, clip=False):
        want = _logits(model, tok)
    assert torch.allclose(_logits(folded, tok), want, atol=1e-4)
