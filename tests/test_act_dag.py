"""The act and steering branches of the DAG end to end on a tiny GPT-2 (with a composition on AurA)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline import run_snakemake, tiny_overlay


@pytest.mark.slow
def test_act_and_steering_branches_end_to_end(tmp_path, shared_data, tiny_gpt2_dir):
    data = {"toxic": "davidson_offensive", "nontoxic": "davidson_neither", "sentences_per_class": 8,
            "max_tokens": 32, "batch_size": 8}
    overlay = tiny_overlay(
        tiny_gpt2_dir,
        shared_data,
        evaluation={"preprompt_models": []},
        aura={"enabled": True, "toxic": "davidson_offensive", "nontoxic": "davidson_neither",
              "sentences_per_class": 8, "max_tokens": 32, "det0": {"enabled": False}, "damp": {"enabled": False},
              "plots": False},
        act={"enabled": True, **data, "methods": ["linear_act", "mean_act"], "strengths": [1.0], "incremental": True,
             "compose": [{"start": "aura", "method": "linear_act", "strengths": [0.5]}]},
        steering={"enabled": True, **data, "iti_c": {"enabled": True, "top_k": 2, "strengths": [2.0]},
                  "actadd": {"enabled": True, "layer": 1, "strengths": [3.0]}},
    )
    run_snakemake(tmp_path, overlay)
    res = tmp_path / "results"
    summary = pd.read_csv(res / "summary.csv").set_index("variant")
    assert set(summary.index) == {"base", "aura", "linear_act", "mean_act", "aura--linear_act_s0.5", "iti_c_s2",
                                  "actadd_s3"}
    assert summary.loc["aura--linear_act_s0.5", "chain"] == "aura → linear_act"
    assert summary.loc["linear_act", "chain"] == "linear_act" and summary.loc["iti_c_s2", "method"] == "iti_c"
    assert summary["best_within_1ppl"].sum() == 1 and summary.loc["base", "pareto"] in (True, False)
    for v in ("linear_act", "mean_act", "iti_c_s2", "actadd_s3", "aura--linear_act_s0.5"):
        assert (res / "eval" / v / "perplexity.json").is_file()

    # the folded linear_act folder equals the base model with the estimated maps hooked (no clipping)
    from detoxflow.methods.act.hooks import transport_hooks
    from detoxflow.methods.act.incremental import load_maps
    from detoxflow.models import load_model, load_tokenizer

    maps, meta = load_maps(res / "act/base/linear_act/maps.safetensors")
    assert list(maps) == ["transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.ln_1",
                          "transformer.h.1.ln_2", "transformer.ln_f"]
    assert meta["passes"] == 5 and meta["incremental"] is True
    tok = load_tokenizer(res / "models/base")
    enc = tok(["You are such a", "The weather today is"], return_tensors="pt", padding=True)
    base = load_model(res / "models/base", device="cpu")
    with torch.no_grad(), transport_hooks(base, maps, 1.0, clip=False):
        hooked = base(**enc).logits
    plain = AutoModelForCausalLM.from_pretrained(res / "models/linear_act").eval()
    with torch.no_grad():
        folded = plain(**enc).logits
    assert torch.allclose(folded, hooked, atol=1e-4)
    info = json.loads((res / "models/linear_act/detoxflow.json").read_text())
    assert info["chain"] == ["linear_act"] and info["fold_check"]["vs_unclipped"] < 1e-3
    # the composition was estimated on the aura folder
    _, cmeta = load_maps(res / "act/aura/linear_act/maps.safetensors")
    assert cmeta["model"].endswith("models/aura")
    assert json.loads((res / "models/aura--linear_act_s0.5/detoxflow.json").read_text())["chain"] == [
        "aura", "linear_act"]
    md = (res / "summary.md").read_text()
    assert "Least toxic within +1 perplexity of base" in md

    proc = run_snakemake(tmp_path, overlay, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
