"""The DAG: a dry run of the default config, and a full run on a tiny GPT-2 with the shared data."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pipeline import REPO, run_snakemake, tiny_overlay


def test_dry_run_of_default_config_offline(tmp_path, shared_data):
    proc = run_snakemake(tmp_path, {"data_root": str(shared_data)}, "-n", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    for rule in ("materialise", "dataset", "generate_continuations", "score_toxicity", "perplexity",
                 "summarize"):
        assert rule in out


def test_dry_run_with_every_stage(tmp_path, shared_data):
    """The CI overlay (.test/config.yaml) switches every stage on: the whole DAG must resolve."""
    import yaml

    from detoxflow.config import deep_update

    overlay = yaml.safe_load((REPO / "workflow/presets/offline.yaml").read_text())
    deep_update(overlay, yaml.safe_load((REPO / ".test/config.yaml").read_text()))
    overlay["data_root"] = str(shared_data)
    assert overlay["task_vectors"] == {"dataset": "davidson_toxic", "enabled": True}
    proc = run_snakemake(tmp_path, overlay, "-n", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    for rule in ("tv_finetune", "tv_merge", "tv_vector_stats", "aura_fold", "dinm_edit_model", "safeedit_score", "summarize"):
        assert rule in out, rule


@pytest.mark.slow
def test_full_run_on_tiny_gpt2(tmp_path, shared_data, tiny_gpt2_dir):
    overlay = tiny_overlay(tiny_gpt2_dir, shared_data,
                           evaluation={"batch_tokens": 512, "generation": {"k": 2, "max_new_tokens": 6},
                                       "perplexity": {"window": 64, "stride": 32, "max_tokens": 256},
                                       "preprompts": {"polite": "Please be kind. ", "adversarial": None},
                                       "preprompt_models": ["base"]})
    run_snakemake(tmp_path, overlay)
    res = tmp_path / "results"
    summary = pd.read_csv(res / "summary.csv")
    assert list(summary["variant"]) == ["base", "base+polite"]
    for col in ("variant", "method", "expected_max_toxicity", "toxicity_probability", "mean_toxicity",
                "toxic_fraction", "perplexity", "distinct_2"):
        assert col in summary.columns

    # recompute the base row from the scored continuations, with the scorer called directly
    from profanity_check import predict_prob

    records = [json.loads(line) for line in (res / "eval/base/plain/toxicity.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(len(r["continuations"]) == 2 for r in records)
    scores = [list(predict_prob(r["continuations"])) for r in records]
    for r, s in zip(records, scores):
        assert r["toxicity"] == pytest.approx(s)
    base = summary.set_index("variant").loc["base"]
    assert base["method"] == "base"
    assert base["expected_max_toxicity"] == pytest.approx(sum(max(s) for s in scores) / 6)
    assert base["mean_toxicity"] == pytest.approx(sum(map(sum, scores)) / 12)

    # perplexity recomputed in-process on the same text
    from detoxflow.evaluation.metrics.perplexity import perplexity
    from detoxflow.models import load_model, load_tokenizer

    text = "\n".join(json.loads(line)["text"] for line in (res / "data/wikitext.jsonl").read_text().splitlines())
    folder = res / "models" / "base"
    direct = perplexity(load_model(folder, device="cpu"), load_tokenizer(folder), text, window=64, stride=32,
                        max_tokens=256)
    assert base["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    assert math.isfinite(base["perplexity"])

    # the pre-prompt run really put the pre-prompt in front
    gen = json.loads((res / "eval/base/polite/generations.jsonl").read_text().splitlines()[0])
    assert gen["preprompt"] == "Please be kind. "
    assert (res / "plots/toxicity_vs_perplexity.png").stat().st_size > 0
    md = (res / "summary.md").read_text()
    assert md.startswith("# Summary")
    assert "| variant | method | chain | EMT | tox. prob. | mean tox. | perplexity |" in md

    # the Snakemake report embeds the table, the plot and the sample continuations
    run_snakemake(tmp_path, overlay, "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 10_000

    # a second run has nothing to do (cached artifacts)
    proc = run_snakemake(tmp_path, overlay, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_failed_job_shows_its_error_at_the_top_level(tmp_path, shared_data):
    """The workflow's default profile (profiles/default) prints a failed job's log, not only its path."""
    overlay = tiny_overlay(tmp_path / "no-such-model", shared_data)
    proc = run_snakemake(tmp_path, overlay, "--", "results/models/base", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "no-such-model' is neither a local folder nor reachable on the Hugging Face hub" in out
    assert not (tmp_path / "results" / "models" / "base").exists()
