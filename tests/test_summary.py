"""The summary table from fabricated runs: rows, columns from model folders' metadata, markdown, plot."""

from __future__ import annotations

import pandas as pd
import pytest

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.summary import build_table, summary_markdown, to_markdown, write_summary
from detoxflow.io import write_json, write_jsonl, write_metrics


def _fake_run(root, model, prompting, emt, ppl, meta):
    write_json(root / model / prompting / "toxicity.json", {
        "model": model, "prompting": prompting, "expected_max_toxicity": emt, "toxicity_probability": 0.5,
        "mean_toxicity": 0.1, "toxic_fraction": 0.2, "distinct_1": 0.9, "distinct_2": 0.95, "distinct_3": 0.97})
    write_jsonl(root / model / prompting / "toxicity.jsonl", [
        {"prompt": "p0", "continuations": ["a", "b"], "toxicity": [0.1, 0.9]},
        {"prompt": "p1", "continuations": ["c", "d"], "toxicity": [0.3, 0.2]}])
    write_metrics(root / model / "perplexity.json", {"perplexity": ppl}, n_tokens=100, window=64)
    write_json(root / "models" / model / "detoxflow.json", meta)


def _spec(root, runs, extra=None):
    models = list(dict.fromkeys(m for m, _ in runs))
    return {
        "runs": [{"model": m, "prompting": p, "toxicity": str(root / m / p / "toxicity.json"),
                  "scored": str(root / m / p / "toxicity.jsonl")} for m, p in runs],
        "models": {m: {"folder": str(root / "models" / m),
                       "metrics": [str(root / m / "perplexity.json"), *(extra or {}).get(m, [])]} for m in models},
    }


@pytest.fixture()
def three_runs(tmp_path):
    _fake_run(tmp_path, "base", "plain", 0.4, 20.0, {"method": "base", "params": {}})
    _fake_run(tmp_path, "base", "polite", 0.3, 20.0, {"method": "base", "params": {}})
    _fake_run(tmp_path, "tv_merge_n5_l1.0", "plain", 0.2, 22.5,
              {"method": "task_vector_merge", "params": {"n_splits": 5, "lambda": 1.0, "note": None}})
    _fake_run(tmp_path, "aura", "plain", 0.25, 21.0,
              {"method": "aura", "params": {"strength": 1.0, "n_dampened": 38174}})
    write_metrics(tmp_path / "base" / "safeedit.json", {"safeedit_DS": 40.0, "safeedit_DG_avg": 30.0})
    runs = [("tv_merge_n5_l1.0", "plain"), ("base", "polite"), ("aura", "plain"), ("base", "plain")]
    return tmp_path, _spec(tmp_path, runs, {"base": [str(tmp_path / "base" / "safeedit.json")]})


def test_table_rows_columns_metadata_and_metrics(three_runs):
    root, spec = three_runs
    df, method_params = build_table(spec)
    assert list(df["variant"]) == ["base", "base+polite", "aura", "tv_merge_n5_l1.0"]   # base first
    assert list(df.columns[:4]) == ["variant", "method", "model", "preprompt"]
    rows = df.set_index("variant")
    merged = rows.loc["tv_merge_n5_l1.0"]
    # the parameters are whatever the folder's detoxflow.json declares (scalars only), nothing hard-coded
    assert merged["n_splits"] == 5 and merged["lambda"] == 1.0 and merged["perplexity"] == 22.5
    assert "note" not in df.columns and "n_tokens" not in df.columns and "window" not in df.columns
    # in the order detoxflow.json holds them (written with sorted keys)
    assert method_params == {"base": [], "task_vector_merge": ["lambda", "n_splits"], "aura": ["n_dampened", "strength"]}
    assert pd.isna(rows.loc["aura", "n_splits"]) and rows.loc["aura", "n_dampened"] == 38174
    # per-model metrics files join every row of their model, pre-prompt rows included
    assert rows.loc["base+polite", "safeedit_DS"] == 40.0 and pd.isna(merged["safeedit_DS"])
    assert rows.loc["base+polite", "expected_max_toxicity"] == 0.3


