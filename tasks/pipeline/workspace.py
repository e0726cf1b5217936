"""Each retrain run in a folder of its own: ``<train.runs_dir>/<time>-<run id>/``.

Two retrain runs at once (the weekly schedule, a feedback-triggered run, a CLI
``slmops retrain``) would otherwise write the same ``reports/validation``,
``data/splits``, ``checkpoints``, ``models/challenger`` and ``reports/eval``. A run
opened with :func:`run_workspace` gets a copy of the params whose paths point into its
own folder::

    models/runs/20261102T030000Z-3f2a9c1e/
        validation/  splits/  checkpoints/  model/  eval/

so the steps (which only ever read their paths from the params) cannot meet another
run's files. Once the run's version is registered, :func:`publish` moves its folders
over the shared paths (under the project lock, each folder by one rename), so the
shared paths always hold the last *finished* run, whole: what ``dvc metrics show``,
``slmops evaluate`` and the README point at. The CLI's step commands and the dvc
stages keep working on the shared paths, as before.

A run holds a file lock (``<name>.lock`` beside its folder) for as long as it lives;
the process ending releases it, however it ends. That is how a new run tells a dead
run's folder from a live one's: it takes over the newest dead run's checkpoints (an
interrupted run resumes, as with the shared ``checkpoint_dir``), then removes the dead
runs' folders. So folders never pile up: a failed run's folder stays, to look at,
until the next run starts.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from slmops.tasks.core.config import Params
from slmops.tasks.core.lock import project_lock
from slmops.tasks.model.checkpoints import replace_dir, temp_dir

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class RunWorkspace:
    """A run's folder and the params whose paths point into it."""

    dir: Path
    params: Params  # validation, splits, checkpoints, model and eval under ``dir``
    shared: Params  # the params it was opened with: where :func:`publish` puts its folders


def _folders(params: Params) -> dict[str, str]:
    """Each folder a run writes: its name in the run's folder -> its shared path."""
    return {
        "validation": params.validation.report_dir,
        "splits": params.data.splits_dir,
        "checkpoints": params.train.checkpoint_dir,
        "model": params.train.output_dir,
        "eval": params.evaluate.output_dir,
    }


# What publish moves over the shared paths (checkpoints are removed once the model is
# written; a finished run has none to share).
PUBLISHED = ("validation", "splits", "model", "eval")


def run_params(params: Params, folder: Path) -> Params:
    """``params`` with every path a retrain run writes pointing into ``folder``."""
    at = {name: str(folder / name) for name in _folders(params)}
    return params.model_copy(
        update={
            "validation": params.validation.model_copy(update={"report_dir": at["validation"]}),
            "data": params.data.model_copy(update={"splits_dir": at["splits"]}),
            "train": params.train.model_copy(
                update={"output_dir": at["model"], "checkpoint_dir": at["checkpoints"]}
            ),
            "evaluate": params.evaluate.model_copy(update={"output_dir": at["eval"]}),
        }
    )


def _name(run_id: str | None) -> str:
    # Sorted by name, the folders are in the order the runs started.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id or uuid.uuid4().hex)[:36]
    return f"{stamp}-{safe}"


@contextmanager
def run_workspace(params: Params, run_id: str | None = None) -> Iterator[RunWorkspace]:
    """Open a folder of its own for a retrain run (``run_id``: the flow run's id; a
    random one when None) and hold it while the run lives. Dead runs' folders are
    cleared first, the newest one's checkpoints taken over. The folder stays when the
    run fails (for a look; the next run removes it); :func:`publish` empties it."""
    runs = params.path(params.train.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    folder = runs / _name(run_id)
    # The lock first, then the folder: a run starting now is never taken for dead.
    alive = FileLock(folder.with_name(folder.name + LOCK_SUFFIX))
    alive.acquire(timeout=0)
    try:
        folder.mkdir()
        _clear_dead_runs(runs, keep=folder)
        log.info("retrain run folder: %s", folder)
        yield RunWorkspace(folder, run_params(params, folder), params)
    finally:
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # published: nothing left
        finally:
            alive.release()
        if not folder.exists():
            Path(alive.lock_file).unlink(missing_ok=True)


def _clear_dead_runs(runs: Path, keep: Path) -> None:
    """Remove the folders of runs that are no longer alive; the newest one's checkpoints
    move to ``keep``'s first (training resumes from them when they fit, else starts
    afresh: :func:`~slmops.tasks.model.train.train_model` checks)."""
    adopted = False
    names = {p.name.removesuffix(LOCK_SUFFIX) for p in runs.iterdir()} - {keep.name}
    for name in sorted(names, reverse=True):  # the newest first
        folder = runs / name
        lock = FileLock(runs / (name + LOCK_SUFFIX))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # alive: another run is working in it
        try:
            checkpoints = folder / "checkpoints"
            if not adopted and checkpoints.is_dir() and any(checkpoints.iterdir()):
                checkpoints.rename(keep / "checkpoints")
                adopted = True
                log.info("taking over the checkpoints of the interrupted run %s", name)
            shutil.rmtree(folder, ignore_errors=True)
            Path(lock.lock_file).unlink(missing_ok=True)
        finally:
            lock.release()


def publish(workspace: RunWorkspace) -> dict[str, str]:
    """Move the run's folders over the shared paths (``models/challenger``,
    ``reports/eval``, ``data/splits``, ``reports/validation``), under the project lock
    so that two runs finishing at once publish one after the other; returns
    ``{folder: shared path}``. Each folder replaces its shared path by one rename;
    between two renames the shared paths mix two runs only until the lock is let go.
    """
    moved = {}
    with project_lock(workspace.shared, "publish the run's model and reports"):
        for name, shared in _folders(workspace.shared).items():
            src, dest = workspace.dir / name, workspace.shared.path(shared)
            if name not in PUBLISHED or not src.is_dir():
                continue
            tmp = temp_dir(dest)
            tmp.rmdir()
            shutil.move(src, tmp)  # a rename on one filesystem, a copy across two
            replace_dir(tmp, dest)
            moved[name] = str(dest)
    # What is left (checkpoints, when training kept any) has no use once registered.
    for leftover in workspace.dir.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    log.info("published run %s: %s", workspace.dir.name, ", ".join(moved.values()))
    return moved
