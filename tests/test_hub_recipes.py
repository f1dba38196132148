"""Every dataset recipe of config.yaml and of each preset, loaded through the hub code path.

The hub is the double of ``hub_double`` (real ``datasets.Dataset`` objects in
each hub data set's schema). Each recipe's rows are checked against values
computed here straight from the served rows (text, label columns, filters,
the seeded sample), and against a property written out per recipe.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hub_double import HubMiss, hub, hub_catalog, wikitext_local_lines  # noqa: F401  (fixtures)

from detoxflow.config import load_config
from detoxflow.data.readers import read_records
from detoxflow.data.recipes import load_recipe
from detoxflow.data.safeedit import download_safeedit, read_safeedit_file
from detoxflow.data.where import apply_where
from detoxflow.errors import DetoxflowError

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "src" / "detoxflow" / "schema"


def _configs() -> dict[str, dict]:
    base = REPO / "config.yaml"
    out = {"config.yaml": load_config([base], SCHEMAS)}
    for preset in sorted((REPO / "workflow" / "presets").glob("*.yaml")):
        out[preset.name] = load_config([base, preset], SCHEMAS)
    return out


CONFIGS = _configs()
RECIPES = [(label, name, recipe) for label, cfg in CONFIGS.items() for name, recipe in cfg["datasets"].items()]


# -- the reference: served hub rows read directly ---------------------------------------------

TEXT_OF = {
    "rtp": lambda r: r["prompt"]["text"],
    "jigsaw": lambda r: r["comment_text"],
    "civil_comments": lambda r: r["text"],
    "davidson": lambda r: r["tweet"],
    "toxigen": lambda r: r["generation"],
    "wikitext": lambda r: r["text"][:-1] if r["text"].endswith("\n") else r["text"],
    "advbench": lambda r: r["prompt"],
}
TEXT_COLUMN = {"jigsaw": "comment_text", "civil_comments": "text", "davidson": "tweet", "toxigen": "generation",
               "wikitext": "text", "advbench": "prompt"}


def cell(fmt: str, row: dict, column: str):
    """A recipe column's value in a served row (RTP: prompt_toxicity is prompt.toxicity)."""
    if fmt == "rtp":
        for part in ("prompt", "continuation"):
            if column.startswith(part + "_"):
                return row[part][column[len(part) + 1:]]
    return row[column]


def holds(value, op, target) -> bool:
    if op == "==":
        return value == target
    if op == "!=":
        return value != target
    if op == "in":
        return value in target
    if op == "not_in":
        return value not in target
    if value is None:
        return False
    return {">": value > target, ">=": value >= target, "<": value < target, "<=": value <= target}[op]


def expected_served_rows(hub, recipe) -> list[dict]:
    fmt, src = recipe["format"], recipe["hub"]
    served = hub.rows[(src["path"], src.get("name") or "default", src["split"])]
    where = list(recipe.get("where") or []) + list(src.get("where") or [])
    kept = [r for r in served
            if all(holds(cell(fmt, r, c["column"]), c["op"], c["value"]) for c in where)
            and TEXT_OF[fmt](r).strip()]
    if recipe.get("sample") is not None:
        kept = random.Random(recipe["seed"]).sample(kept, recipe["sample"])
    return kept


# A property every row of a config recipe has, written out by hand (independent of the reference).
ROW_PROPERTY = {
    "rtp_prompts": lambda r: r["challenging"] is True,
    "jigsaw_toxic": lambda r: r["toxic"] == 1,
    "jigsaw_clean": lambda r: all(r[k] == 0 for k in ("toxic", "severe_toxic", "obscene", "threat", "insult",
                                                      "identity_hate")),
    "davidson_offensive": lambda r: r["neither_count"] == 0 and r["class"] in (0, 1),
    "davidson_neither": lambda r: r["hate_speech_count"] == r["offensive_language_count"] == 0 and r["class"] == 2,
    "advbench_behaviors": lambda r: r["target"].startswith("Sure"),
    "civil_comments_toxic": lambda r: r["toxicity"] > 0.8,
    "toxigen_toxic": lambda r: r["roberta_prediction"] > 0.8,
    "wikitext": lambda r: not r["text"].endswith("\n"),
}


