"""A model spread with a device_map (``model.device_map`` / ``max_memory`` / ``offload_folder``)
computes what the same model on one device computes.

No GPU here: the tests spread a tiny Llama over CPU and disk with a hand-made map (and with
``auto`` under a CPU cap), so Accelerate's hooks load offloaded weights at use and inputs must
go to the embeddings' execution device (:func:`detoxflow.runtime.input_device`), as on several
GPUs. What they cannot show: tensors moving between two GPUs, and memory use on real GPUs.
"""

from __future__ import annotations

import json

import pytest
import torch

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.metrics.perplexity import perplexity
from detoxflow.generation import generate_continuations
from detoxflow.models import load_model, load_tokenizer
from detoxflow.runtime import input_device

# embeddings and the last layer / head on disk (weights on the meta device until used), the rest on CPU
HAND_MADE_MAP = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
                 "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
PROMPTS = ["The weather today", "I think that people who", "Once upon a time", "A"]


@pytest.fixture(scope="module")
def text(shared_data):
    return (shared_data / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")[:8000]


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):
    return load_model(tiny_llama_dir, device="cpu")


def _same_outputs(model, reference, tokenizer, text):
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        got = model(**ids.to(input_device(model))).logits
        want = reference(**ids).logits
    assert torch.equal(got, want)
    greedy = dict(max_new_tokens=12, batch_tokens=64, desc="test")
    assert generate_continuations(model, tokenizer, PROMPTS, **greedy) == \
        generate_continuations(reference, tokenizer, PROMPTS, **greedy)
    window = dict(window=64, stride=32, max_tokens=600)
    assert perplexity(model, tokenizer, text, **window) == perplexity(reference, tokenizer, text, **window)


def test_hand_made_map_with_cpu_and_disk_offload(tiny_llama_dir, plain, text, tmp_path):
    tokenizer = load_tokenizer(tiny_llama_dir)
    model = load_model(tiny_llama_dir, device_map=HAND_MADE_MAP, offload_folder=tmp_path / "offload")
    assert model.hf_device_map == HAND_MADE_MAP
    assert model.get_input_embeddings().weight.device.type == "meta"  # offloaded ...
    assert input_device(model) == torch.device("cpu")  # ... but run on the CPU, where the ids must go
    assert not model.training
    _same_outputs(model, plain, tokenizer, text)


def test_auto_map_within_max_memory(tiny_llama_dir, plain, text, tmp_path):
    """``auto`` with a CPU cap below the model's size puts weights on disk; max_memory arrives
    from JSON with string keys and sizes."""
    tokenizer = load_tokenizer(tiny_llama_dir)
    size = sum(p.numel() * p.element_size() for p in plain.parameters())
    model = load_model(tiny_llama_dir, device_map="auto", max_memory={"cpu": f"{size // 2000}KB"},
                       offload_folder=tmp_path / "offload")
    assert "disk" in set(model.hf_device_map.values())
    _same_outputs(model, plain, tokenizer, text)
    roomy = load_model(tiny_llama_dir, device_map="auto", max_memory={"cpu": f"{2 * size / 1e6:.1f}MB"})
    assert {p.device.type for p in roomy.parameters()} == {"cpu"}  # fits: nothing offloaded


def test_disk_offload_of_bin_weights_needs_the_offload_folder(tiny_llama_dir, plain, text, tmp_path):
    """Weights not in safetensors files must be re-saved to go to disk: without
    offload_folder that is one error naming the key; with it, the same outputs."""
    import shutil

    folder = tmp_path / "bin"
    shutil.copytree(tiny_llama_dir, folder)
    torch.save(plain.state_dict(), folder / "pytorch_model.bin")  # transformers 5 saves only safetensors
    (folder / "model.safetensors").unlink()
    with pytest.raises(DetoxflowError, match=r"set model\.offload_folder"):
        load_model(folder, device_map=HAND_MADE_MAP)
    model = load_model(folder, device_map=HAND_MADE_MAP, offload_folder=tmp_path / "offload")
    assert any((tmp_path / "offload").iterdir())
    _same_outputs(model, plain, load_tokenizer(folder), text)


def test_bad_placement_settings_are_named(tiny_llama_dir):
    with pytest.raises(DetoxflowError, match=r"model\.device_map: unknown 'everywhere'"):
        load_model(tiny_llama_dir, device_map="everywhere")
    with pytest.raises(DetoxflowError, match=r"model\.max_memory\.cpu: '200 gigs' is not a size"):
        load_model(tiny_llama_dir, device_map="auto", max_memory={"cpu": "200 gigs"})
    with pytest.raises(DetoxflowError, match=r"model\.max_memory: unknown device 'gpu0'"):
        load_model(tiny_llama_dir, device_map="auto", max_memory={"gpu0": "1GB"})


def test_cli_passes_the_device_map(tiny_llama_dir, plain, text, tmp_path):
    """`detoxflow perplexity --device-map auto --max-memory ...` gives the one-device number."""
    import subprocess
    import sys

    rows = tmp_path / "text.jsonl"
    rows.write_text(json.dumps({"text": text}) + "\n")
    size = sum(p.numel() * p.element_size() for p in plain.parameters())
    settings = {"window": 64, "stride": 32, "max_tokens": 300}
    out = {}
    for name, extra in (("single", ["--device", "cpu"]),
                        ("spread", ["--device-map", "auto", "--max-memory", json.dumps({"cpu": size // 2})])):
        proc = subprocess.run([sys.executable, "-m", "detoxflow", "perplexity", "--model", str(tiny_llama_dir),
                               "--text", str(rows), "--settings", json.dumps(settings), *extra,
                               "--out", str(tmp_path / f"{name}.json")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "placed by device_map auto: ['disk']" in proc.stderr
    assert out["spread"]["metrics"]["perplexity"] == out["single"]["metrics"]["perplexity"]


def test_aura_responses_with_a_device_map(tiny_llama_dir, tmp_path):
    """AurA's recorded responses (forward hooks on the MLP projections) are the same when the
    model is spread with offloaded layers."""
    from safetensors.torch import load_file

    from detoxflow.io import write_jsonl
    from detoxflow.methods.aura.pipeline import run_responses

    write_jsonl(tmp_path / "toxic.jsonl", [{"text": f"you are a stupid idiot number {i}"} for i in range(6)])
    write_jsonl(tmp_path / "nontoxic.jsonl", [{"text": f"have a lovely day, friend {i}"} for i in range(6)])
    from detoxflow.config import complete_section

    settings = complete_section("aura", {"sentences_per_class": 5, "max_tokens": 16, "batch_size": 3})
    files = {}
    for name, placement in (("plain", {"device": "cpu"}),
                            ("spread", {"device_map": HAND_MADE_MAP, "offload_folder": tmp_path / "offload"})):
        files[name] = tmp_path / f"{name}.safetensors"
        run_responses(tiny_llama_dir, tmp_path / "toxic.jsonl", tmp_path / "nontoxic.jsonl", settings, files[name],
                      **placement)
    plain, spread = load_file(files["plain"]), load_file(files["spread"])
    assert plain.keys() == spread.keys() and len(plain) > 2
    for key in plain:
        assert torch.equal(plain[key], spread[key]), key