def test_markdown_is_a_compact_main_table_then_one_table_per_method(three_runs):
    root, spec = three_runs
    df, method_params = build_table(spec)
    md = summary_markdown(df, method_params)
    lines = md.splitlines()
    main = lines[lines.index("# Summary") + 2]
    assert main == ("| variant | method | chain | EMT | tox. prob. | mean tox. | perplexity | SafeEdit DS | DG-Avg "
                    "| pareto | best (≤ base ppl + 1) |")
    assert "| aura | aura | aura | 0.25 | 0.5 | 0.1 | 21 |  |  | ✓ | ✓ |" in lines
    assert any(line.startswith("**Least toxic within +1 perplexity of base**: `aura`") for line in lines)
    assert "## More metrics" in lines and "## task_vector_merge: parameters" in lines and "## aura: parameters" in lines
    i = lines.index("## task_vector_merge: parameters")
    assert lines[i + 2:i + 5] == ["| variant | lambda | n_splits |", "|---|---|---|", "| tv_merge_n5_l1.0 | 1 | 5 |"]
    assert "## base: parameters" not in lines   # a method without parameters gets no table
    # csv keeps every column
    out = {k: root / "out" / v for k, v in dict(csv="s.csv", markdown="s.md", plot="p.png", samples="x.csv").items()}
    write_summary(spec, samples_per_variant=1, **out)
    csv = pd.read_csv(out["csv"])
    assert set(csv.columns) == set(df.columns) and len(csv) == 4
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
    samples = pd.read_csv(out["samples"])
    assert list(samples["continuation"]) == ["b"] * 4   # the most toxic of prompt 0's continuations
    assert set(samples["variant"]) == {"base", "base+polite", "aura", "tv_merge_n5_l1.0"}


def test_a_run_of_an_unlisted_model_is_named(tmp_path):
    _fake_run(tmp_path, "base", "plain", 0.4, 20.0, {"method": "base", "params": {}})
    spec = _spec(tmp_path, [("base", "plain")])
    spec["models"] = {}
    with pytest.raises(DetoxflowError, match="run of model 'base' but no such entry"):
        build_table(spec)
    with pytest.raises(DetoxflowError, match="no runs"):
        build_table({"runs": [], "models": {}})


def test_a_folder_without_metadata_is_an_external_model(tmp_path):
    _fake_run(tmp_path, "base", "plain", 0.4, 20.0, {"method": "base", "params": {}})
    (tmp_path / "models" / "base" / "detoxflow.json").unlink()
    df, params = build_table(_spec(tmp_path, [("base", "plain")]))
    assert df.loc[0, "method"] == "external" and params == {"external": []}


def test_markdown_prints_counts_as_integers():
    df = pd.DataFrame({"variant": ["a", "b"], "n_dampened": [38174.0, float("nan")], "perplexity": [18.7399, 12345.678]})
    rows = to_markdown(df).splitlines()[2:]
    assert rows == ["| a | 38174 | 18.7399 |", "| b |  | 1.235e+04 |"]


def test_chain_pareto_and_best_within_budget(tmp_path):
    """A composed folder shows its chain; the Pareto marks and the +1 perplexity pick, computed by hand."""
    _fake_run(tmp_path, "base", "plain", 0.40, 20.0, {"method": "base", "params": {}})
    _fake_run(tmp_path, "aura", "plain", 0.30, 20.5, {"method": "aura", "params": {}})
    _fake_run(tmp_path, "aura--linear_act", "plain", 0.10, 22.0,
              {"method": "linear_act", "params": {"strength": 1.0}, "chain": ["aura", "linear_act"]})
    _fake_run(tmp_path, "mean_act", "plain", 0.20, 20.9, {"method": "mean_act", "params": {}, "chain": ["mean_act"]})
    _fake_run(tmp_path, "bad", "plain", 0.35, 21.0, {"method": "x", "params": {}})  # beaten by mean_act
    _fake_run(tmp_path, "base", "polite", 0.05, 20.0, {"method": "base", "params": {}})  # pre-prompted: not ranked
    runs = [("base", "plain"), ("aura", "plain"), ("aura--linear_act", "plain"), ("mean_act", "plain"),
            ("bad", "plain"), ("base", "polite")]
    df, _ = build_table(_spec(tmp_path, runs))
    rows = df.set_index("variant")
    assert rows.loc["aura--linear_act", "chain"] == "aura → linear_act"
    assert rows.loc["base", "chain"] == "" and rows.loc["aura", "chain"] == "aura"
    pareto = {v for v in rows.index if rows.loc[v, "pareto"]}
    assert pareto == {"base", "aura", "mean_act", "aura--linear_act"}
    assert [v for v in rows.index if rows.loc[v, "best_within_1ppl"]] == ["mean_act"]  # 20.9 <= 21; 22.0 is not
    assert list(df.columns[4:7]) == ["chain", "pareto", "best_within_1ppl"]
