"""Each retrain run in its own folder: two at once never share a path; a finished run's
folders replace the shared ones; a dead run's folder is cleared by the next run, which
takes over its checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.pipeline.workspace import publish, run_workspace
from tests.conftest import REPO

WRITTEN = ("validation", "splits", "checkpoints", "model", "eval")


@pytest.fixture
def params(tmp_path: Path):
    return parse_params({}, tmp_path / "params.yaml", root=tmp_path)


def paths(p) -> dict[str, Path]:
    """Every folder a retrain run writes, as these params say."""
    return {
        "validation": p.path(p.validation.report_dir),
        "splits": p.path(p.data.splits_dir),
        "checkpoints": p.path(p.train.checkpoint_dir),
        "model": p.path(p.train.output_dir),
        "eval": p.path(p.evaluate.output_dir),
    }


def fill(p, tag: str) -> None:
    """What a run writes, each file saying which run wrote it."""
    for name, folder in paths(p).items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.txt").write_text(tag)


def runs(params) -> list[str]:
    folder = params.path(params.train.runs_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_two_runs_at_once_write_disjoint_folders_and_each_publishes_whole(params):
    with run_workspace(params, "a") as a, run_workspace(params, "b") as b:
        assert a.dir != b.dir and a.dir.parent == params.path("models/runs")
        for name in WRITTEN:
            assert paths(a.params)[name] == a.dir / name
            assert paths(b.params)[name] == b.dir / name
        fill(a.params, "a")
        fill(b.params, "b")  # (was: both wrote models/challenger, reports/eval, ...)
        assert len(runs(params)) == 4  # two folders, two lock files: b did not clear a
        publish(a)
        shared = paths(params)
        assert all((shared[n] / f"{n}.txt").read_text() == "a" for n in ("model", "eval"))
        publish(b)  # the later finisher: its files, none of a's left
        for name in ("validation", "splits", "model", "eval"):
            assert [f.read_text() for f in shared[name].iterdir()] == ["b"], name
    assert runs(params) == []  # published runs leave nothing behind
    assert not shared["checkpoints"].exists()  # a run's checkpoints are never shared


def test_a_failed_runs_folder_stays_until_the_next_run_which_takes_over_its_checkpoints(
    params,
):
    with pytest.raises(RuntimeError), run_workspace(params, "failed") as failed:
        fill(failed.params, "failed")
        raise RuntimeError("training died")
    assert failed.dir.is_dir()  # to look at
    with run_workspace(params, "next") as nxt:
        assert not failed.dir.exists()
        assert (nxt.dir / "checkpoints" / "checkpoints.txt").read_text() == "failed"
        assert runs(params) == [nxt.dir.name, nxt.dir.name + ".lock"]


HOLD = """
import sys, time
from pathlib import Path
from slmops.tasks.core.config import parse_params
from slmops.tasks.pipeline.workspace import run_workspace
root = Path(sys.argv[1])
params = parse_params({}, root / "params.yaml", root=root)
with run_workspace(params, "child") as run:
    (run.dir / "checkpoints").mkdir()
    (run.dir / "checkpoints" / "last").write_text("epoch 2")
    print(run.dir, flush=True)
    time.sleep(600)
"""


def test_a_live_runs_folder_is_left_alone_and_a_killed_ones_is_cleared(params):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(params.root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        theirs = Path(child.stdout.readline().strip())
        with run_workspace(params, "mine") as mine:
            assert theirs.is_dir()  # alive: its checkpoints are not taken
            assert not (mine.dir / "checkpoints").exists()
        child.send_signal(signal.SIGKILL)
        child.wait()
        with run_workspace(params, "after") as after:
            assert not theirs.exists()  # dead: the lock went with its process
            assert (after.dir / "checkpoints" / "last").read_text() == "epoch 2"
    finally:
        child.kill()
        child.wait()
