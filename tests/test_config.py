"""Config validation: defaults filled, every bad key or value named by its dotted path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detoxflow.config import load_config, validate_config
from detoxflow.errors import DetoxflowError

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "src" / "detoxflow" / "schema"


def test_default_config_is_valid_and_filled():
    cfg = load_config([REPO / "config.yaml"], SCHEMAS)
    assert cfg["model"]["base"] == "embedded:smollm2"
    # defaults from the schema appear for keys config.yaml does not set
    assert cfg["evaluation"]["perplexity"]["window"] == 1024
    assert cfg["evaluation"]["toxicity"]["perspective"]["api_key_env"] == "PERSPECTIVE_API_KEY"
    assert cfg["datasets"]["rtp_prompts"]["min_rows"] == 1
    assert validate_config({}, SCHEMAS)["model"]["dtype"] == "float32"


@pytest.mark.parametrize("overlay, message", [
    ({"evaluation": {"generation": {"k": "five"}}}, r"evaluation\.generation\.k: 'five' is not of type 'integer'"),
    ({"evaluation": {"generaton": {}}}, r"evaluation\.generaton: unknown key"),
    ({"model": {"dtype": "float8"}}, r"model\.dtype: 'float8' is not one of"),
    ({"datasets": {"x": {"format": "csv", "sampel": 3}}}, r"datasets\.x\.sampel: unknown key"),
    ({"datasets": {"x": {"format": "parquet"}}}, r"datasets\.x\.format: 'parquet' is not one of"),
    ({"evaluation": {"toxicity": {"threshold": 1.5}}}, r"evaluation\.toxicity\.threshold: 1\.5 is greater than"),
    ({"modle": {}}, r"modle: unknown key"),
])
def test_bad_values_are_named(overlay, message):
    with pytest.raises(DetoxflowError, match=message):
        validate_config(overlay, SCHEMAS)


def test_layered_files_merge_deeply(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"evaluation": {"generation": {"k": 7}}}))
    cfg = load_config([REPO / "config.yaml", overlay], SCHEMAS)
    assert cfg["evaluation"]["generation"]["k"] == 7
    assert cfg["evaluation"]["generation"]["max_new_tokens"] == 20  # kept from config.yaml
    with pytest.raises(DetoxflowError, match="config file not found"):
        load_config([tmp_path / "nope.yaml"], SCHEMAS)


def test_overlay_drops_a_default_preprompt_with_null(tmp_path):
    base = yaml.safe_load((REPO / "config.yaml").read_text())["evaluation"]["preprompts"]
    assert set(base) == {"polite", "adversarial"}
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"evaluation": {"preprompts": {"adversarial": None, "terse": "Be brief. "}}}))
    cfg = load_config([REPO / "config.yaml", overlay], SCHEMAS)
    assert cfg["evaluation"]["preprompts"] == {"polite": base["polite"], "terse": "Be brief. "}
    with pytest.raises(DetoxflowError, match=r"evaluation\.preprompts\.polite"):
        validate_config({"evaluation": {"preprompts": {"polite": ""}}}, SCHEMAS)


def test_snakemake_refuses_a_bad_config(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"evaluation": {"generation": {"top_p": 2}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "-n", "--cores", "1", "--configfile", str(overlay)],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "evaluation.generation.top_p: 2 is greater than the maximum of 1" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_snakemake_accepts_nested_command_line_config(tmp_path, shared_data):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "-n", "--cores", "1", "--config", f"data_root={shared_data}",
         "evaluation={generation: {k: 2, top_p: 0.8, do_sample: false}}", "aura={enabled: false}",
         "dinm={enabled: false}", "safeedit={enabled: false}", "--printshellcmds"],
        capture_output=True, text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert '"do_sample": false' in out and '"k": 2' in out and '"top_p": 0.8' in out
    assert "aura_fold" not in out
