"""The package's layers hold (docs/architecture.md), and the checks that guard them bite.

`lint-imports` runs the contracts of pyproject.toml; here it also runs on a throw-away
copy of the source with a cycle or a forbidden import added, and must fail there.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("slmops", "tasks", "flows", "serving")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` in ``root``, importing ``slmops`` from there (not the install)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """The package sources (symbolic links kept) and pyproject.toml in a fresh folder."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, symlinks=True, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_are_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        # an engine importing a task type (and so a cycle: task types import engines)
        (
            "tasks/data/split.py",
            "import slmops.tasks.task_types",
            "not allowed to import slmops.tasks.task_types",
        ),
        # a cycle between two engines: labels already imports data
        ("tasks/data/dataset.py", "import slmops.tasks.labels.sources", "No cycles are allowed"),
        # tasks/ reaching up into the flows
        ("tasks/core/errors.py", "import slmops.flows.steps", "not allowed to import"),
        # MLflow outside the registry
        ("tasks/model/metrics.py", "import mlflow", "Illegal imports of protected package mlflow"),
    ],
)
def test_an_added_violation_breaks_a_contract(source_copy: Path, module, added, broken):
    path = source_copy / module
    path.write_text(path.read_text() + f"\n{added}  # noqa\n")
    result = lint_imports(source_copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout


def _python_files() -> list[Path]:
    return sorted(
        p for name in PACKAGES for p in (REPO / name).rglob("*.py") if "__pycache__" not in p.parts
    )


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names]


def test_only_the_registry_imports_mlflow():
    found = [
        str(path.relative_to(REPO))
        for path in _python_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(m == "mlflow" or m.startswith("mlflow.") for m in _imported(node))
    ]
    assert found, "the registry talks to MLflow"
    assert all(f.startswith("tasks/registry/") for f in found), sorted(set(found))


def test_project_imports_in_a_function_say_why():
    """A project import inside a function is only there to defer a heavy dependency,
    and a comment on its line or the line above says so."""
    unexplained = []
    for path in _python_files():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                if not any(m.split(".")[0] == "slmops" for m in _imported(node)):
                    continue
                here = lines[node.lineno - 1]
                above = lines[node.lineno - 2] if node.lineno > 1 else ""
                if "#" not in here and not above.strip().startswith("#"):
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unexplained, sorted(set(unexplained))
