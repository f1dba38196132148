"""The SLURM profile: a dry run through it resolves every preset's DAG, every job that requests a GPU
is sent to a GPU partition by the SLURM plugin's own partition selection (no list of rule names), and
the profile names no rule that does not exist."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from detoxflow.config import load_yaml
from pipeline import REPO, dry_run_jobs

partitions = pytest.importorskip("snakemake_executor_plugin_slurm.partitions",
                                 reason="install the cluster extra: pip install -e '.[cluster]'")

PROFILE = REPO / "workflow" / "profiles" / "slurm"
PRESETS = REPO / "workflow" / "presets"


class Resources(dict):
    def __getattr__(self, name):
        return self.get(name)


def fake_job(job: dict):
    """What the plugin's partition selection reads of a job, from the dry run's job description."""
    return SimpleNamespace(name=job["rule"], threads=job["threads"], resources=Resources(job["resources"]),
                           is_group=lambda: False)


@pytest.mark.parametrize("configfiles", [
    ["offline.yaml", "../../.test/config.yaml"],
    ["gpt2-large.yaml", "offline.yaml"],
    ["mistral-7b.yaml"],
], ids=["test-every-stage", "gpt2-large+offline", "mistral-7b"])
def test_every_gpu_job_goes_to_a_gpu_partition(configfiles, tmp_path):
    profile = load_yaml(PROFILE / "config.yaml")
    assert "slurm_partition" not in profile.get("default-resources", {})   # an explicit partition would win
    table = partitions.read_partition_file(REPO / profile["slurm-partition-config"])
    gpu_partitions = {p.name for p in table if p.limits.max_gpu > 0}
    assert gpu_partitions and len(gpu_partitions) < len(table)
    jobs = dry_run_jobs(tmp_path, [PRESETS / f for f in configfiles], "--profile", str(PROFILE))
    log = logging.getLogger("partition-test")
    seen = {True: set(), False: set()}
    for job in jobs:
        if job["rule"] == "all":
            continue
        gpu = int(job["resources"].get("gpu", 0)) > 0
        chosen = partitions.get_best_partition(table, fake_job(job), log)
        assert chosen is not None, job
        assert (chosen in gpu_partitions) == gpu, (job["rule"], job["resources"], chosen)
        seen[gpu].add(job["rule"])
    assert {"generate_continuations", "perplexity", "aura_responses", "dinm_edit_model",
            "safeedit_generate"} <= seen[True]
    assert {"dataset", "summarize", "aura_expertise"} <= seen[False]
    if "gpt2-large.yaml" in configfiles:
        assert "tv_finetune" in seen[True]


def test_the_profile_names_only_rules_that_exist():
    profile = load_yaml(PROFILE / "config.yaml")
    rules = set(subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--list-rules"],
                               capture_output=True, text=True, check=True, cwd=REPO).stdout.split())
    assert {"materialise", "generate_continuations", "tv_finetune", "aura_fold", "dinm_edit_model"} <= rules
    named = set()
    for key in ("set-resources", "set-threads"):
        named |= set(profile.get(key) or {})
    assert named <= rules, named - rules
