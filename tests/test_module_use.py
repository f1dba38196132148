"""detoxflow used as a Snakemake module by another workflow (README, "Using detoxflow as a module").

An outer workflow in a scratch folder imports this checkout's Snakefile with `module` + `use rule *
... as detoxflow_*`, passes a `detoxflow:` block of its config, and adds a rule of its own. Checked
against a dry run of the checkout itself with the same settings: the same jobs, prefixed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from detoxflow.config import load_yaml

from conftest import REPO
from pipeline import dry_run_jobs

OFFLINE = load_yaml(REPO / "workflow" / "presets" / "offline.yaml")
NO_METHODS = {"aura": {"enabled": False}, "dinm": {"enabled": False}, "safeedit": {"enabled": False},
              "task_vectors": {"enabled": False}, "act": {"enabled": False}, "steering": {"enabled": False}}


def outer_snakefile(use_line: str = "use rule * from detoxflow as detoxflow_*", module_extra: str = "") -> str:
    """An outer workflow: detoxflow as a module, its own default target and one rule on detoxflow's table."""
    return f"""
configfile: "config.yaml"


module detoxflow:
    snakefile:
        "{REPO / 'Snakefile'}"
    config:
        config["detoxflow"]
{module_extra}

{use_line}


rule all:
    default_target: True
    input:
        rules.detoxflow_all.input,
        "outer/table.tsv",


rule outer_table:
    input:
        rules.detoxflow_summarize.output.csv,
    output:
        "outer/table.tsv",
    shell:
        "tr , '\\\\t' < {{input}} > {{output}}"
"""


def write_outer(folder: Path, detoxflow_config: dict, snakefile: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Snakefile").write_text(snakefile or outer_snakefile())
    (folder / "config.yaml").write_text(yaml.safe_dump({"detoxflow": detoxflow_config}))
    return folder


def snakemake(workflow_dir: Path, *args: str, workdir: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    workdir = workdir or workflow_dir
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(workflow_dir / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", *args],
        capture_output=True, text=True, env=env, cwd=workdir,
    )


def jobs_of(stdout: str) -> list[dict]:
    """(rule, shell command) of every job of a dry run with -p."""
    jobs: list[dict] = []
    for line in stdout.splitlines():
        head = line.strip()
        if line.startswith(("rule ", "localrule ")) and head.endswith(":"):
            jobs.append({"rule": head.split()[1][:-1], "shell": None})
        elif jobs and head.startswith("Shell command: "):
            jobs[-1]["shell"] = head[len("Shell command: "):]
    return jobs


def offline_overlay(data_root, **sections) -> dict:
    overlay = copy.deepcopy(OFFLINE)
    overlay["data_root"] = str(data_root)
    overlay.update(copy.deepcopy(sections))
    return overlay


@pytest.fixture(scope="module")
def standalone_jobs(tmp_path_factory, shared_data) -> list[dict]:
    """The checkout's own dry run with the offline preset: what the module must schedule, unprefixed."""
    workdir = tmp_path_factory.mktemp("standalone")
    overlay = workdir / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"data_root": str(shared_data)}))
    return dry_run_jobs(workdir / "run", [REPO / "workflow" / "presets" / "offline.yaml", overlay])


def test_outer_workflow_schedules_every_detoxflow_job_prefixed(tmp_path, shared_data, standalone_jobs):
    outer = write_outer(tmp_path / "outer", offline_overlay(shared_data))
    proc = snakemake(outer, "-n", "-p")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jobs = jobs_of(proc.stdout)
    rules = Counter(j["rule"] for j in jobs)
    # the outer workflow's own rules, and detoxflow's rules under the prefix only
    assert rules.pop("all") == 1 and rules.pop("outer_table") == 1
    assert all(r.startswith("detoxflow_") for r in rules), sorted(rules)
    expected = Counter(j["rule"] for j in standalone_jobs if j["rule"] != "all")
    assert Counter({r[len("detoxflow_"):]: n for r, n in rules.items()}) == expected
    assert sum(rules.values()) == len(standalone_jobs) - 1
    # the outer config's data_root reached the jobs; they call the detoxflow CLI
    datasets = [j["shell"] for j in jobs if j["rule"] == "detoxflow_dataset"]
    assert datasets and all(f"--data-root {shared_data}" in s for s in datasets)
    assert all(j["shell"].startswith("detoxflow ") for j in jobs if j["rule"].startswith("detoxflow_") and j["shell"])


def test_the_module_config_is_checked_and_errors_name_the_key_inside_it(tmp_path, shared_data):
    config = offline_overlay(shared_data, evaluation={"generaton": {"k": 2}})
    proc = snakemake(write_outer(tmp_path / "outer", config), "-n")
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr  # Snakemake 9 prints the error on stdout
    assert "detoxflow used as module 'detoxflow'" in output
    assert "evaluation.generaton: unknown key" in output


