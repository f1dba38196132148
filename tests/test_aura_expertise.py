"""AurA expertise (AUROC of every unit) against sklearn, and the intervention alphas."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detoxflow.errors import DetoxflowError
from detoxflow.methods.aura.expertise import auroc, compute_expertise, load_expertise, save_expertise
from detoxflow.methods.aura.interventions import (
    aura_alpha,
    compute_alphas,
    count_dampened,
    topk_masks,
    with_strength,
)
from detoxflow.methods.aura.modules import select_modules
from detoxflow.methods.aura.responses import record_responses, save_responses
from detoxflow.models import load_model, load_tokenizer


def _sklearn(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    y = labels.numpy()
    return torch.tensor([roc_auc_score(y, scores[:, j].double().numpy()) for j in range(scores.shape[1])],
                        dtype=torch.float64)


@pytest.fixture(scope="module")
def davidson_texts(shared_data):
    df = pd.read_csv(shared_data / "davidson" / "labeled_data.csv")
    toxic = df[df["neither"] == 0]["tweet"].sample(20, random_state=1).tolist()
    clean = df[(df["hate_speech"] == 0) & (df["offensive_language"] == 0)]["tweet"].sample(20, random_state=1).tolist()
    return toxic + clean, torch.tensor([1] * 20 + [0] * 20)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_auroc_equals_sklearn_on_real_responses(tiny_gpt2_dir, davidson_texts, dtype):
    texts, labels = davidson_texts
    model = load_model(tiny_gpt2_dir, dtype=dtype, device="cpu")
    tok = load_tokenizer(tiny_gpt2_dir, padding_side="right")
    responses, _ = record_responses(model, tok, texts, select_modules(model, "gpt2"), batch_size=8)
    n_tied_columns = 0
    for name, resp in responses.items():
        assert resp.dtype == getattr(torch, dtype)
        ours = auroc(resp, labels, chunk_elements=64)  # many chunks
        ref = _sklearn(resp, labels)
        assert torch.allclose(ours, ref, atol=1e-6, rtol=0), name
        n_tied_columns += sum(int(resp[:, j].unique().numel() < resp.shape[0]) for j in range(resp.shape[1]))
    if dtype == "bfloat16":
        assert n_tied_columns > 0  # bf16 responses do contain ties: the tie handling is exercised


def test_auroc_with_heavy_ties_and_constant_columns():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (50, 200), generator=g).float()
    scores[:, 0] = 1.0  # constant: AUROC 0.5
    labels = torch.randint(0, 2, (50,), generator=g)
    labels[:2] = torch.tensor([0, 1])
    ours = auroc(scores, labels)
    assert ours[0] == 0.5
    assert torch.allclose(ours, _sklearn(scores, labels), atol=1e-12, rtol=0)
    # perfectly separating and inverted units
    perfect = torch.cat([labels[:, None].float(), -labels[:, None].float()], dim=1)
    assert auroc(perfect, labels).tolist() == [1.0, 0.0]


def test_auroc_rejects_bad_input():
    with pytest.raises(DetoxflowError, match="both"):
        auroc(torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(DetoxflowError, match="labels"):
        auroc(torch.zeros(4, 3), torch.ones(3))
    bad = torch.zeros(4, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(DetoxflowError, match="NaN"):
        auroc(bad, torch.tensor([0, 1, 0, 1]))


def test_expertise_file_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(1)
    resp = {"a.0.x": torch.randn(10, 7, generator=g), "a.1.x": torch.randn(10, 3, generator=g).bfloat16()}
    labels = [1] * 5 + [0] * 5
    save_responses(tmp_path / "r.safetensors", resp, labels, {"pooling": "max"})
    aurocs, meta = compute_expertise(tmp_path / "r.safetensors")
    assert list(aurocs) == ["a.0.x", "a.1.x"] and meta["n_toxic"] == 5 and meta["n_nontoxic"] == 5
    for name, r in resp.items():
        assert torch.allclose(aurocs[name].double(), _sklearn(r.float(), torch.tensor(labels)), atol=1e-6)
    save_expertise(tmp_path / "e.safetensors", aurocs, meta)
    again, meta2 = load_expertise(tmp_path / "e.safetensors")
    assert meta2["pooling"] == "max"
    assert all(torch.equal(again[k], aurocs[k]) for k in aurocs)


def test_aura_alpha_formula():
    a = torch.tensor([0.0, 0.3, 0.5, 0.5001, 0.6, 0.75, 0.9, 1.0])
    expected = torch.tensor([1.0, 1.0, 1.0, 2 * (1 - 0.5001), 0.8, 0.5, 0.2, 0.0])
    assert torch.allclose(aura_alpha(a), expected, atol=1e-6)
    # strength: 0 leaves the model unchanged, 1 applies alpha, in between interpolates
    assert torch.equal(with_strength(aura_alpha(a), 0.0), torch.ones(8))
    assert torch.allclose(with_strength(aura_alpha(a), 0.5), 1 - 0.5 * (1 - expected), atol=1e-6)
    with pytest.raises(DetoxflowError):
        with_strength(a, 1.5)


def test_topk_is_global_and_deterministic():
    aurocs = {"m0": torch.tensor([0.9, 0.2, 0.7]), "m1": torch.tensor([0.95, 0.7, 0.1, 0.7])}
    masks = topk_masks(aurocs, 3)
    # 0.95, 0.9, then the first 0.7 in module order
    assert masks["m0"].tolist() == [True, False, True]
    assert masks["m1"].tolist() == [True, False, False, False]
    with pytest.raises(DetoxflowError, match="k must lie"):
        topk_masks(aurocs, 8)
    det0 = compute_alphas(aurocs, "det0", k=2)
    assert det0["m0"].tolist() == [0.0, 1.0, 1.0] and det0["m1"].tolist() == [0.0, 1.0, 1.0, 1.0]
    damp = compute_alphas(aurocs, "damp", k=2, damp_alpha=0.25)
    assert damp["m0"].tolist() == [0.25, 1.0, 1.0] and count_dampened(damp) == 2
    aura = compute_alphas(aurocs, "aura", strength=1.0)
    assert count_dampened(aura) == 5  # every unit with AUROC > 0.5
    with pytest.raises(DetoxflowError, match="unknown intervention"):
        compute_alphas(aurocs, "nope")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_auroc_integer_keys_keep_order_of_every_dtype(dtype):
    """Negative, positive, signed zeros, tiny (subnormal) and huge values in each precision."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(60, 300, generator=g) * torch.logspace(-6, 4, 300)[None, :]
    x[:5, :] = 0.0
    x[5:10, :] = -0.0
    x[10:12, :] = 6e-8 if dtype == torch.float16 else 1e-40
    scores = x.to(dtype)
    labels = torch.randint(0, 2, (60,), generator=g)
    ours = auroc(scores, labels, chunk_elements=600)
    assert torch.allclose(ours, _sklearn(scores.float(), labels), atol=1e-12, rtol=0)


