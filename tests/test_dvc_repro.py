"""`dvc repro` in a fresh copy of the repository: data rebuilt, stages run, then no-op."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
        shutil.copy2(REPO / rel, target, follow_symlinks=False)  # slmops/tasks etc. are links
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
    # The data stages only: train/evaluate need the real model for minutes
    # (covered with a tiny model below).
    first = run([sys.executable, "-m", "dvc", "repro", "split"], clone)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'validate'" in first.stdout
    assert "Running stage 'split'" in first.stdout
    assert (clone / "data" / "splits" / "train.csv").exists()
    assert (clone / "reports" / "validation" / "labeled" / "data_docs" / "index.html").exists()

    assert "Running stage 'train'" not in first.stdout
    second = run([sys.executable, "-m", "dvc", "repro", "split"], clone)
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout
    assert "Stage 'validate' didn't change, skipping" in second.stdout
    assert "Stage 'split' didn't change, skipping" in second.stdout


def test_dvc_repro_trains_and_evaluates_then_retrains_on_a_param_change(clone: Path):
    from tests.tasks.tiny_model import make_tiny_model

    base = make_tiny_model(clone / "tiny-base")
    path = clone / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["train"].update(base_model=str(base), epochs=1, data_fraction=0.05, learning_rate=1e-3)
    raw["evaluate"]["latency_samples"] = 10
    path.write_text(yaml.safe_dump(raw))

    first = run([sys.executable, "-m", "dvc", "repro", "evaluate"], clone)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'train'" in first.stdout
    assert "Running stage 'evaluate'" in first.stdout
    metrics = json.loads((clone / "reports" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    shown = run([sys.executable, "-m", "dvc", "metrics", "show"], clone)
    assert shown.returncode == 0 and "accuracy" in shown.stdout, shown.stderr
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "-o", "plots-html"], clone)
    assert plots.returncode == 0, plots.stderr
    assert (clone / "plots-html" / "index.html").exists()

    again = run([sys.executable, "-m", "dvc", "repro", "evaluate"], clone)
    assert "Running stage" not in again.stdout, again.stdout

    # evaluate does not read train.epochs: only train, then evaluate (its dep changed), rerun.
    raw["train"]["epochs"] = 2
    path.write_text(yaml.safe_dump(raw))
    third = run([sys.executable, "-m", "dvc", "repro", "evaluate"], clone)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "Running stage 'train'" in third.stdout
    assert "Stage 'split' didn't change, skipping" in third.stdout
