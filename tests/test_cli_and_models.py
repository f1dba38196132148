"""CLI error handling (exit 2, one message, no half-written output) and model folders."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from detoxflow.errors import DetoxflowError
from detoxflow.io import atomic_path
from detoxflow.models import load_model, materialise, read_metadata


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "detoxflow", *args], capture_output=True, text=True, env=env)


def test_bad_recipe_exits_2_and_writes_nothing(tmp_path, shared_data):
    out = tmp_path / "data" / "x.jsonl"
    recipe = {"format": "davidson", "local": {"path": "davidson/labeled_data.csv"},
              "where": [{"column": "label", "op": "==", "value": 1}]}
    proc = _cli("dataset", "--name", "x", "--recipe", json.dumps(recipe), "--data-root", str(shared_data),
                "--out", str(out))
    assert proc.returncode == 2
    assert "no column 'label'" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(out.parent.glob("*"))


def test_dataset_cli_writes_rows(tmp_path, shared_data):
    out = tmp_path / "adv.jsonl"
    recipe = {"format": "advbench", "local": {"path": "advbench/harmful_behaviors.csv"}, "sample": 5, "seed": 1}
    proc = _cli("dataset", "--name", "adv", "--recipe", json.dumps(recipe), "--data-root", str(shared_data),
                "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["text"] and r["target"] for r in rows)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_widens_owner_only_files_to_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model") as tmp:
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(b"x")
            os.chmod(tmp / "model.safetensors", 0o600)  # as safetensors leaves it
        with atomic_path(tmp_path / "file.json") as tmp:
            tmp.write_text("{}")
            os.chmod(tmp, 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o644


def test_offline_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DetoxflowError, match="neither a local folder nor reachable on the Hugging Face hub"):
        materialise("some-org/not-a-cached-model", tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_local_folder_round_trip(tmp_path, tiny_llama_dir):
    out = materialise(str(tiny_llama_dir), tmp_path / "base")
    assert (out / "model.safetensors").is_file()
    assert read_metadata(out)["method"] == "base"
    a, b = load_model(tiny_llama_dir, device="cpu"), load_model(out, device="cpu")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and (va == vb).all()
    with pytest.raises(DetoxflowError, match="no config.json"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(DetoxflowError, match="unknown dtype"):
        materialise(str(tiny_llama_dir), tmp_path / "b2", dtype="float8")


# -- damaged model folders: one line naming the file, exit 2, nothing written -------------------

def _safetensors_header(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return n, {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}


class _RunsCode:
    """A pickled object whose unpickling would run code (creates the file named)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _break_truncated(folder, tmp_path):
    """Cut model.safetensors one byte into the data of its third tensor (by offset)."""
    path = folder / "model.safetensors"
    n, header = _safetensors_header(path)
    name, info = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])[2]
    path.write_bytes(path.read_bytes()[:8 + n + info["data_offsets"][0] + 1])
    return [str(path), f"tensor '{name}'", "truncated"]


def _break_shard(folder, tmp_path):
    """Re-save sharded and delete the last shard."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="2MB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    assert len(set(index["weight_map"].values())) >= 2
    (folder / last).unlink()
    first_tensor = next(t for t, shard in index["weight_map"].items() if shard == last)
    return [str(folder / "model.safetensors.index.json"), last, f"tensor '{first_tensor}'", "missing"]


def _break_pickle(folder, tmp_path):
    """Replace the weights by a pytorch_model.bin that also holds a code-running object."""
    import torch
    from transformers import AutoModelForCausalLM

    state = dict(AutoModelForCausalLM.from_pretrained(folder).state_dict())
    state["extra"] = _RunsCode(tmp_path / "code_ran")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return [str(folder / "pytorch_model.bin"), "refused by weights-only loading", "Unsupported global"]


def _break_config(folder, tmp_path):
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_embd": 32,\n  "n_layer" 2}')
    return [str(folder / "config.json"), "not valid JSON", "line 2 column 13"]


@pytest.mark.parametrize("fault", [_break_truncated, _break_shard, _break_pickle, _break_config],
                         ids=["truncated-safetensors", "missing-shard", "unsafe-pickle", "config-not-json"])
def test_a_damaged_model_folder_is_one_line_naming_the_file(tmp_path, tiny_gpt2_dir, fault):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_gpt2_dir, folder)
    expected = fault(folder, tmp_path)
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "Some text to measure the perplexity of, long enough."}) + "\n")
    runs = {
        "perplexity": ["perplexity", "--model", str(folder), "--text", str(text), "--device", "cpu",
                       "--settings", json.dumps({"window": 16, "stride": 8}), "--out", str(tmp_path / "ppl.json")],
        "materialise": ["materialise", "--spec", str(folder), "--out", str(tmp_path / "base")],
    }
    for command, argv in runs.items():
        proc = _cli(*argv)
        assert proc.returncode == 2, (command, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"detoxflow {command}: error: "), proc.stderr
        for part in expected:
            assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "ppl.json").exists() and not (tmp_path / "base").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("broken", "text.jsonl")] == []
    assert not (tmp_path / "code_ran").exists()  # the pickled object was never run
    with pytest.raises(DetoxflowError, match=re.escape(expected[0])):
        load_model(folder, device="cpu")


def test_sound_bin_and_sharded_folders_still_load(tmp_path, tiny_gpt2_dir):
    """No false alarm: the same weights as pytorch_model.bin (tensors only) and as shards."""
    import torch
    from transformers import AutoModelForCausalLM

    reference = load_model(tiny_gpt2_dir, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    model.save_pretrained(tmp_path / "shards", max_shard_size="2MB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # transformers 5 writes safetensors only
    for name in ("bin", "shards"):
        loaded = load_model(tmp_path / name, device="cpu")
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, reference(ids).logits), name


def test_auto_dtype_follows_native_bf16_on_the_cpu(tmp_path, monkeypatch):
    import torch

    from detoxflow import runtime

    with_bf16 = tmp_path / "cpuinfo_bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    without = tmp_path / "cpuinfo_plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert runtime.cpu_has_native_bf16(str(with_bf16)) and not runtime.cpu_has_native_bf16(str(without))
    assert not runtime.cpu_has_native_bf16(str(tmp_path / "missing"))
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert runtime.resolve_dtype("auto", torch.device("cpu")) == expected
        assert runtime.resolve_dtype("auto") == torch.float32  # writing a folder: float32
        assert runtime.resolve_dtype("float32", torch.device("cpu")) == torch.float32
