"""Dataset recipes on the real shared data, checked against direct reads of the files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from detoxflow.data.recipes import load_recipe
from detoxflow.errors import DetoxflowError


def test_rtp_local_flattens_records(shared_data):
    rows = load_recipe("rtp", {"format": "rtp", "local": {"path": "rtp/challenging_toxic.jsonl"}}, shared_data)
    raw = [json.loads(line) for line in (shared_data / "rtp/challenging_toxic.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == len(raw)
    assert rows[5]["text"] == raw[5]["prompt"]["text"]
    assert rows[5]["prompt_toxicity"] == raw[5]["prompt"]["toxicity"]
    assert rows[5]["continuation"] == raw[5]["continuation"]["text"]


def test_rtp_where_and_sample_are_seeded(shared_data):
    recipe = {"format": "rtp", "local": {"path": "rtp/nontoxic.jsonl"},
              "where": [{"column": "prompt_toxicity", "op": "<", "value": 0.1}], "sample": 20, "seed": 7}
    a = load_recipe("rtp", recipe, shared_data)
    b = load_recipe("rtp", recipe, shared_data)
    c = load_recipe("rtp", dict(recipe, seed=8), shared_data)
    assert [r["text"] for r in a] == [r["text"] for r in b]
    assert [r["text"] for r in a] != [r["text"] for r in c]
    assert all(r["prompt_toxicity"] < 0.1 for r in a)


def test_jigsaw_toxic_and_clean(shared_data):
    df = pd.read_csv(shared_data / "jigsaw_sample/train.csv")
    sub = ["severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    toxic = load_recipe("j", {"format": "jigsaw", "local": {"path": "jigsaw_sample/train.csv"},
                              "where": [{"column": "toxic", "op": "==", "value": 1}]}, shared_data)
    clean = load_recipe("j", {"format": "jigsaw", "local": {"path": "jigsaw_sample/train.csv"},
                              "where": [{"column": c, "op": "==", "value": 0} for c in ["toxic", *sub]]}, shared_data)
    assert len(toxic) == int((df.toxic == 1).sum())
    assert len(clean) == int(((df[["toxic", *sub]] == 0).all(axis=1)).sum())
    assert set(r["text"] for r in toxic) == set(df.loc[df.toxic == 1, "comment_text"])


def test_davidson_hate_and_offensive(shared_data):
    df = pd.read_csv(shared_data / "davidson/labeled_data.csv")
    rows = load_recipe("d", {"format": "davidson", "local": {"path": "davidson/labeled_data.csv"},
                             "where": [{"column": "class", "op": "in", "value": [0, 1]}]}, shared_data)
    assert len(rows) == int(df["class"].isin([0, 1]).sum())
    assert rows[0]["text"] == df.loc[df["class"].isin([0, 1]), "tweet"].iloc[0]


def test_toxigen_demonstrations(shared_data):
    rows = load_recipe("t", {"format": "toxigen", "local": {"path": "toxigen"},
                             "where": [{"column": "prompt_label", "op": "==", "value": 1}]}, shared_data)
    expected = 0
    for f in (shared_data / "toxigen").glob("*/hate_*.txt"):
        expected += sum(1 for line in f.read_text().splitlines() if line.strip().lstrip("-").strip())
    assert len(rows) == expected > 0
    assert {r["group"] for r in rows} == {p.name for p in (shared_data / "toxigen").iterdir() if p.is_dir()}


def test_wikitext_and_advbench(shared_data):
    wiki = load_recipe("w", {"format": "wikitext", "local": {"path": "wikitext-2/wiki.test.raw"}}, shared_data)
    lines = [line for line in (shared_data / "wikitext-2/wiki.test.raw").read_text().splitlines() if line.strip()]
    assert [r["text"] for r in wiki] == lines
    adv = load_recipe("a", {"format": "advbench", "local": {"path": "advbench/harmful_behaviors.csv"}}, shared_data)
    df = pd.read_csv(shared_data / "advbench/harmful_behaviors.csv")
    assert [r["text"] for r in adv] == list(df["goal"])
    assert adv[0]["target"] == df["target"][0]


def test_generic_csv_needs_its_text_column(tmp_path):
    (tmp_path / "x.csv").write_text("body,label\nhello,1\nworld,0\n")
    with pytest.raises(DetoxflowError, match="no text column 'text'.*body"):
        load_recipe("x", {"format": "csv", "local": {"path": "x.csv"}}, tmp_path)
    rows = load_recipe("x", {"format": "csv", "local": {"path": "x.csv"}, "text_field": "body",
                             "where": [{"column": "label", "op": "==", "value": 1}]}, tmp_path)
    assert rows == [{"label": 1, "text": "hello"}]


@pytest.mark.parametrize("recipe, data_root, message", [
    ({"format": "csv", "local": {"path": "missing.csv"}}, "ROOT", "data file not found: .*missing.csv"),
    ({"format": "davidson", "local": {"path": "davidson/labeled_data.csv"},
      "where": [{"column": "klass", "op": "==", "value": 0}]}, "SHARED", "no column 'klass'"),
    ({"format": "davidson", "local": {"path": "davidson/labeled_data.csv"},
      "where": [{"column": "class", "op": "==", "value": 0}], "sample": 100000}, "SHARED", "wants sample=100000"),
    ({"format": "davidson", "local": {"path": "davidson/labeled_data.csv"},
      "where": [{"column": "class", "op": "==", "value": 9}]}, "SHARED", "0 rows after filtering"),
    ({"format": "davidson", "local": {"path": "davidson/labeled_data.csv"}}, None, "data_root is not set"),
])
def test_recipe_errors_name_the_culprit(recipe, data_root, message, tmp_path, shared_data):
    root = {"ROOT": tmp_path, "SHARED": shared_data, None: None}[data_root]
    with pytest.raises(DetoxflowError, match=message):
        load_recipe("bad", recipe, root)


def test_hub_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DetoxflowError, match="could not load google/civil_comments.*data_root"):
        load_recipe("cc", {"format": "civil_comments", "hub": {"path": "google/civil_comments", "split": "train"}}, None)


def test_advbench_hub_layout_uses_prompt(tmp_path):
    (tmp_path / "adv.csv").write_text("prompt,target\nDo a bad thing,Sure here is\n")
    rows = load_recipe("a", {"format": "advbench", "local": {"path": "adv.csv"}}, tmp_path)
    assert rows == [{"target": "Sure here is", "text": "Do a bad thing"}]
