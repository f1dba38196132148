"""End-to-end DAG on a tiny GPT-2: SafeEdit stand-in -> DINM model + per-instance protocol -> SafeEdit
metrics for every variant -> summary."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pipeline import run_snakemake, tiny_overlay

SECTIONS = {
    "datasets": {"rtp_prompts": {"sample": 2}},
    "evaluation": {"batch_tokens": 512, "generation": {"k": 1, "max_new_tokens": 3},
                   "perplexity": {"window": 32, "stride": 32, "max_tokens": 64}},
    "safeedit": {"enabled": True, "data": {"source": "standin", "standin": {"n_train": 1, "n_test": 2}},
                 "n_instances": 2, "prompt": {"chat_template": False},
                 "generation": {"max_new_tokens": 4, "batch_tokens": 1024}, "judge": {"kind": "offline"}},
    "dinm": {"enabled": True, "lr": 0.01, "steps": 2,
             "model": {"instances": 1, "mode": "sequential"}, "per_instance": {"enabled": True, "n_instances": 2}},
}


@pytest.mark.slow
def test_dinm_and_safeedit_dag_on_tiny_gpt2(tmp_path, shared_data, tiny_gpt2_dir):
    overlay = tiny_overlay(tiny_gpt2_dir, shared_data, **SECTIONS)
    # `all` also runs the RTP evaluation of both variants; the SafeEdit branch alone keeps this test short,
    # and a dry run of `all` below checks that the summary takes the SafeEdit metrics of every variant.
    run_snakemake(tmp_path, overlay, "--", "results/eval/base/safeedit.json", "results/eval/dinm/safeedit.json",
                  "results/dinm/per_instance.json", "results/dinm/per_instance.md",
                  "results/plots/dinm_layer_profiles.png")
    res = tmp_path / "results"
    plan = run_snakemake(tmp_path, overlay, "-n", "-p", "all").stdout
    summarize = plan[plan.index("rule summarize:"):]
    summarize = summarize[:summarize.index("\n\n")]
    assert "results/eval/base/safeedit.json" in summarize and "results/eval/dinm/safeedit.json" in summarize
    assert "results/dinm/per_instance.md" in plan[plan.index("rule all:"):]
    assert "results/plots/dinm_layer_profiles.png" in plan[plan.index("rule all:"):]
    assert (res / "plots/dinm_layer_profiles.png").read_bytes()[:4] == b"\x89PNG"
    # the edit records keep every located instance's profiles (train: the dinm model, test: per instance)
    for path in ("dinm/model_edits.json", "dinm/per_instance/edits.json"):
        for edit in json.loads((res / path).read_text())["edits"]:
            (located,) = edit["profiles"]
            assert set(located["profiles"]) == {"masked", "relative", "cosine"}
            assert located["layer"] == edit["layers"][0] and len(located["profiles"]["masked"]) == 2

    metrics = {m: json.loads((res / f"eval/{m}/safeedit.json").read_text())["metrics"] for m in ("base", "dinm")}
    for m, values in metrics.items():
        assert values["safeedit_n_instances"] == 2
        for key in ("safeedit_DS", "safeedit_DG_onlyQ", "safeedit_DG_otherA", "safeedit_DG_otherQ",
                    "safeedit_DG_otherAQ", "safeedit_DG_avg", "safeedit_fluency"):
            assert isinstance(values[key], float)
    summary = pd.DataFrame(metrics).T

    # the base row recomputed from the responses with the judge rules applied by hand
    from profanity_check import predict_prob

    from detoxflow.evaluation.safeedit.judges import is_refusal

    gens = [json.loads(line) for line in (res / "eval/base/safeedit_generations.jsonl").read_text().splitlines()]
    assert len(gens) == 10
    ds = [g["response"] for g in gens if g["kind"] == "DS"]
    safe = [is_refusal(t) and p < 0.5 for t, p in zip(ds, predict_prob(ds))]
    assert summary.loc["base", "safeedit_DS"] == pytest.approx(100 * sum(safe) / len(safe))
    assert json.loads((res / "models/dinm/detoxflow.json").read_text())["method"] == "dinm"

    # the DINM model differs from the base only in the MLP output projection of the recorded layer
    record = json.loads((res / "dinm/model_edits.json").read_text())
    layer = record["edits"][0]["layers"][0]
    meta = json.loads((res / "models/dinm/detoxflow.json").read_text())
    assert meta["params"]["edit_layers"] == str(layer)
    from detoxflow.models import load_model

    base = dict(load_model(res / "models/base", device="cpu").named_parameters())
    dinm = dict(load_model(res / "models/dinm", device="cpu").named_parameters())
    changed = {n for n in base if not torch.equal(base[n], dinm[n])}
    assert changed == {f"transformer.h.{layer}.mlp.c_proj.weight", f"transformer.h.{layer}.mlp.c_proj.bias"}

    # the per-instance protocol reused the base model's responses as its vanilla responses
    per = json.loads((res / "dinm/per_instance.json").read_text())
    assert per["vanilla_timing"]["vanilla_generated"] == 0
    assert per["vanilla"]["safeedit_DS"] == pytest.approx(summary.loc["base", "safeedit_DS"])
    assert len(per["instances"]) == 2 and all("layer" in i for i in per["instances"])
    assert (res / "dinm/per_instance.md").read_text().startswith("# DINM per instance")
