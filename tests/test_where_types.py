"""`where` values are checked against the column's type when a recipe is read, case by case.

Hub columns are typed by the data set's Arrow features (via the hub double),
local columns after pandas (CSV) or json (JSONL) typing.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hub_double import hub, hub_catalog  # noqa: F401  (fixtures)

from detoxflow.data.recipes import load_recipe
from detoxflow.errors import DetoxflowError

JIGSAW_HUB = {"path": "tasksource/jigsaw_toxicity", "split": "train"}
CIVIL_HUB = {"path": "google/civil_comments", "split": "train"}
RTP_HUB = {"path": "allenai/real-toxicity-prompts", "split": "train"}
DAVIDSON_HUB = {"path": "tdavidson/hate_speech_offensive", "split": "train"}
TOXIGEN_HUB = {"path": "toxigen/toxigen-data", "name": "train", "split": "train"}


def cond(column, op, value):
    return [{"column": column, "op": op, "value": value}]


# (recipe, message) for hub sources: the message names recipe, source, column and both types.
HUB_MISTYPED = [
    pytest.param({"format": "jigsaw", "hub": JIGSAW_HUB, "where": cond("toxic", "!=", "1")},
                 r"dataset recipe 'bad' \(hub tasksource/jigsaw_toxicity, split train\): where toxic != '1': "
                 r"column 'toxic' holds integers \(int64\) but the value '1' is a string \(str\); "
                 r"write 1 without quotes", id="string-vs-int64"),
    pytest.param({"format": "civil_comments", "hub": CIVIL_HUB, "where": cond("toxicity", ">", "0.8")},
                 r"column 'toxicity' holds floats \(float32\) but the value '0.8' is a string \(str\); "
                 r"write 0.8 without quotes", id="string-vs-float32"),
    pytest.param({"format": "rtp", "hub": RTP_HUB, "where": cond("challenging", "==", "true")},
                 r"column 'challenging' holds booleans \(bool\) but the value 'true' is a string \(str\); "
                 r"write true without quotes", id="string-vs-bool"),
    pytest.param({"format": "rtp", "hub": RTP_HUB, "where": cond("challenging", "==", 1)},
                 r"column 'challenging' holds booleans \(bool\) but the value 1 is an integer \(int\)",
                 id="int-vs-bool"),
    pytest.param({"format": "rtp", "hub": RTP_HUB, "where": cond("prompt_toxicity", "<", True)},
                 r"column 'prompt_toxicity' holds floats \(float64\) but the value True is a boolean \(bool\)",
                 id="bool-vs-float"),
    pytest.param({"format": "davidson", "hub": DAVIDSON_HUB, "where": cond("class", "in", [0, "1"])},
                 r"where class in \[0, '1'\] \(element 1\): column 'class' holds integers "
                 r"\(ClassLabel int64 \(0=hate speech, 1=offensive language, 2=neither\)\) "
                 r"but the value '1' is a string", id="list-element"),
    pytest.param({"format": "davidson", "hub": DAVIDSON_HUB, "where": cond("class", "==", "neither")},
                 r"the value 'neither' is a string \(str\); the class 'neither' is number 2", id="classlabel-name"),
    pytest.param({"format": "toxigen", "hub": TOXIGEN_HUB, "where": cond("group", "==", 1)},
                 r"column 'group' holds strings \(string\) but the value 1 is an integer \(int\)",
                 id="int-vs-string"),
    pytest.param({"format": "toxigen", "hub": TOXIGEN_HUB, "where": cond("roberta_prediction", ">", None)},
                 r"where roberta_prediction > None: op '>' needs a value, got null", id="order-vs-null"),
    pytest.param({"format": "toxigen", "hub": TOXIGEN_HUB, "where": cond("prompt_label", "in", 1)},
                 r"where on 'prompt_label': op 'in' needs a list value, got 1", id="in-needs-list"),
    pytest.param({"format": "toxigen", "hub": TOXIGEN_HUB, "where": cond("prompt_label", "==", [0, 1])},
                 r"op '==' compares with one value, got \[0, 1\] \(use op 'in' for a list\)", id="eq-with-list"),
    pytest.param({"format": "civil_comments", "hub": CIVIL_HUB, "where": cond("toxic", "==", 1)},
                 r"dataset recipe 'bad' \(hub google/civil_comments, split train\): no column 'toxic' to filter on "
                 r"\(columns: identity_attack, insult, obscene, severe_toxicity, sexual_explicit, text, threat, "
                 r"toxicity\)", id="missing-column"),
]


@pytest.mark.parametrize("recipe, message", HUB_MISTYPED)
def test_hub_where_value_of_the_wrong_type_is_an_error(hub, recipe, message):
    with pytest.raises(DetoxflowError, match=message):
        load_recipe("bad", recipe, None)


def test_numbers_compare_with_float_and_integer_columns(hub):
    served = hub.rows[("google/civil_comments", "default", "train")]
    rows = load_recipe("c", {"format": "civil_comments", "hub": CIVIL_HUB, "where": cond("toxicity", ">=", 1)}, None)
    assert len(rows) == sum(1 for r in served if r["toxicity"] >= 1 and r["text"].strip()) > 0
    served = hub.rows[("tasksource/jigsaw_toxicity", "default", "train")]
    rows = load_recipe("j", {"format": "jigsaw", "hub": JIGSAW_HUB, "where": cond("toxic", "in", [1.0])}, None)
    assert len(rows) == sum(1 for r in served if r["toxic"] == 1) > 0


def test_booleans_strings_and_null_values_that_fit(hub):
    rtp = load_recipe("r", {"format": "rtp", "hub": RTP_HUB, "where": cond("challenging", "==", False)}, None)
    served = hub.rows[("allenai/real-toxicity-prompts", "default", "train")]
    assert len(rtp) == sum(1 for r in served if r["challenging"] is False) > 0
    tox = load_recipe("t", {"format": "toxigen", "hub": TOXIGEN_HUB, "where": cond("group", "in", ["women", "lgbtq"])},
                      None)
    assert len(tox) == sum(1 for r in hub.rows[("toxigen/toxigen-data", "train", "train")]
                           if r["group"] in ("women", "lgbtq")) > 0
    nulls = load_recipe("n", {"format": "rtp", "hub": RTP_HUB, "where": cond("continuation_toxicity", "==", None)},
                        None)
    assert len(nulls) == sum(1 for r in served if r["continuation"]["toxicity"] is None) > 0


# -- local sources: types after pandas / json typing ------------------------------------------

LOCAL_MISTYPED = [
    pytest.param({"format": "jigsaw", "local": {"path": "jigsaw_sample/train.csv"}, "where": cond("toxic", "!=", "1")},
                 r"dataset recipe 'bad' \(.*jigsaw_sample/train.csv\): where toxic != '1': column 'toxic' holds "
                 r"integers \(int\) but the value '1' is a string \(str\); write 1 without quotes", id="csv-int"),
    pytest.param({"format": "rtp", "local": {"path": "rtp/nontoxic.jsonl"},
                  "where": cond("challenging", "==", "false")},
                 r"column 'challenging' holds booleans \(bool\) but the value 'false' is a string", id="jsonl-bool"),
    pytest.param({"format": "rtp", "local": {"path": "rtp/nontoxic.jsonl"},
                  "where": cond("prompt_toxicity", "not_in", [0.5, "0.7"])},
                 r"\(element 1\): column 'prompt_toxicity' holds floats \(float\) but the value '0.7' is a string",
                 id="jsonl-float-list"),
    pytest.param({"format": "davidson", "local": {"path": "davidson/labeled_data.csv"}, "where": cond("text", ">", 3)},
                 r"column 'text' holds strings \(str\) but the value 3 is an integer", id="csv-string"),
]


@pytest.mark.parametrize("recipe, message", LOCAL_MISTYPED)
def test_local_where_value_of_the_wrong_type_is_an_error(shared_data, recipe, message):
    with pytest.raises(DetoxflowError, match=message):
        load_recipe("bad", recipe, shared_data)


def test_local_csv_float_column_with_blanks(tmp_path):
    (tmp_path / "s.csv").write_text("text,score,flag\na,0.5,True\nb,,False\nc,0.9,True\n")
    recipe = {"format": "csv", "local": {"path": "s.csv"}}
    with pytest.raises(DetoxflowError, match=r"column 'score' holds floats \(float\) but the value '0.5' is a string"):
        load_recipe("s", {**recipe, "where": cond("score", ">", "0.5")}, tmp_path)
    with pytest.raises(DetoxflowError, match=r"column 'flag' holds booleans \(bool\) but the value 1 is an integer"):
        load_recipe("s", {**recipe, "where": cond("flag", "==", 1)}, tmp_path)
    # a blank cell is null: it passes != and fails >
    assert [r["text"] for r in load_recipe("s", {**recipe, "where": cond("score", "!=", 0.5)}, tmp_path)] == ["b", "c"]
    assert [r["text"] for r in load_recipe("s", {**recipe, "where": cond("score", ">", 0)}, tmp_path)] == ["a", "c"]
    assert [r["text"] for r in load_recipe("s", {**recipe, "where": cond("flag", "==", True)}, tmp_path)] == ["a", "c"]


def test_local_jsonl_mixed_and_null_columns(tmp_path):
    rows = [{"text": "a", "v": 1, "n": None}, {"text": "b", "v": "x", "n": None}, {"text": "c", "v": 2, "n": None}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"format": "jsonl", "local": {"path": "m.jsonl"}}
    # a column of mixed types is not type-checked; equality still works, ordering is an error naming the column
    assert [r["text"] for r in load_recipe("m", {**recipe, "where": cond("v", "in", [1, "x"])}, tmp_path)] == ["a", "b"]
    with pytest.raises(DetoxflowError, match=r"dataset recipe 'm' \(.*m.jsonl\): cannot compare column 'v' with 0"):
        load_recipe("m", {**recipe, "where": cond("v", ">", 0)}, tmp_path)
    # a column with only nulls has no type to check against
    assert len(load_recipe("m", {**recipe, "where": cond("n", "==", None)}, tmp_path)) == 3
    with pytest.raises(DetoxflowError, match="0 rows after filtering"):
        load_recipe("m", {**recipe, "where": cond("n", "==", 3)}, tmp_path)


def test_local_davidson_class_list_of_numbers(shared_data):
    df = pd.read_csv(shared_data / "davidson/labeled_data.csv")
    rows = load_recipe("d", {"format": "davidson", "local": {"path": "davidson/labeled_data.csv"},
                             "where": cond("class", "in", [0, 1.0])}, shared_data)
    assert len(rows) == int(df["class"].isin([0, 1]).sum())
