"""Toxic training set and N-way split: determinism, disjointness, sizes, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from detoxflow.cli import main
from detoxflow.errors import DetoxflowError
from detoxflow.io import read_json, read_jsonl, write_jsonl
from detoxflow.methods.task_vectors.split import read_part, split_indices, split_rows, write_splits
from detoxflow.methods.task_vectors.toxic_set import build_toxic_set, shuffle_rows


@pytest.fixture(scope="module")
def davidson_toxic(shared_data):
    """Davidson hate + offensive tweets (class 0 or 1), as the dataset rule writes them."""
    df = pd.read_csv(shared_data / "davidson" / "labeled_data.csv")
    df = df[df["class"].isin([0, 1])].head(300)
    return [{"text": t, "class": int(c)} for t, c in zip(df["tweet"], df["class"])]


@pytest.mark.parametrize("n_rows,n", [(10, 3), (300, 5), (7, 7), (5, 1)])
def test_split_is_a_partition_of_near_equal_parts(n_rows, n):
    parts = split_indices(n_rows, n, seed=42)
    assert len(parts) == n
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n_rows))  # disjoint and covering
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n_rows


def test_split_is_deterministic_for_a_seed(davidson_toxic):
    a = split_rows(davidson_toxic, 5, seed=42)
    b = split_rows(list(davidson_toxic), 5, seed=42)
    c = split_rows(davidson_toxic, 5, seed=43)
    assert a == b
    assert a != c
    idx = split_indices(len(davidson_toxic), 5, seed=42)
    assert a == [[davidson_toxic[i] for i in part] for part in idx]


@pytest.mark.parametrize("n", [0, -1])
def test_split_rejects_n_below_one(n):
    with pytest.raises(DetoxflowError, match="n_splits must be an integer >= 1"):
        split_indices(10, n, seed=0)


def test_split_rejects_n_above_rows():
    with pytest.raises(DetoxflowError, match=r"n_splits = 11 is larger than the toxic set \(10 rows\)"):
        split_indices(10, 11, seed=0)


def test_toxic_set_shuffle_cap_and_info(tmp_path, davidson_toxic):
    rows = davidson_toxic + [{"text": "   ", "class": 0}, {"text": None, "class": 1}]
    src = tmp_path / "recipe.jsonl"
    write_jsonl(src, rows)
    info = build_toxic_set(src, tmp_path / "toxic.jsonl", tmp_path / "toxic.json", source="davidson_toxic",
                           seed=42, max_rows=120)
    out = read_jsonl(tmp_path / "toxic.jsonl")
    assert len(out) == 120 and info["size"] == 120 and info["recipe_rows"] == len(rows)
    assert read_json(tmp_path / "toxic.json")["source"] == "davidson_toxic"
    # a seeded shuffle of the rows with text, then the first 120
    assert out == shuffle_rows(davidson_toxic, 42)[:120]
    assert out != davidson_toxic[:120]
    assert all(r in davidson_toxic for r in out)
    # deterministic: a second build gives the same file
    build_toxic_set(src, tmp_path / "again.jsonl", tmp_path / "again.json", source="x", seed=42, max_rows=120)
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "toxic.jsonl").read_text()


def test_toxic_set_too_small_is_an_error(tmp_path):
    src = tmp_path / "r.jsonl"
    write_jsonl(src, [{"text": "a"}])
    with pytest.raises(DetoxflowError, match="fewer than the 2 needed"):
        build_toxic_set(src, tmp_path / "o.jsonl", tmp_path / "o.json", source="r", seed=1, min_rows=2)


def test_cli_split_writes_parts_and_reports_errors(tmp_path, davidson_toxic, capsys):
    src = tmp_path / "toxic.jsonl"
    write_jsonl(src, davidson_toxic[:23])
    assert main(["tv-split", "--rows", str(src), "--n-splits", "5", "--seed", "42", "--out", str(tmp_path / "n5")]) == 0
    parts = [read_part(tmp_path / "n5", i) for i in range(5)]
    assert [len(p) for p in parts] == [5, 5, 5, 4, 4]
    assert sorted(json.dumps(r, sort_keys=True) for p in parts for r in p) == \
        sorted(json.dumps(r, sort_keys=True) for r in davidson_toxic[:23])
    assert read_json(tmp_path / "n5" / "split.json")["sizes"] == [5, 5, 5, 4, 4]
    with pytest.raises(DetoxflowError, match="no such split part"):
        read_part(tmp_path / "n5", 5)
    assert main(["tv-split", "--rows", str(src), "--n-splits", "24", "--out", str(tmp_path / "n24")]) == 2
    assert "larger than the toxic set (23 rows)" in capsys.readouterr().err
    assert not (tmp_path / "n24").exists()


def test_write_splits_n1_is_the_whole_set(tmp_path, davidson_toxic):
    src = tmp_path / "toxic.jsonl"
    write_jsonl(src, davidson_toxic[:9])
    write_splits(src, tmp_path / "n1", n_splits=1, seed=42)
    assert read_part(tmp_path / "n1", 0) == davidson_toxic[:9]
