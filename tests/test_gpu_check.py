"""benchmarks/gpu_check.sh in its reduced form: the same script that runs on a GPU machine runs here,
so it cannot rot. Checks the figures file it writes against values recomputed from its parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA


@pytest.mark.slow
def test_reduced_gpu_check_runs_and_writes_its_figures(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, DETOXFLOW_SHARED_DATA=str(SHARED_DATA))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--reduced"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures["reduced"] is True and figures["device"] in ("cpu",) or figures["device"].startswith("NVIDIA")
    bound = figures["matmul_bound_tflops"] * 1e12
    gen = figures["generation"]
    useful = gen["useful_tokens_per_s"]
    assert gen["share_of_bound"] == pytest.approx(useful * 2 * figures["params"] / bound)
    assert 0 < gen["share_of_bound"] < 1.5
    assert figures["perplexity"]["tokens"] > 0 and figures["finetune"]["steps"] > 0
    assert figures["dinm"]["seconds_per_instance"] > 0 and figures["dinm"]["layer"] in (0, 1)
    dag = figures["dag"]
    assert dag["summary_rows"] >= 4 and dag["jobs"] > 10 and dag["wall_seconds"] > 0
    assert any(k.startswith("task_vectors/finetune") for k in dag["job_seconds"])
