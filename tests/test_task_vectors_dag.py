"""The task-vector branch of the DAG: job graph (dry runs) and an end-to-end run on a tiny GPT-2."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline import run_snakemake, tiny_overlay


def _tv(**kw) -> dict:
    section = {
        "enabled": True, "dataset": "davidson_toxic", "max_rows": 16, "n_splits": 2,
        "merge_lambdas": [1.0], "single_lambdas": [1.0],
        "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "max_length": 32, "checkpoint_every": 2},
    }
    section.update(kw)
    return section


def _jobs(stdout: str) -> dict[str, int]:
    counts = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_job_graph_for_several_n_ascent_and_accelerate(tmp_path, shared_data):
    overlay = tiny_overlay("/nonexistent/model", shared_data, task_vectors=_tv(
        n_splits=[2, 3], merge_lambdas=[0.5, 1.0], single_lambdas=[0.25, 0.5], gradient_ascent=True,
        finetune={"accelerate": {"enabled": True, "num_processes": 2}}))
    proc = run_snakemake(tmp_path, overlay, "-n", "-p")
    out = proc.stdout + proc.stderr
    jobs = _jobs(out)
    assert jobs["tv_finetune"] == 2 + 3 + 1 + 1  # parts of N=2, N=3, the whole set, gradient ascent
    assert jobs["tv_split"] == 3  # N = 1 (whole set), 2, 3
    assert jobs["tv_merge"] == 4 + 2 and jobs["tv_ascent"] == 1   # 4 merged, 2 single-model lambdas
    assert jobs["tv_choose_lambda"] == 1 and jobs["tv_vector_stats"] == 1
    # every variant is evaluated: base + 4 merged + 2 single + ascent
    assert jobs["perplexity"] == 8
    for name in ("tv_merge_n3_l0.5", "tv_merge_n2_l1.0", "tv_single_l0.25", "tv_ascent"):
        assert f"results/models/{name}" in out
    assert "accelerate launch --num_processes 2 -m detoxflow tv-finetune" in out
    assert "--state-dir results/task_vectors/state/descent_n3_part2" in out
    assert "--objective ascent" in out


def test_variant_names():
    from detoxflow.methods.task_vectors import variants as tv_variants

    tv = {"n_splits": [5, 2], "merge_lambdas": [1, 1.0, 0.5], "single_lambdas": [0.05], "gradient_ascent": False}
    assert tv_variants.model_variants(tv) == ["tv_single_l0.05", "tv_merge_n5_l1.0", "tv_merge_n5_l0.5",
                                      "tv_merge_n2_l1.0", "tv_merge_n2_l0.5"]
    assert tv_variants.variants(tv)[0]["family"] == "base"
    assert tv_variants.launcher({"accelerate": {"enabled": True, "num_processes": 4, "config_file": "ds.yaml"}}) == \
        "accelerate launch --config_file ds.yaml --num_processes 4 -m detoxflow"
    assert tv_variants.training_settings({"lr": 1.0, "threads": 2, "accelerate": {}}) == {"lr": 1.0}


def test_missing_recipe_is_reported(tmp_path, shared_data):
    overlay = tiny_overlay("/nonexistent/model", shared_data, task_vectors=_tv(dataset="no_such_recipe"))
    proc = run_snakemake(tmp_path, overlay, "-n", check=False)
    assert proc.returncode != 0
    assert "dataset recipe 'no_such_recipe' is referenced but not defined" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_branch_end_to_end_on_tiny_gpt2(tmp_path, shared_data, tiny_gpt2_dir):
    overlay = tiny_overlay(tiny_gpt2_dir, shared_data, task_vectors=_tv())
    run_snakemake(tmp_path, overlay)
    res = tmp_path / "results"

    # toxic set: 16 Davidson hate/offensive tweets, recorded beside the file
    info = json.loads((res / "task_vectors/toxic_set.json").read_text())
    assert info["size"] == 16 and info["source"] == "davidson_toxic"
    toxic = [json.loads(x) for x in (res / "task_vectors/toxic_set.jsonl").read_text().splitlines()]
    assert len(toxic) == 16 and all(r["class"] in (0, 1) for r in toxic)
    # two disjoint halves covering the set
    parts = [[json.loads(x) for x in (res / f"task_vectors/splits/n2/part{i}.jsonl").read_text().splitlines()]
             for i in range(2)]
    assert [len(p) for p in parts] == [8, 8]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, parts[0] + parts[1])) == sorted(map(key, toxic))

    # the merged model is theta_pre - 1.0 * mean(theta_i - theta_pre), recomputed from the fine-tunes
    pre = load_file(res / "models/base/model.safetensors")
    fts = [load_file(res / f"task_vectors/finetuned/descent_n2_part{i}/model.safetensors") for i in range(2)]
    merged = load_file(res / "models/tv_merge_n2_l1.0/model.safetensors")
    for name, p in pre.items():
        want = (p.double() - ((fts[0][name].double() - p.double()) + (fts[1][name].double() - p.double())) / 2)
        torch.testing.assert_close(merged[name], want.float(), rtol=0, atol=1e-7)
    whole = load_file(res / "task_vectors/finetuned/descent_n1_part0/model.safetensors")
    single = load_file(res / "models/tv_single_l1.0/model.safetensors")
    name = "transformer.h.0.mlp.c_fc.weight"
    torch.testing.assert_close(single[name], (2 * pre[name].double() - whole[name].double()).float(),
                               rtol=0, atol=1e-7)
    assert not (res / "task_vectors/state").exists() or not any((res / "task_vectors/state").iterdir())

    # summary rows with the method's columns
    summary = pd.read_csv(res / "summary.csv").set_index("variant")
    assert {"base", "tv_single_l1.0", "tv_merge_n2_l1.0"} <= set(summary.index)
    assert summary.loc["tv_merge_n2_l1.0", "method"] == "task_vector_merge"
    assert summary.loc["tv_merge_n2_l1.0", "n_splits"] == 2 and summary.loc["tv_merge_n2_l1.0", "lambda"] == 1.0
    assert summary.loc["tv_single_l1.0", "method"] == "task_vector"
    assert summary.loc["tv_single_l1.0", "n_splits"] == 1

    # the lambda choice reads the same evaluation numbers as the summary
    choice = json.loads((res / "task_vectors/lambda_choice.json").read_text())
    ppl = {p["model"]: p["perplexity"] for p in choice["points"]}
    for model in ("base", "tv_single_l1.0", "tv_merge_n2_l1.0"):
        assert ppl[model] == pytest.approx(summary.loc[model, "perplexity"])
    within = summary.loc["tv_single_l1.0", "perplexity"] <= summary.loc["base", "perplexity"] + 0.5
    assert choice["ilharco"]["single"]["lambda"] == (1.0 if within else 0.0)
    assert choice["matching"][0]["single_model"] == "tv_single_l1.0"
    assert (res / "task_vectors/lambda_choice.md").read_text().startswith("# Choosing lambda")
    assert (res / "plots/task_vectors_lambda.png").stat().st_size > 0

    # task-vector norms: the merged vector of N = 2 recomputed from the fine-tunes loaded above
    stats = json.loads((res / "task_vectors/vector_stats.json").read_text())
    merged_vec = torch.cat([((fts[0][k].double() + fts[1][k].double()) / 2 - p.double()).reshape(-1)
                            for k, p in pre.items()])
    assert stats["families"]["merge_n2"]["mean_norm"] == pytest.approx(float(merged_vec.norm()), rel=1e-6)
    assert set(stats["families"]) == {"single", "merge_n2"}

    # cached: a second run has nothing to do
    proc = run_snakemake(tmp_path, overlay, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
