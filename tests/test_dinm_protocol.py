"""The per-instance protocol (edit, answer, restore) and the CLI around it, on a tiny model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import judge_settings
from detoxflow.cli import main
from detoxflow.config import section_defaults
from detoxflow.methods.dinm import DinmSettings
from detoxflow.data.safeedit_standin import build_standin
from detoxflow.models import load_model, load_tokenizer
from detoxflow.evaluation.safeedit.responses import build_requests, fill_responses, score_rows
from detoxflow.methods.dinm.protocol import per_instance_report, report_markdown, run_per_instance

EVAL = {"prompt": {"suffix": "Answer:", "chat_template": False, "suffix_for": "all"},
        "generation": {"max_new_tokens": 3, "batch_tokens": 256}}
DINM = DinmSettings.defaults(lr=1e-2, steps=2, suffix=EVAL["prompt"]["suffix"], chat_template=False)


@pytest.fixture(scope="module")
def standin(shared_data):
    rows = pd.read_csv(shared_data / "advbench" / "harmful_behaviors.csv").to_dict("records")
    return build_standin(rows, n_train=1, n_test=2, seed=0)


def test_per_instance_reuses_vanilla_and_restores(tiny_llama_dir, standin):
    _, test = standin
    model, tok = load_model(tiny_llama_dir, device="cpu"), load_tokenizer(tiny_llama_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_rows = build_requests(test, tok, suffix="Answer:", chat_template=False)
    fill_responses(model, tok, base_rows, **EVAL["generation"])
    cache = {r["prompt"]: r["response"] for r in base_rows}

    rows, edits, timing = run_per_instance(model, tok, test, settings=DINM, evaluation=EVAL, vanilla_cache=cache)
    assert timing["vanilla_generated"] == 0 and timing["vanilla_reused"] == len(base_rows)
    assert all(torch.equal(before[n], p.detach()) for n, p in model.named_parameters())   # restored
    vanilla = [r for r in rows if r["variant"] == "vanilla"]
    edited = [r for r in rows if r["variant"] == "dinm"]
    assert len(vanilla) == len(edited) == 10
    assert [r["response"] for r in vanilla] == [cache[r["prompt"]] for r in vanilla]
    assert [e["id"] for e in edits] == [r["id"] for r in test]
    for e in edits:
        assert e["edited_parameters"] == [f"model.layers.{e['layer']}.mlp.down_proj.weight"]
        assert e["nll_after"] < e["nll_before"]

    # the straightforward way regenerates the same vanilla responses for every instance
    rows2, _, timing2 = run_per_instance(model, tok, test, settings=DINM, evaluation=EVAL, vanilla="regenerate")
    assert timing2["vanilla_generated"] == 10
    assert [r["response"] for r in rows2 if r["variant"] == "vanilla"] == [r["response"] for r in vanilla]
    # editing is deterministic: the same edited responses
    assert [r["response"] for r in rows2 if r["variant"] == "dinm"] == [r["response"] for r in edited]

    scored = score_rows(rows, judge_settings())
    report = per_instance_report(scored, edits, timing)
    for variant in ("vanilla", "dinm"):
        labels = [r["label"] for r in scored if r["variant"] == variant and r["kind"] == "DS"]
        assert report[variant]["safeedit_DS"] == pytest.approx(100 - 100 * sum(labels) / len(labels))
        assert report[variant]["safeedit_n_instances"] == 2
    assert sum(report["layer_counts"].values()) == 2
    md = report_markdown(report)
    assert md.startswith("# DINM per instance") and "| vanilla |" in md and "| dinm |" in md


def test_per_instance_with_the_references_asymmetric_prompt(tiny_llama_dir, standin):
    """suffix_for: edited: the vanilla model answers the bare inputs, the edited one the inputs + DINM's suffix."""
    _, test = standin
    model, tok = load_model(tiny_llama_dir, device="cpu"), load_tokenizer(tiny_llama_dir)
    evaluation = dict(EVAL, prompt=dict(EVAL["prompt"], suffix="Ignored:", suffix_for="edited"))
    rows, edits, _ = run_per_instance(model, tok, test[:1], settings=DINM, evaluation=evaluation)
    vanilla = [r for r in rows if r["variant"] == "vanilla"]
    edited = [r for r in rows if r["variant"] == "dinm"]
    assert len(vanilla) == len(edited) == 5
    assert all(r["prompt"] == r["input"] for r in vanilla)
    assert all(r["prompt"] == r["input"] + " Answer:" for r in edited)   # DINM's suffix (DINM.suffix)
    symmetric, _, _ = run_per_instance(model, tok, test[:1], settings=DINM, evaluation=EVAL)
    assert all(r["prompt"] == r["input"] + " Answer:" for r in symmetric)


def test_declared_prompt_suffix_is_read_and_checked(tmp_path, tiny_gpt2_dir):
    from detoxflow.errors import DetoxflowError
    from detoxflow.evaluation.safeedit.responses import prompt_suffix
    from detoxflow.models import declared_prompt_suffix, inference_metadata

    assert declared_prompt_suffix(tiny_gpt2_dir) is None and declared_prompt_suffix(tmp_path) is None
    assert inference_metadata("") == {} and inference_metadata("S:") == {"inference": {"prompt_suffix": "S:"}}
    (tmp_path / "detoxflow.json").write_text(json.dumps({"method": "x", "inference": {"prompt_suffix": 3}}))
    with pytest.raises(DetoxflowError, match="inference.prompt_suffix` must be a string, got int"):
        declared_prompt_suffix(tmp_path)
    assert prompt_suffix({"suffix": "A", "suffix_for": "all"}, "B") == "A"
    assert prompt_suffix({"suffix": "A", "suffix_for": "edited"}, "B") == "B"
    assert prompt_suffix({"suffix": "A", "suffix_for": "edited"}, None) == ""
    with pytest.raises(DetoxflowError, match="suffix_for: 'some' is not one of all, edited"):
        prompt_suffix({"suffix": "A", "suffix_for": "some"}, None)