@pytest.mark.parametrize("label, name, recipe", RECIPES, ids=[f"{lab}:{n}" for lab, n, _ in RECIPES])
def test_every_config_recipe_loads_from_the_hub(hub, label, name, recipe):
    if not recipe.get("hub"):
        with pytest.raises(DetoxflowError, match=f"recipe '{name}' only has a local source.*data_root is not set"):
            load_recipe(name, recipe, None)
        return
    rows = load_recipe(name, recipe, None)
    fmt = recipe["format"]
    expected = expected_served_rows(hub, recipe)
    assert [r["text"] for r in rows] == [TEXT_OF[fmt](r) for r in expected]
    for row, served in zip(rows, expected):
        if fmt == "rtp":
            assert row["continuation"] == served["continuation"]["text"]
            for key in ("toxicity", "severe_toxicity", "flirtation"):
                assert row[f"prompt_{key}"] == served["prompt"][key]
                assert row[f"continuation_{key}"] == served["continuation"][key]
            assert row["challenging"] is served["challenging"]
        else:
            flat = {k: v for k, v in served.items() if k != TEXT_COLUMN[fmt]}
            assert row == {**flat, "text": TEXT_OF[fmt](served)}
    assert name not in ROW_PROPERTY or all(ROW_PROPERTY[name](r) for r in rows)
    src = recipe["hub"]
    n_served = len(hub.rows[(src["path"], src.get("name") or "default", src["split"])])
    if recipe.get("where") or src.get("where"):
        assert 0 < len(rows) < n_served  # the filter kept some rows and dropped others
    assert hub.calls == [("load_dataset", src["path"], src.get("name"), src["split"])]


def test_config_recipes_names_match_the_hub(hub):
    """Each hub path/config/split named in config.yaml is one the double serves (as the hub has them)."""
    named = {(r["hub"]["path"], r["hub"].get("name") or "default", r["hub"]["split"])
             for cfg in CONFIGS.values() for r in cfg["datasets"].values() if r.get("hub")}
    assert named <= set(hub.datasets)
    assert ("toxigen/toxigen-data", "train", "train") in named


@pytest.mark.parametrize("args, kwargs, message", [
    (("skg/toxigen-data", "train"), {"split": "train"}, "no data set 'skg/toxigen-data'"),
    (("toxigen/toxigen-data", "annotated"), {"split": "train"}, "no config 'annotated'"),
    (("Salesforce/wikitext",), {"split": "test"}, "several configs"),
    (("Salesforce/wikitext", "wikitext-103-raw-v1"), {"split": "train"}, "no split 'train'"),
    (("google/civil_comments",), {"split": "train", "streaming": True}, "streaming"),
])
def test_the_double_fails_loudly_on_what_it_does_not_serve(hub, args, kwargs, message):
    import datasets

    with pytest.raises((HubMiss, TypeError), match=message):
        datasets.load_dataset(*args, **kwargs)


def test_a_wrong_hub_name_in_a_recipe_is_an_error_naming_it(hub):
    recipe = {"format": "toxigen", "hub": {"path": "skg/toxigen-data", "name": "train", "split": "train"}}
    with pytest.raises(DetoxflowError, match="recipe 't': could not load skg/toxigen-data \\(train\\), split train"):
        load_recipe("t", recipe, None)


def test_hub_wikitext_gives_the_local_files_text(hub, shared_data):
    """Hub rows keep their "\\n" and blank rows; the recipe's text is the local file's, line for line."""
    local = load_recipe("w", {"format": "wikitext", "local": {"path": "wikitext-2/wiki.test.raw"}}, shared_data)
    for config in ("wikitext-103-raw-v1", "wikitext-2-raw-v1"):
        served = hub.rows[("Salesforce/wikitext", config, "test")]
        assert served[1]["text"].endswith(" = \n") and served[0]["text"] == ""  # the hub layout, heading first
        rows = load_recipe("w", {"format": "wikitext", "hub": {"path": "Salesforce/wikitext", "name": config,
                                                                 "split": "test"}}, None)
        assert "\n".join(r["text"] for r in rows) == "\n".join(r["text"] for r in local)
        assert "\n".join(r["text"] for r in rows) == "\n".join(line for line in wikitext_local_lines() if line.strip())
        assert len(rows) == len(local) == len(served) // 2


