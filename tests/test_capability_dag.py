"""The capability stage in the DAG: every variant gets a capability job, the columns reach summary.csv,
and the capability-vs-toxicity plot is a target of `all` shown in the report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline import REPO, dry_run_jobs, run_snakemake, tiny_overlay


def test_default_offline_run_evaluates_every_variant_on_lastword(tmp_path, shared_data):
    jobs = dry_run_jobs(tmp_path, [REPO / "workflow/presets/offline.yaml"], "--config", f"data_root={shared_data}")
    rules = [j["rule"] for j in jobs]
    variants = {j["wildcards"]["model"] for j in jobs if j["rule"] == "perplexity"}
    assert variants >= {"base", "aura", "dinm", "tv_merge_n5_l1.0", "tv_single_l0.5", "linear_act", "aura--linear_act"}
    assert {j["wildcards"]["model"] for j in jobs if j["rule"] == "capability"} == variants
    assert rules.count("capability_lastword") == 1 and rules.count("capability_plot") == 1
    job = next(j for j in jobs if j["rule"] == "capability")
    assert "--lastword=results/capability/lastword.jsonl" in job["shell"]
    assert json.loads(job["shell"].split("--settings ")[1].split("'")[1])["tasks"] == ["lastword"]
    assert job["resources"].get("gpu") == 1


@pytest.mark.slow
def test_capability_columns_reach_the_summary(tmp_path, shared_data, tiny_gpt2_dir):
    overlay = tiny_overlay(tiny_gpt2_dir, shared_data,
                           capability={"enabled": True, "batch_size": 4,
                                       "lastword": {"n_examples": 12, "max_context_words": 30}})
    run_snakemake(tmp_path, overlay)
    res = tmp_path / "results"
    examples = [json.loads(line) for line in (res / "capability/lastword.jsonl").read_text().splitlines()]
    assert len(examples) == 12
    metrics = json.loads((res / "eval/base/capability.json").read_text())
    assert metrics["n_samples"] == {"lastword": 12}
    summary = pd.read_csv(res / "summary.csv")
    for column in ("capability_lastword_acc", "capability_lastword_perplexity"):
        assert summary.loc[summary["variant"] == "base", column].item() == pytest.approx(metrics["metrics"][column])
    main_table = (res / "summary.md").read_text().split("## ")[0]
    assert "capability_lastword_acc" in main_table
    assert (res / "plots/capability_vs_toxicity.png").read_bytes()[:4] == b"\x89PNG"
