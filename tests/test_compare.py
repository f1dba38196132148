"""Paired bootstrap of toxicity differences: against a per-resample loop, and on clear-cut cases."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.metrics.compare import paired_bootstrap
from detoxflow.evaluation.metrics.toxicity import toxicity_metrics


def _scores(seed, shift=0.0, prompts=60, k=4):
    rng = np.random.default_rng(seed)
    return np.clip(rng.beta(1, 3, size=(prompts, k)) + shift, 0, 1).tolist()


def test_interval_equals_a_loop_over_resamples():
    a, b = _scores(1), _scores(2)
    got = paired_bootstrap(a, b, resamples=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 60, size=(300, 60))
    for name in got:
        diffs = [toxicity_metrics([a[i] for i in row])[name] - toxicity_metrics([b[i] for i in row])[name]
                 for row in idx]
        assert got[name]["low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
        assert got[name]["high"] == pytest.approx(np.percentile(diffs, 97.5), abs=1e-12)
        assert got[name]["difference"] == pytest.approx(toxicity_metrics(a)[name] - toxicity_metrics(b)[name])


def test_clear_cases():
    a = _scores(3)
    same = paired_bootstrap(a, a)
    assert all(r["low"] == r["high"] == r["difference"] == 0 for r in same.values())
    shifted = paired_bootstrap(_scores(3, shift=0.3), a)["mean_toxicity"]
    assert 0 < shifted["low"] <= shifted["difference"] <= shifted["high"]


def test_bad_input_is_refused():
    with pytest.raises(DetoxflowError, match="different numbers of prompts"):
        paired_bootstrap(_scores(1, prompts=5), _scores(1, prompts=6))
    with pytest.raises(DetoxflowError, match="variant A"):
        paired_bootstrap([[0.1], [0.2, 0.3]], [[0.1], [0.2]])


def test_cli(tmp_path):
    def write(path, scores, prompts):
        path.write_text("".join(json.dumps({"prompt": p, "toxicity": s}) + "\n" for p, s in zip(prompts, scores)))

    prompts = [f"prompt {i}" for i in range(60)]
    write(tmp_path / "a.jsonl", _scores(3, shift=0.3), prompts)
    write(tmp_path / "b.jsonl", _scores(3), prompts)
    write(tmp_path / "c.jsonl", _scores(3), list(reversed(prompts)))
    cmd = [sys.executable, "-m", "detoxflow", "compare-toxicity", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
           "--json", str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| mean_toxicity | +0." in proc.stdout
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["metrics"]["mean_toxicity"]["low"] > 0
    cmd[5] = str(tmp_path / "c.jsonl")
    proc = subprocess.run(cmd[:6], capture_output=True, text=True)
    assert proc.returncode != 0 and "different prompts" in proc.stderr