def test_outer_config_values_are_read_like_config_values(tmp_path, shared_data):
    # Snakemake's YAML 1.1 leaves `1e-5` a string; detoxflow reads it as its own files do: a number
    config = offline_overlay(shared_data, **NO_METHODS)
    del config["task_vectors"]
    outer = tmp_path / "outer"
    write_outer(outer, config)
    tv = "  task_vectors: {enabled: true, dataset: davidson_toxic, finetune: {lr: 1e-5}}\n"
    text = (outer / "config.yaml").read_text().replace("detoxflow:\n", "detoxflow:\n" + tv)
    (outer / "config.yaml").write_text(text)
    assert yaml.safe_load(text)["detoxflow"]["task_vectors"]["finetune"]["lr"] == "1e-5"
    proc = snakemake(outer, "-n", "-p")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    finetunes = [j["shell"] for j in jobs_of(proc.stdout) if j["rule"] == "detoxflow_tv_finetune"]
    assert finetunes
    for shell in finetunes:
        settings = json.loads(re.search(r"--settings '([^']*)'", shell).group(1))
        assert settings["lr"] == 1e-5


def test_relative_data_root_is_taken_from_the_working_directory(tmp_path, shared_data):
    outer = write_outer(tmp_path / "outer", offline_overlay("local/data", **NO_METHODS))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / "config.yaml").write_text((outer / "config.yaml").read_text())
    proc = snakemake(outer, "-n", "-p", workdir=workdir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    datasets = [j["shell"] for j in jobs_of(proc.stdout) if j["rule"] == "detoxflow_dataset"]
    assert datasets and all(f"--data-root {workdir / 'local' / 'data'} " in s for s in datasets)


def test_prefix_is_refused_with_the_reason(tmp_path, shared_data):
    snakefile = outer_snakefile(module_extra='    prefix:\n        "detox"\n')
    proc = snakemake(write_outer(tmp_path / "outer", offline_overlay(shared_data), snakefile), "-n")
    assert proc.returncode != 0
    assert "`prefix:` / `replace_prefix:` are not supported" in proc.stdout + proc.stderr


def test_excluding_detoxflows_all_leaves_the_outer_default_target(tmp_path, shared_data):
    snakefile = outer_snakefile(use_line="use rule * from detoxflow exclude all as detoxflow_*")
    snakefile = snakefile.replace("        rules.detoxflow_all.input,\n", "")
    proc = snakemake(write_outer(tmp_path / "outer", offline_overlay(shared_data, **NO_METHODS), snakefile),
                     "-n")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rules = Counter(j["rule"] for j in jobs_of(proc.stdout))
    assert rules["all"] == 1 and rules["outer_table"] == 1 and "detoxflow_all" not in rules
    assert rules["detoxflow_summarize"] == 1


def _stub_summary_outputs(workdir: Path) -> None:
    """The files the summary marks for the report (their content does not matter to the report)."""
    (workdir / "results" / "plots").mkdir(parents=True)
    (workdir / "results" / "summary.csv").write_text("variant,perplexity\nbase,1.0\n")
    (workdir / "results" / "summary.md").write_text("| variant |\n|---|\n| base |\n")
    (workdir / "results" / "samples.csv").write_text("variant,text\nbase,x\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in ("toxicity_vs_perplexity.png", "capability_vs_toxicity.png"):
        plt.figure()
        plt.plot([0, 1])
        plt.savefig(workdir / "results" / "plots" / name)
        plt.close()


def _report_description(html: Path) -> str:
    match = re.search(r'var workflow_desc = ("(?:[^"\\]|\\.)*");', html.read_text())
    assert match, "no workflow description in the report"
    return json.loads(match.group(1))


@pytest.mark.parametrize("as_module", [True, False], ids=["module", "standalone"])
def test_report_shows_the_base_model_and_the_references(tmp_path, shared_data, as_module):
    config = offline_overlay(shared_data, model={"base": "tiny/test-model"}, **NO_METHODS)
    if as_module:
        workdir = write_outer(tmp_path / "outer", config)
        proc_dir = workdir
    else:
        workdir = tmp_path / "run"
        workdir.mkdir()
        (workdir / "overlay.yaml").write_text(yaml.safe_dump(config))
        proc_dir = None
    _stub_summary_outputs(workdir)
    report = tmp_path / "report.html"
    if as_module:
        proc = snakemake(proc_dir, "--report", str(report))
    else:
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"))
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
             "--cores", "1", "--configfile", str(workdir / "overlay.yaml"), "--report", str(report)],
            capture_output=True, text=True, env=env, cwd=workdir,
        )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    desc = _report_description(report)
    assert "tiny/test-model" in desc and "profanity-check" in desc
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    text = " ".join(re.sub(r"<[^>]+>", " ", desc).split())
    for ref in citation["references"]:
        if ref["type"] != "data":
            assert ref["title"] in text, ref["title"]
