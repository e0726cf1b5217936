"""`dvc repro` in a fresh copy of the repository: data rebuilt, stages run, then no-op."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A copy of the tracked files, as a fresh `git clone` would have them."""
    dest = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    assert run(["git", "init", "-q"], dest).returncode == 0
    return dest


def test_data_init_on_a_fresh_clone_reproduces_the_committed_versions(clone: Path):
    committed = {f: (clone / f).read_text() for f in ("data/labeled.dvc", "data/test.dvc")}
    proc = run([sys.executable, "-m", "slmops", "data", "init"], clone)
    assert proc.returncode == 0, proc.stderr
    assert "data built" in proc.stdout
    for f, text in committed.items():
        assert (clone / f).read_text() == text, f"{f} changed: the seed build is not reproducible"
    # A second init finds the data in place.
    again = run([sys.executable, "-m", "slmops", "data", "init"], clone)
    assert "data present" in again.stdout


def test_dvc_repro_runs_the_stages_then_skips_them(clone: Path):
    first = run([sys.executable, "-m", "dvc", "repro"], clone)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'validate'" in first.stdout
    assert "Running stage 'split'" in first.stdout
    assert (clone / "data" / "splits" / "train.csv").exists()
    assert (clone / "reports" / "validation" / "labeled" / "data_docs" / "index.html").exists()

    second = run([sys.executable, "-m", "dvc", "repro"], clone)
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout
    assert "Stage 'validate' didn't change, skipping" in second.stdout
    assert "Stage 'split' didn't change, skipping" in second.stdout
