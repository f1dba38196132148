"""The summary table from fabricated per-run results: rows, columns, merges, markdown, plot."""

from __future__ import annotations

import pandas as pd
import pytest

from detoxflow.errors import DetoxflowError
from detoxflow.io import write_json, write_jsonl
from detoxflow.evaluation.summary import build_table, to_markdown, write_summary


def _fake_run(root, model, prompting, emt, ppl, meta):
    write_json(root / model / prompting / "toxicity.json", {
        "model": model, "prompting": prompting, "expected_max_toxicity": emt, "toxicity_probability": 0.5,
        "mean_toxicity": 0.1, "toxic_fraction": 0.2, "distinct_1": 0.9, "distinct_2": 0.95, "distinct_3": 0.97})
    write_jsonl(root / model / prompting / "toxicity.jsonl", [
        {"prompt": "p0", "continuations": ["a", "b"], "toxicity": [0.1, 0.9]},
        {"prompt": "p1", "continuations": ["c", "d"], "toxicity": [0.3, 0.2]}])
    write_json(root / model / "perplexity.json", {"model": model, "perplexity": ppl, "metadata": meta})


def test_table_merges_metadata_preprompts_and_extras(tmp_path):
    _fake_run(tmp_path, "base", "plain", 0.4, 20.0, {"method": "base", "params": {"source": "x"}})
    _fake_run(tmp_path, "base", "polite", 0.3, 20.0, {"method": "base", "params": {}})
    _fake_run(tmp_path, "tv_merge_n5_l1.0", "plain", 0.2, 22.5,
              {"method": "task_vector_merge", "params": {"n_splits": 5, "lambda": 1.0}})
    write_json(tmp_path / "base" / "safeedit.json", {"model": "base", "safeedit_DS": 40.0})
    tox = [str(tmp_path / m / p / "toxicity.json") for m, p in
           [("tv_merge_n5_l1.0", "plain"), ("base", "polite"), ("base", "plain")]]
    ppl = [str(tmp_path / m / "perplexity.json") for m in ["base", "tv_merge_n5_l1.0"]]
    df = build_table(tox, ppl, [str(tmp_path / "base" / "safeedit.json")])
    assert list(df["variant"]) == ["base", "base+polite", "tv_merge_n5_l1.0"]
    assert list(df.columns[:4]) == ["variant", "method", "model", "preprompt"]
    merged = df.set_index("variant").loc["tv_merge_n5_l1.0"]
    assert merged["n_splits"] == 5 and merged["lambda"] == 1.0 and merged["perplexity"] == 22.5
    assert df.set_index("variant").loc["base+polite", "safeedit_DS"] == 40.0
    assert pd.isna(merged["safeedit_DS"])
    md = to_markdown(df)
    assert md.splitlines()[0].startswith("| variant | method |") and len(md.splitlines()) == 5

    out = {k: tmp_path / "out" / v for k, v in
           dict(csv="s.csv", markdown="s.md", plot="p.png", samples="samples.csv").items()}
    write_summary(tox, ppl, [], [t.replace(".json", ".jsonl") for t in tox], samples_per_variant=1, **out)
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
    samples = pd.read_csv(out["samples"])
    assert list(samples["continuation"]) == ["b", "b", "b"]  # the most toxic of prompt 0's continuations


def test_missing_perplexity_is_named(tmp_path):
    _fake_run(tmp_path, "base", "plain", 0.4, 20.0, {"method": "base", "params": {}})
    with pytest.raises(DetoxflowError, match="no perplexity result for model 'base'"):
        build_table([str(tmp_path / "base/plain/toxicity.json")], [])


def test_markdown_prints_counts_as_integers():
    df = pd.DataFrame({"variant": ["a", "b"], "n_dampened": [38174.0, float("nan")], "perplexity": [18.7399, 12345.678]})
    rows = to_markdown(df).splitlines()[2:]
    assert rows == ["| a | 38174 | 18.7399 |", "| b |  | 1.235e+04 |"]
