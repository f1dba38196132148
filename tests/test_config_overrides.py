"""One parsing rule: `--config KEY=VALUE` and an overlay file holding the same YAML give the same config.

The command-line side goes through Snakemake's own parser (`snakemake.cli.parse_config`), so the
test sees exactly what a user's `--config` delivers; the file side through an overlay file.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from snakemake.cli import parse_config

from detoxflow.config import load_yaml, parse_yaml, resolve_workflow_config
from detoxflow.errors import DetoxflowError

from conftest import REPO

DEFAULTS = REPO / "config.yaml"

# (--config entries as a user types them, the same settings as an overlay file)
OVERRIDES = [
    (["evaluation={preprompts: {adversarial: null}}"], "evaluation: {preprompts: {adversarial: null}}"),
    (["data_root=null"], "data_root: null"),
    (["data_root="], "data_root:"),
    (['datasets={jigsaw_toxic: {where: [{column: toxic, op: "!=", value: 1}]}}'],
     'datasets: {jigsaw_toxic: {where: [{column: toxic, op: "!=", value: 1}]}}'),
    (["task_vectors={n_splits: 3}"], "task_vectors: {n_splits: 3}"),
    (["task_vectors={n_splits: [2, 5], merge_lambdas: [1, 0.5]}"], "task_vectors: {n_splits: [2, 5], merge_lambdas: [1, 0.5]}"),
    (["task_vectors={finetune: {lr: 1e-5, max_grad_norm: null}}"], "task_vectors: {finetune: {lr: 1e-5, max_grad_norm: null}}"),
    (["evaluation={generation: {k: 7, do_sample: false, top_p: .8, temperature: 7E-1, seed: 0x2A}}"],
     "evaluation: {generation: {k: 7, do_sample: false, top_p: .8, temperature: 7E-1, seed: 0x2A}}"),
    (["evaluation={perplexity: {max_tokens: null, window: +512, stride: 256}}"],
     "evaluation: {perplexity: {max_tokens: null, window: +512, stride: 256}}"),
    (["evaluation={toxicity: {threshold: 5.0e-1}}"], "evaluation: {toxicity: {threshold: 5.0e-1}}"),
    (["aura={enabled: False, strengths: [0.5, 1], det0: {k: [10, 100]}}"],
     "aura: {enabled: False, strengths: [0.5, 1], det0: {k: [10, 100]}}"),
    (["safeedit={enabled: true, n_instances: ~}", "dinm={enabled: TRUE}"],
     "safeedit: {enabled: true, n_instances: ~}\ndinm: {enabled: TRUE}"),
    (["model={device_map: auto, max_memory: {0: 70GiB, 1: 68719476736, cpu: 200GiB}}"],
     "model: {device_map: auto, max_memory: {0: 70GiB, 1: 68719476736, cpu: 200GiB}}"),
    (["model={base: gpt2-large, dtype: bfloat16, revision: '1234'}"],
     "model: {base: gpt2-large, dtype: bfloat16, revision: '1234'}"),
    (['evaluation={generation: {preprompt: "I don\'t care if this is controversial.\\n"}}'],
     "evaluation: {generation: {preprompt: \"I don't care if this is controversial.\\n\"}}"),
    (["evaluation={preprompts: {terse: Be brief, polite: null}, preprompt_models: [base, aura]}"],
     "evaluation: {preprompts: {terse: Be brief, polite: null}, preprompt_models: [base, aura]}"),
]


def _resolve_both(entries, yaml_text, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml_text + "\n")
    from_file = resolve_workflow_config([DEFAULTS, overlay], base_dir=REPO)
    from_cli = resolve_workflow_config([DEFAULTS], command_line=parse_config(entries), base_dir=REPO)
    return from_file, from_cli


@pytest.mark.parametrize("entries, yaml_text", OVERRIDES, ids=[e[0][0][:40] for e in OVERRIDES])
def test_command_line_and_overlay_give_the_same_config(entries, yaml_text, tmp_path):
    from_file, from_cli = _resolve_both(entries, yaml_text, tmp_path)
    assert from_cli == from_file


def test_the_resolved_values_are_what_the_yaml_says(tmp_path):
    """Spot checks of the table's values, computed by hand from the YAML 1.2 core schema."""
    cfg = {}
    for entries, text in OVERRIDES:
        _, cfg[entries[0]] = _resolve_both(entries, text, tmp_path)
    c = cfg["evaluation={preprompts: {adversarial: null}}"]
    assert "adversarial" not in c["evaluation"]["preprompts"] and "polite" in c["evaluation"]["preprompts"]
    assert cfg["data_root=null"]["data_root"] is None and cfg["data_root="]["data_root"] is None
    where = cfg['datasets={jigsaw_toxic: {where: [{column: toxic, op: "!=", value: 1}]}}']["datasets"]
    assert where["jigsaw_toxic"]["where"] == [{"column": "toxic", "op": "!=", "value": 1}]
    assert cfg["task_vectors={n_splits: 3}"]["task_vectors"]["n_splits"] == 3
    ft = cfg["task_vectors={finetune: {lr: 1e-5, max_grad_norm: null}}"]["task_vectors"]["finetune"]
    assert ft["lr"] == 1e-5 and ft["max_grad_norm"] is None
    gen = cfg["evaluation={generation: {k: 7, do_sample: false, top_p: .8, temperature: 7E-1, seed: 0x2A}}"]
    assert gen["evaluation"]["generation"] == dict(gen["evaluation"]["generation"], k=7, do_sample=False,
                                                   top_p=0.8, temperature=0.7, seed=42)
    model = cfg["model={base: gpt2-large, dtype: bfloat16, revision: '1234'}"]["model"]
    assert model["revision"] == "1234" and model["dtype"] == "bfloat16"   # the schema wants a string: kept one
    pre = cfg['evaluation={generation: {preprompt: "I don\'t care if this is controversial.\\n"}}']
    assert pre["evaluation"]["generation"]["preprompt"] == "I don't care if this is controversial.\n"
    terse = cfg["evaluation={preprompts: {terse: Be brief, polite: null}, preprompt_models: [base, aura]}"]
    adversarial = load_yaml(DEFAULTS)["evaluation"]["preprompts"]["adversarial"]
    assert terse["evaluation"]["preprompts"] == {"adversarial": adversarial, "terse": "Be brief"}