def _standin_files(tmp_path, shared_data, *, n_rows: int, n_train: int, n_test: int):
    """train.json and test.json of the SafeEdit stand-in, built by `safeedit-data` from AdvBench's first rows."""
    adv = tmp_path / "advbench.jsonl"
    rows = pd.read_csv(shared_data / "advbench" / "harmful_behaviors.csv").head(n_rows)
    adv.write_text("\n".join(json.dumps({"text": g, "target": t}) for g, t in zip(rows["goal"], rows["target"])))
    standin = dict(section_defaults("safeedit")["data"]["standin"], n_train=n_train, n_test=n_test, seed=1)
    settings = json.dumps({"source": "standin", "standin": standin})
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    assert main(["safeedit-data", "--settings", settings, "--advbench", str(adv), "--train", str(train),
                 "--test", str(test)]) == 0
    return train, test


def test_cli_data_generate_score_edit(tmp_path, tiny_gpt2_dir, shared_data):
    train, test = _standin_files(tmp_path, shared_data, n_rows=12, n_train=1, n_test=2)
    assert len(json.loads(train.read_text())) == 1 and len(json.loads(test.read_text())) == 2

    gen = tmp_path / "gen.jsonl"
    assert main(["safeedit-generate", "--model", str(tiny_gpt2_dir), "--data", str(test), "--settings",
                 json.dumps(dict(EVAL, n_instances=None)), "--device", "cpu", "--out", str(gen)]) == 0
    gen_rows = [json.loads(line) for line in gen.read_text().splitlines()]
    assert [r["kind"] for r in gen_rows[:5]] == ["DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"]
    assert all(r["prompt"] == r["input"] + " Answer:" for r in gen_rows)

    scored, metrics = tmp_path / "scored.jsonl", tmp_path / "safeedit.json"
    assert main(["safeedit-score", "--generations", str(gen), "--judge", json.dumps(judge_settings()),
                 "--scored", str(scored), "--metrics", str(metrics)]) == 0
    m = json.loads(metrics.read_text())["metrics"]
    assert m["safeedit_n_instances"] == 2
    assert set(m) >= {"safeedit_DS", "safeedit_DG_avg", "safeedit_fluency"}

    out, record = tmp_path / "dinm", tmp_path / "edits.json"
    settings = json.dumps(DinmSettings.defaults(lr=1e-2, steps=2, suffix="Answer:").as_dict())
    edit = ["--instances", "1", "--mode", "sequential", "--seed", "0", "--device", "cpu"]
    assert main(["dinm-edit-model", "--model", str(tiny_gpt2_dir), "--data", str(train), "--settings", settings,
                 *edit, "--out", str(out), "--record", str(record)]) == 0
    meta = json.loads((out / "detoxflow.json").read_text())
    rec = json.loads(record.read_text())
    assert meta["method"] == "dinm" and meta["params"]["edit_instances"] == 1
    assert meta["params"]["edit_layers"] == str(rec["edits"][0]["layers"][0])
    assert meta["inference"] == {"prompt_suffix": "Answer:"}   # the suffix it edited with, declared

    # suffix_for: edited (the reference): the folder that declares a suffix gets its own, others none,
    # whatever safeedit.prompt.suffix says; suffix_for: all gives everyone safeedit.prompt.suffix
    for folder, suffix_for, ending in ((tiny_gpt2_dir, "edited", ""), (out, "edited", " Answer:"),
                                       (tiny_gpt2_dir, "all", " Respond:"), (out, "all", " Respond:")):
        prompt = {"suffix": "Respond:", "chat_template": False, "suffix_for": suffix_for}
        assert main(["safeedit-generate", "--model", str(folder), "--data", str(test), "--settings",
                     json.dumps(dict(EVAL, prompt=prompt, n_instances=1)), "--device", "cpu", "--out", str(gen)]) == 0
        gen_rows = [json.loads(line) for line in gen.read_text().splitlines()]
        assert len(gen_rows) == 5 and all(r["prompt"] == r["input"] + ending for r in gen_rows), (folder, suffix_for)
    # a bad section is a user error (exit 2), not a traceback
    assert main(["dinm-edit-model", "--model", str(tiny_gpt2_dir), "--data", str(train), "--settings",
                 json.dumps({"stepz": 1}), *edit, "--out", str(out), "--record", str(record)]) == 2


def test_edit_under_auto_dtype_is_float32_on_a_bf16_cpu(tmp_path, tiny_gpt2_dir, shared_data, monkeypatch):
    """model.dtype: auto gives bfloat16 for inference on a CPU with native bf16, but DINM trains a layer:
    its edit (and the folder it writes) stays float32; an explicit bfloat16 is kept."""
    from safetensors import safe_open

    from detoxflow import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    train, _ = _standin_files(tmp_path, shared_data, n_rows=4, n_train=1, n_test=1)
    settings = json.dumps(DinmSettings.defaults(lr=1e-2, steps=1, suffix="Answer:").as_dict())
    dtypes = {}
    for dtype in ("auto", "bfloat16"):
        out = tmp_path / f"dinm_{dtype}"
        assert main(["dinm-edit-model", "--model", str(tiny_gpt2_dir), "--data", str(train), "--settings", settings,
                     "--instances", "1", "--mode", "sequential", "--seed", "0", "--device", "cpu", "--dtype", dtype,
                     "--out", str(out), "--record", str(tmp_path / f"edits_{dtype}.json")]) == 0
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            dtypes[dtype] = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"auto": {"F32"}, "bfloat16": {"BF16"}}
