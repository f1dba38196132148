"""AurA responses: module selection by pattern, masked pooling, one safetensors file, sentence sampling."""

from __future__ import annotations

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.methods.aura.modules import PRESETS, abbreviate_names, default_patterns, select_modules
from detoxflow.methods.aura.responses import (
    LABELS_KEY,
    iter_responses,
    load_labels,
    load_metadata,
    pool,
    record_responses,
    sample_sentences,
    save_responses,
)
from detoxflow.models import load_model, load_tokenizer

TEXTS = [
    "You are a wonderful person and I like you.",
    "no",
    "What the hell is wrong with you, seriously, get lost and never come back here again!",
    "A fairly ordinary sentence about the weather in spring.",
    "ok",
    "Numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25",
]


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load_model(tiny_gpt2_dir, device="cpu"), load_tokenizer(tiny_gpt2_dir, padding_side="right")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_model(tiny_llama_dir, device="cpu"), load_tokenizer(tiny_llama_dir, padding_side="right")


def _per_sentence_reference(model, tokenizer, texts, modules, pooling, max_tokens=128):
    """Each sentence alone (no padding), the full module output captured, pooled by hand."""
    out = {name: [] for name in modules}
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="pt")["input_ids"]
        captured = {}
        handles = [m.register_forward_hook(lambda _m, _i, o, n=n: captured.__setitem__(n, o.detach()))
                   for n, m in modules.items()]
        with torch.no_grad():
            model(input_ids=ids)
        for h in handles:
            h.remove()
        for name in modules:
            o = captured[name][0]  # [T, D]
            out[name].append(o.max(dim=0).values if pooling == "max" else o.mean(dim=0))
    return {name: torch.stack(v) for name, v in out.items()}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_padded_batches_equal_unpadded_per_sentence_pooling(request, family, pooling):
    model, tok = request.getfixturevalue(family)
    modules = select_modules(model, "auto")
    batched, n_tokens = record_responses(model, tok, TEXTS, modules, pooling=pooling, batch_size=4)
    reference = _per_sentence_reference(model, tok, TEXTS, modules, pooling)
    assert n_tokens == sum(len(tok(t)["input_ids"]) for t in TEXTS)
    for name in modules:
        assert batched[name].shape == (len(TEXTS), reference[name].shape[1])
        assert torch.allclose(batched[name], reference[name], atol=1e-5, rtol=1e-5), name
    # padding really happened in those batches: the shortest and longest sentences differ in length a lot
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert max(lengths) > 5 * min(lengths)


def test_truncation_to_max_tokens(gpt2):
    model, tok = gpt2
    modules = select_modules(model, ["transformer.h.0.mlp.c_fc"])
    long_text = TEXTS[-1]
    got, n = record_responses(model, tok, [long_text], modules, max_tokens=5)
    ref = _per_sentence_reference(model, tok, [long_text], modules, "max", max_tokens=5)
    assert n == 5
    assert torch.allclose(got["transformer.h.0.mlp.c_fc"], ref["transformer.h.0.mlp.c_fc"], atol=1e-6)


def test_special_tokens_are_excluded_from_pooling(gpt2):
    """A tokenizer that prepends a BOS token: the BOS position is not pooled unless asked."""
    model, tok = gpt2
    modules = select_modules(model, ["transformer.h.1.mlp.c_proj"])
    name = "transformer.h.1.mlp.c_proj"

    class WithBos:
        pad_token_id = tok.pad_token_id
        eos_token_id = tok.eos_token_id

        def __call__(self, texts, truncation, max_length, return_special_tokens_mask, return_attention_mask):
            ids = [[tok.bos_token_id] + tok(t)["input_ids"] for t in texts]
            return {"input_ids": ids, "special_tokens_mask": [[1] + [0] * (len(i) - 1) for i in ids]}

    text = "hello there friend"
    excluded, _ = record_responses(model, WithBos(), [text], modules)
    included, _ = record_responses(model, WithBos(), [text], modules, pool_special_tokens=True)
    ids = torch.tensor([[tok.bos_token_id] + tok(text)["input_ids"]])
    captured = {}
    h = modules[name].register_forward_hook(lambda _m, _i, o: captured.__setitem__("o", o.detach()))
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    full = captured["o"][0]
    assert torch.allclose(excluded[name][0], full[1:].max(dim=0).values, atol=1e-6)
    assert torch.allclose(included[name][0], full.max(dim=0).values, atol=1e-6)