def test_variant_names_from_the_config_section():
    from detoxflow.methods.aura.variants import variant_specs

    specs = variant_specs({"strengths": [1.0, 0.5], "det0": {"enabled": True, "k": [10, 200]},
                           "damp": {"enabled": True, "k": [10], "alpha": 0.3}})
    assert [s["name"] for s in specs] == ["aura", "aura_s0.5", "det0_k10", "det0_k200", "damp_k10"]
    assert specs[-1] == {"name": "damp_k10", "method": "damp", "k": 10, "alpha": 0.3, "strength": 1.0}
    assert [s["name"] for s in variant_specs({"strengths": [0.25], "det0": {"enabled": False},
                                              "damp": {"enabled": False}})] == ["aura_s0.25"]
    with pytest.raises(DetoxflowError, match="duplicate"):
        variant_specs({"strengths": [1.0, 1], "det0": {"enabled": False}, "damp": {"enabled": False}})


def test_cli_reports_user_errors_with_exit_code_2(tmp_path, tiny_gpt2_dir, capsys):
    from detoxflow.cli import main

    (tmp_path / "tox.jsonl").write_text('{"text": "you idiot"}\n')
    (tmp_path / "ok.jsonl").write_text('{"text": "hello"}\n')
    code = main(["aura-responses", "--model", str(tiny_gpt2_dir), "--toxic", str(tmp_path / "tox.jsonl"),
                 "--nontoxic", str(tmp_path / "ok.jsonl"), "--settings", '{"sentences_per_class": 1, '
                 '"modules": ["model.layers.*.mlp.up_proj"]}', "--device", "cpu",
                 "--out", str(tmp_path / "r.safetensors")])
    assert code == 2
    err = capsys.readouterr().err
    assert "matches no module" in err and "transformer.h.*.mlp.c_fc" in err
    assert not (tmp_path / "r.safetensors").exists()
