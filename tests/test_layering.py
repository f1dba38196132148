"""The layering the architecture promises, read from the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "detoxflow"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved), at any depth of the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def _files(*subpaths: str) -> list[Path]:
    files = []
    for sub in subpaths:
        p = PACKAGE / sub
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return files


EVALUATION = _files("evaluation", "generation.py", "sampling.py", "cli/evaluation.py", "cli/safeedit.py")


@pytest.mark.parametrize("path", EVALUATION, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_evaluation_imports_no_method(path):
    bad = sorted(m for m in imports_of(path) if m == "detoxflow.methods" or m.startswith("detoxflow.methods."))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


@pytest.mark.parametrize("path", _files("."), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_package_never_imports_snakemake(path):
    assert not any(m.split(".")[0] == "snakemake" for m in imports_of(path))


def test_methods_do_not_import_each_other():
    methods = [p.name for p in (PACKAGE / "methods").iterdir() if p.is_dir() and not p.name.startswith("_")]
    for method in methods:
        for path in _files(f"methods/{method}"):
            others = {m for m in imports_of(path) for o in methods if o != method
                      and m.startswith(f"detoxflow.methods.{o}")}
            assert not others, f"{path.relative_to(PACKAGE)} imports {sorted(others)}"


def test_the_checker_sees_relative_imports(tmp_path):
    """The import reader itself: a relative import of the methods package is resolved to its absolute name."""
    assert "detoxflow.methods.dinm.protocol" in imports_of(PACKAGE / "cli" / "dinm.py")
    assert "detoxflow.evaluation.safeedit.responses" in imports_of(PACKAGE / "methods" / "dinm" / "protocol.py")