def test_hub_and_local_copies_of_a_data_set_give_the_same_rows(hub, shared_data):
    """The shared Jigsaw sample is served as the hub's CSV: both sources give identical rows."""
    where = [{"column": "toxic", "op": "==", "value": 0}, {"column": "insult", "op": "not_in", "value": [1]}]
    recipe = {"format": "jigsaw", "where": where, "hub": {"path": "tasksource/jigsaw_toxicity", "split": "train"},
              "local": {"path": "jigsaw_sample/train.csv"}}
    from_hub = load_recipe("j", recipe, None)
    from_local = load_recipe("j", recipe, shared_data)
    assert len(from_hub) > 300
    assert [r["text"] for r in from_hub] == [r["text"] for r in from_local]
    assert [r["toxic"] for r in from_hub] == [r["toxic"] for r in from_local]


def _score_of(served, i, part="continuation", key="toxicity"):
    return served[i][part][key]


@pytest.mark.parametrize("make_where", [
    lambda s: [{"column": "continuation_toxicity", "op": "!=", "value": _score_of(s, 0)}],  # null cells pass !=
    lambda s: [{"column": "continuation_toxicity", "op": "<", "value": 0.3}],               # ... and fail <
    lambda s: [{"column": "continuation_toxicity", "op": "==", "value": None}],
    lambda s: [{"column": "continuation_toxicity", "op": "!=", "value": None}],
    lambda s: [{"column": "continuation_flirtation", "op": "not_in",
                "value": [_score_of(s, 1, key="flirtation"), _score_of(s, 2, key="flirtation")]}],
    lambda s: [{"column": "continuation_flirtation", "op": "in", "value": [None, _score_of(s, 3, key="flirtation")]}],
    lambda s: [{"column": "challenging", "op": "==", "value": False},
               {"column": "prompt_insult", "op": ">=", "value": _score_of(s, 1500, "prompt", "insult")}],
    lambda s: [{"column": "begin", "op": ">", "value": 500.5}],  # integer column, float value
    lambda s: [{"column": "begin", "op": "in", "value": [s[0]["begin"], float(s[1]["begin"])]}],
])
def test_arrow_filter_has_the_python_filters_semantics(hub, make_where):
    """Hub rows are filtered in Arrow; the same rows filtered as Python dicts give the same result."""
    served = hub.rows[("allenai/real-toxicity-prompts", "default", "train")]
    assert any(r["continuation"]["toxicity"] is None for r in served)  # the served data has null scores
    where = make_where(served)
    recipe = {"format": "rtp", "where": where, "hub": {"path": "allenai/real-toxicity-prompts", "split": "train"}}
    arrow = load_recipe("r", recipe, None)
    python = apply_where(read_records("rtp", served, "served", None), where, "served")
    assert [r["text"] for r in arrow] == [r["text"] for r in python if r["text"].strip()]
    assert 0 < len(arrow) < len(served)


def test_safeedit_downloads_from_the_double(hub):
    test = read_safeedit_file(download_safeedit("SafeEdit_test.json"), require_generalization=True)
    train = read_safeedit_file(download_safeedit("SafeEdit_train.json"))
    assert json.loads(Path(download_safeedit("SafeEdit_val.json")).read_text())[0]["id"] == 100
    assert len(test) == len(train) == 12 and test[0]["question"] != train[0]["question"]
    assert hub.calls[0] == ("hf_hub_download", "zjunlp/SafeEdit", "SafeEdit_test.json")
    with pytest.raises(DetoxflowError, match="could not download 'SafeEdit_dev.json' from the hub dataset"):
        download_safeedit("SafeEdit_dev.json")
