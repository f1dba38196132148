"""Helpers to run the Snakemake DAG in a scratch directory (used by the DAG tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_overlay(model_dir, shared_data, **sections) -> dict:
    """A config overlay that makes the default DAG run in seconds on a tiny model."""
    overlay = {
        "data_root": str(shared_data),
        "model": {"base": str(model_dir), "device": "cpu"},
        "datasets": {"rtp_prompts": {"sample": 6}},
        "evaluation": {
            "batch_tokens": 512,
            "generation": {"k": 2, "max_new_tokens": 6},
            "perplexity": {"window": 64, "stride": 32, "max_tokens": 256},
        },
        "task_vectors": {"enabled": False},
        "aura": {"enabled": False},
        "dinm": {"enabled": False},
        "safeedit": {"enabled": False},
        "capability": {"enabled": False},
        "act": {"enabled": False},
        "steering": {"enabled": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(overlay.get(key), dict):
            overlay[key].update(value)
        else:
            overlay[key] = value
    return overlay


def run_snakemake(workdir: Path, overlay: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    overlay_file = workdir / "overlay.yaml"
    overlay_file.write_text(yaml.safe_dump(overlay))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", "--configfile", str(overlay_file), *args],
        capture_output=True, text=True, env=env,
    )
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (workdir / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs}")
    return proc


def dry_run_jobs(workdir: Path, configfiles: list, *args: str) -> list[dict]:
    """The jobs of a dry run (``-n -p``): rule, wildcards, resources, threads and shell command of each."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "-n", "-p",
         "--cores", "8", "--configfile", *map(str, configfiles), *args],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(f"dry run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    jobs: list[dict] = []
    for line in proc.stdout.splitlines():
        head = line.strip()
        if line.startswith(("rule ", "localrule ")) and head.endswith(":"):
            jobs.append({"rule": head.split()[1][:-1], "resources": {}, "wildcards": {}, "threads": 1, "shell": None})
        elif not jobs:
            continue
        elif head.startswith("resources: "):
            for item in head[len("resources: "):].split(", "):
                key, _, value = item.partition("=")
                jobs[-1]["resources"][key] = int(value) if value.isdigit() else value
        elif head.startswith("wildcards: "):
            for item in head[len("wildcards: "):].split(", "):
                key, _, value = item.partition("=")
                jobs[-1]["wildcards"][key] = value
        elif head.startswith("threads: "):
            jobs[-1]["threads"] = int(head.split()[1])
        elif head.startswith("Shell command: "):
            jobs[-1]["shell"] = head[len("Shell command: "):]
    return jobs