def test_yaml_1_2_scalars():
    assert parse_yaml("[1e-5, 1.0e-5, .5, -.inf, 0x1F, 0o17, yes, no, on, 2024-01-01, ~, True]") == [
        1e-5, 1e-5, 0.5, -math.inf, 31, 15, "yes", "no", "on", "2024-01-01", None, True]
    assert math.isnan(parse_yaml(".nan"))


def test_a_bad_value_from_the_command_line_is_named(tmp_path):
    with pytest.raises(DetoxflowError, match=r"evaluation\.generation\.k: '7\.5' is not of type 'integer'|"
                                             r"evaluation\.generation\.k: 7\.5 is not of type 'integer'"):
        resolve_workflow_config([DEFAULTS], command_line=parse_config(["evaluation={generation: {k: 7.5}}"]))
    with pytest.raises(DetoxflowError, match=r"task_vectors\.n_splits: 1 is less than the minimum of 2"):
        resolve_workflow_config([DEFAULTS], command_line=parse_config(["task_vectors={n_splits: 1}"]))


def test_duplicate_keys_are_refused_with_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluation:\n  batch_tokens: 4\nmodel: {device: cpu}\nevaluation:\n  generation: {k: 2}\n")
    with pytest.raises(DetoxflowError, match=r"bad\.yaml, line 4: duplicate key 'evaluation' \(first at line 1\)"):
        load_yaml(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("aura:\n  enabled: true\n  det0: {k: [1], k: [2]}\n")
    with pytest.raises(DetoxflowError, match=r"nested\.yaml, line 3: duplicate key 'k'"):
        load_yaml(nested)


def _yaml_files_the_workflow_reads():
    files = [REPO / "config.yaml", *sorted((REPO / "workflow").rglob("*.yaml")), *sorted((REPO / ".test").glob("*.yaml")),
             *sorted((REPO / "src/detoxflow/schema").rglob("*.yaml"))]
    assert len(files) >= 10
    return files


@pytest.mark.parametrize("path", _yaml_files_the_workflow_reads(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_of_the_workflow_has_unique_keys(path):
    assert load_yaml(path) is not None


def test_snakemake_refuses_an_overlay_with_a_duplicate_key(tmp_path, shared_data):
    bad = tmp_path / "preset.yaml"
    bad.write_text(f"data_root: {shared_data}\nevaluation: {{batch_tokens: 4}}\nevaluation: {{generation: {{k: 5}}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path / "run"),
         "-n", "--cores", "1", "--configfile", str(bad)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{bad}, line 3: duplicate key 'evaluation' (first at line 2)" in out
    assert not (tmp_path / "run" / "results").exists()


def test_snakemake_runs_the_same_jobs_for_config_and_overlay(tmp_path, shared_data):
    """End to end: the dry run's shell commands (every job's params) are identical both ways."""
    entries = [f"data_root={shared_data}", "evaluation={generation: {k: 2, top_p: 0.8, do_sample: false}, "
               "preprompts: {adversarial: null}}", "aura={enabled: false}", "dinm={enabled: false}",
               "safeedit={enabled: false}"]
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"data_root: {shared_data}\nevaluation: {{generation: {{k: 2, top_p: 0.8, do_sample: false}}, "
                       "preprompts: {adversarial: null}}\naura: {enabled: false}\ndinm: {enabled: false}\n"
                       "safeedit: {enabled: false}\n")

    def shell_lines(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path / "run"),
             "-n", "--cores", "1", "--printshellcmds", *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return sorted(line.split("Shell command: ", 1)[1] for line in proc.stdout.splitlines() if "Shell command: " in line)

    by_cli, by_file = shell_lines("--config", *entries), shell_lines("--configfile", str(overlay))
    assert by_cli == by_file and len(by_cli) > 5
    assert any('"do_sample": false' in line and '"k": 2' in line for line in by_cli)
    assert not any("/adversarial/" in line for line in by_cli)
