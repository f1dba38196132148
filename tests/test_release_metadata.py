"""The version has one home and every place that shows it agrees; LICENSE, CITATION.cff, CHANGELOG and the
references in the README and the report stay in step with each other and with pyproject.toml."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.version import Version

import detoxflow
from detoxflow.models import read_metadata

from conftest import REPO

# sha256 of the Apache License 2.0 text as published at https://www.apache.org/licenses/LICENSE-2.0.txt
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def _literal_version() -> str:
    """The version as written in src/detoxflow/__init__.py, read without importing the package."""
    tree = ast.parse((REPO / "src" / "detoxflow" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]:
            return node.value.value
    raise AssertionError("no __version__ literal in src/detoxflow/__init__.py")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_version_has_one_home_that_the_build_reads():
    version = _literal_version()
    assert Version(version) == Version(detoxflow.__version__)
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "detoxflow.__version__"}
    # what the build backend makes of it
    from setuptools.config.pyprojecttoml import read_configuration

    assert read_configuration(REPO / "pyproject.toml", expand=True)["project"]["version"] == version


def test_cli_prints_the_version_without_a_command():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "detoxflow", "--version"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"detoxflow {_literal_version()}\n"


def test_every_model_folder_records_the_version(tmp_path, tiny_gpt2_dir):
    # written by save_model_folder (materialise, fine-tunes, AurA, DINM) ...
    assert read_metadata(tiny_gpt2_dir)["detoxflow_version"] == _literal_version()
    # ... and by the task-vector merge, which writes its folder itself
    from detoxflow.methods.task_vectors.merge import merge_task_vectors

    merge_task_vectors(tiny_gpt2_dir, [tiny_gpt2_dir], tmp_path / "merged", lam=1.0)
    assert read_metadata(tmp_path / "merged")["detoxflow_version"] == _literal_version()


def _changelog_versions() -> list[str]:
    text = (REPO / "CHANGELOG.md").read_text()
    return re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)


def test_changelog_is_newest_first_and_starts_at_this_version():
    versions = _changelog_versions()
    assert versions[0] == _literal_version()
    assert [Version(v) for v in versions] == sorted((Version(v) for v in versions), reverse=True)
    assert "0.1.0" in versions


def test_license_is_the_apache_2_text_that_pyproject_declares():
    assert hashlib.sha256((REPO / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256
    assert _pyproject()["project"]["license"] == {"text": "Apache-2.0"}


@pytest.fixture(scope="module")
def citation() -> dict:
    return yaml.safe_load((REPO / "CITATION.cff").read_text())


def test_citation_names_this_version_and_licence(citation):
    assert citation["cff-version"] == "1.2.0"
    assert str(citation["version"]) == _literal_version()
    assert citation["license"] == _pyproject()["project"]["license"]["text"]
    for key in ("message", "title", "authors"):
        assert citation[key], key


def _words(text: str) -> str:
    """Text with markup and line breaks reduced to single spaces, to find a title wrapped over lines."""
    return " ".join(re.sub(r"[*`]", " ", text).split())


def test_citation_references_appear_in_the_readme_and_the_report(citation):
    readme = _words((REPO / "README.md").read_text())
    report = _words((REPO / "workflow" / "report" / "workflow.rst").read_text())
    papers = [r for r in citation["references"] if r["type"] != "data"]
    # the five method papers of the issue and the data sets' papers (RealToxicityPrompts; SafeEdit is Wang et al.)
    assert len(papers) == 6
    for ref in papers:
        assert ref["authors"] and ref["year"] and ref["url"], ref["title"]
        assert ref["title"] in readme, ref["title"]
        assert ref["title"] in report, ref["title"]
        first_author = ref["authors"][0]["family-names"]
        assert f"{first_author}, " in readme and f"{first_author}, " in report, first_author
    safeedit = next(r for r in citation["references"] if r["type"] == "data")
    assert safeedit["license"] == "CC-BY-NC-SA-4.0"


def test_workflow_catalog_settings_match_the_workflow():
    """.snakemake-workflow-catalog.yml in the shape the catalog's generator reads (usage.mandatory-flags,
    usage.software-stack-deployment, usage.report), claiming only what the workflow has."""
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["mandatory-flags"]) == {"desc", "flags"} and usage["mandatory-flags"]["desc"].strip()
    assert isinstance(usage["mandatory-flags"]["flags"], (list, str))
    deployment = usage["software-stack-deployment"]
    assert set(deployment) <= {"conda", "apptainer", "apptainer+conda", "singularity", "singularity+conda"}
    assert all(isinstance(v, bool) for v in deployment.values())
    snakefile = (REPO / "Snakefile").read_text()
    if deployment.get("conda"):
        assert (REPO / "envs" / "detoxflow.yaml").is_file()
    if deployment.get("apptainer") or deployment.get("apptainer+conda"):
        assert re.search(r"^(container|containerized):", snakefile, flags=re.M)
    if usage["report"]:
        assert re.search(r"^report: ", snakefile, flags=re.M)