def test_forward_stops_after_the_last_recorded_module(gpt2):
    model, tok = gpt2
    calls = []
    h = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    record_responses(model, tok, TEXTS[:2], select_modules(model, ["transformer.h.0.mlp.c_fc"]))
    h.remove()
    assert calls == []  # layer 1 and the lm_head were never run


def test_pool_masks_padding_in_half_precision():
    out = torch.tensor([[[1.0, -5.0], [3.0, -7.0], [100.0, 100.0]]], dtype=torch.bfloat16)
    mask = torch.tensor([[True, True, False]])
    assert pool(out, mask, "max").tolist() == [[3.0, -5.0]]
    assert pool(out, mask, "mean").tolist() == [[2.0, -6.0]]
    assert pool(out, mask, "max").dtype == torch.bfloat16


def test_patterns_presets_and_auto(gpt2, llama):
    g, _ = gpt2
    l, _ = llama
    assert default_patterns(g) == PRESETS["gpt2"]
    assert default_patterns(l) == PRESETS["llama"]
    assert list(select_modules(g, "gpt2")) == [
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj"]
    assert list(select_modules(l, ["model.layers.*.mlp.{up_proj,down_proj}"])) == [
        "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    assert list(select_modules(l, ["re:model\\.layers\\.1\\.mlp\\.gate_proj"])) == ["model.layers.1.mlp.gate_proj"]
    assert list(select_modules(g, ["**.c_fc"])) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    # `*` stays within one name component
    with pytest.raises(DetoxflowError):
        select_modules(g, ["transformer.*.mlp.c_fc"])


def test_auto_falls_back_to_mlp_linears_for_unknown_architectures(llama):
    model, _ = llama
    original = model.config.model_type
    try:
        model.config.model_type = "some_new_family"
        assert default_patterns(model) == [
            "model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj", "model.layers.*.mlp.down_proj"]
    finally:
        model.config.model_type = original


def test_pattern_errors_name_the_modules_that_exist(gpt2):
    model, _ = gpt2
    with pytest.raises(DetoxflowError) as err:
        select_modules(model, ["model.layers.*.mlp.up_proj"])
    msg = str(err.value)
    assert "model.layers.*.mlp.up_proj" in msg and "matches no module" in msg
    assert "transformer.h.*.mlp.c_fc (x2)" in msg and "lm_head" in msg
    assert "transformer.h.0" not in msg  # abbreviated: layer numbers collapsed
    with pytest.raises(DetoxflowError, match="not Linear/Conv1D"):
        select_modules(model, ["transformer.h.*.mlp.act"])
    with pytest.raises(DetoxflowError, match="tied"):
        select_modules(model, ["lm_head"])  # GPT-2's lm_head shares the embedding matrix
    with pytest.raises(DetoxflowError, match="empty"):
        select_modules(model, [])
    with pytest.raises(DetoxflowError, match="regular expression"):
        select_modules(model, ["re:("])
    assert abbreviate_names([f"a.{i}.b" for i in range(100)] + [f"x{i}" for i in range(60)], limit=3) == (
        "a.*.b (x100), x0, x1, ... and 58 more")


def test_responses_file_has_one_tensor_per_module_and_the_labels(tmp_path, gpt2):
    model, tok = gpt2
    modules = select_modules(model, "auto")
    resp, _ = record_responses(model, tok, TEXTS, modules)
    labels = [1, 1, 1, 0, 0, 0]
    path = save_responses(tmp_path / "responses.safetensors", resp, labels, {"pooling": "max"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(list(modules) + [LABELS_KEY])
    assert load_metadata(path)["modules"] == list(modules)
    assert load_labels(path).tolist() == labels
    for name, t in iter_responses(path):
        assert torch.equal(t, resp[name])


def test_sample_sentences_equal_counts_seeded_and_checked():
    toxic = [{"text": f"bad {i}"} for i in range(30)] + [{"text": ""}, {"text": "bad 0"}]
    clean = [{"text": f"good {i}"} for i in range(50)]
    texts, labels = sample_sentences(toxic, clean, 10, seed=3)
    assert labels == [1] * 10 + [0] * 10
    assert all(t.startswith("bad") for t in texts[:10]) and all(t.startswith("good") for t in texts[10:])
    assert len(set(texts)) == 20
    assert sample_sentences(toxic, clean, 10, seed=3) == (texts, labels)
    assert sample_sentences(toxic, clean, 10, seed=4) != (texts, labels)
    with pytest.raises(DetoxflowError, match="has 30 distinct"):
        sample_sentences(toxic, clean, 31, seed=3, names=("tox_recipe", "clean_recipe"))
