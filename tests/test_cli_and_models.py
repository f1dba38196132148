"""CLI error handling (exit 2, one message, no half-written output) and model folders."""

from __future__ import annotations

import json
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
