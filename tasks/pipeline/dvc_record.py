"""A retrain recorded in DVC: ``dvc.lock`` names what the flow made, and the run is an experiment.

The ``retrain`` flow calls the same step functions as the dvc stages, but in a
folder of its own per run, with Prefect's retries and logs, and the label import,
the registration and the gate in between; once the run's version is registered
its folders are published over the stages' outputs (``reports/validation``,
``data/splits``, ``models/challenger``, ``reports/eval``). :func:`record_run` then
tells DVC what happened, after the fact:

1. ``dvc commit -f`` of the stages the run made (``validate``, ``split``, ``train``,
   ``evaluate``, ``register`` of the ``dvc.yaml`` beside the params file):
   ``dvc.lock`` records the hashes of their deps, params and outputs as they are,
   so ``dvc status`` has nothing to report and ``dvc repro`` skips every stage.
2. ``dvc exp save -n <model>-v<version>``: the workspace (params, ``dvc.lock``, the
   ``.dvc`` files, the metrics and plots files) as an experiment commit under
   ``refs/exps``, beside the user's branch, which it leaves alone: ``dvc exp show``
   lists the run with its params, metrics and MLflow version and run id
   (``registry.record_file``).

Why record rather than have the flow run ``dvc repro``: ``dvc repro`` runs the
stages in the shared folders, one run at a time, with the params of
``params.yaml`` only and no per-step retries or logs in Prefect; the flow keeps
concurrent runs apart, takes a profile and overrides, and imports labels first.
Recording keeps all that and still leaves DVC knowing exactly what the stages'
outputs are, which is what ``dvc repro`` would have left.

``dvc.lock`` never lies: a stage is recorded only when the run used the values
``params.yaml`` gives every param the stage declares, the data the published
split was carved from is the data in the workspace, and the code is what the run
started with; the stages after the first that fails these checks are not recorded
either, and the run is not saved as an experiment (its params would be misread):
the log says why, and ``dvc status`` then shows those stages changed, which is
true. A profile that only touches other sections (``loop-demo``: ``feedback``)
changes nothing here. To try other params the DVC way: ``dvc exp run -S train.epochs=1``.

Nothing here fails a retrain: no ``dvc.yaml`` beside the params file, no DVC
repository, no git (then ``dvc.lock`` is written but no experiment saved), a DVC
command that fails: each is a logged reason, and the run's result stands.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slmops.tasks.core.config import ConfigError, Params, load_params
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.lock import project_lock
from slmops.tasks.data.dataset import write_json_atomic
from slmops.tasks.data.split import data_versions, split_versions
from slmops.tasks.data.versioning import DvcError, dvc
from slmops.tasks.pipeline.challenger import model_digest
from slmops.tasks.pipeline.recipe import DVC_FILE, code_hash, code_paths
from slmops.tasks.registry.recipes import tag_experiment
from slmops.tasks.registry.registration import TAG_DIGEST
from slmops.tasks.registry.store import Registry

log = logging.getLogger(__name__)

#: the stages a retrain makes, in the order they run
RUN_STAGES = ("validate", "split", "train", "evaluate", "register")
PARAMS_FILE = "params.yaml"  # the params file dvc stages read (beside dvc.yaml)


@dataclass(frozen=True)
class DvcRecord:
    """What :func:`record_run` told DVC."""

    committed: list[str] = field(default_factory=list)  # stages recorded in dvc.lock
    experiment: str | None = None  # the experiment the run was saved as
    skipped: str | None = None  # why not everything was recorded (None: all was)


def write_registration(
    params: Params,
    *,
    version: str,
    run_id: str,
    promoted: bool,
    decision: str,
    reused: bool = False,
) -> Path:
    """Write ``registry.record_file``: the last registration (the dvc stage ``register``'s
    output, a metrics file, so ``dvc exp show`` shows each experiment's version)."""
    path = params.path(params.registry.record_file)
    write_json_atomic(
        {
            "model": params.registry.model_name,
            "version": str(version),
            "run_id": run_id,
            "promoted": promoted,
            "decision": decision,
            "reused": reused,
        },
        path,
    )
    return path


def experiment_name(params: Params, version: str) -> str:
    """The DVC experiment a retrain registering ``version`` is saved as (a valid git ref
    name): ``slmops-intent-v3``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", f"{params.registry.model_name}-v{version}")


def _dvc_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _git_ready(root: Path) -> str | None:
    """None when ``root`` is in a git repository with a commit; else why not."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return "git is not installed"
    if proc.returncode != 0:
        return "not a git repository with a commit (an experiment is a commit on one)"
    return None


def _entry(item: Any) -> str:
    return next(iter(item)) if isinstance(item, dict) else str(item)


def _value(values: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(values, dict) or key not in values:
            return "<absent>"
        values = values[key]
    return values


def params_differ(stage: dict[str, Any], run: Params, file: Params) -> str | None:
    """Why a dvc ``stage`` (its mapping in dvc.yaml) would not have made what the run
    made: the first param it declares whose value in the run (``run``) is not the one
    ``params.yaml`` (``file``) gives; None when they all agree."""
    ran = run.model_dump(mode="json", by_alias=True)
    written = file.model_dump(mode="json", by_alias=True)
    for item in stage.get("params") or []:
        if isinstance(item, dict):  # params of another file: not what the run read
            return f"params from {_entry(item)}"
        a, b = _value(ran, item), _value(written, item)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                item, a, b = f"{item}.{key}", a.get(key), b.get(key)
            return f"{item} is {a!r} in this run, {b!r} in {PARAMS_FILE} (a profile or override)"
    return None


def _untracked_outputs(stages: dict[str, Any], names: list[str], folder: Path, root: Path):
    """The metrics and plots files of ``names`` (untracked until the user commits them): added to
    the experiment commit, so ``dvc exp show`` and ``dvc plots diff`` read them."""
    for name in names:
        for key in ("metrics", "plots"):
            for item in stages[name].get(key) or []:
                path = (folder / _entry(item)).resolve()
                if path.is_file():
                    yield str(path.relative_to(root))


def record_run(
    params: Params,
    params_path: str | Path,
    *,
    code: str,
    version: str,
    run_id: str,
    promoted: bool,
    decision: str,
    reused: bool = False,
) -> DvcRecord:
    """Record a published retrain run in DVC (see the module docstring): write
    ``registry.record_file``, ``dvc commit`` the stages, ``dvc exp save``. Never raises.

    ``params``: the run's effective params (profile and overrides applied), before the
    run folder's paths; ``params_path``: the file they were read from; ``code``: the
    run's code hash (:attr:`~slmops.tasks.pipeline.recipe.Recipe.code`, taken before it
    trained); ``version``, ``run_id``: what it registered (``reused``: registered
    before); ``promoted``, ``decision``: the gate's outcome.
    """
    try:
        with project_lock(params, "record the run in DVC"):
            # Another run may have published since this one did: its model, not ours,
            # is then in models/challenger, and it records itself.
            model_dir = params.path(params.train.output_dir)
            mv = Registry.of(params).version(params.registry.model_name, version)
            if mv is None or mv.tags.get(TAG_DIGEST) != model_digest(model_dir):
                return _skip(f"{model_dir} is no longer version {version}'s model")
            write_registration(
                params,
                version=version,
                run_id=run_id,
                promoted=promoted,
                decision=decision,
                reused=reused,
            )
            return _record(params, Path(params_path), code=code, version=version)
    except (DvcError, DataError, ConfigError, OSError, yaml.YAMLError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("run not recorded in DVC: %s", reason)
        return DvcRecord(skipped=reason)


def _record(params: Params, params_path: Path, *, code: str, version: str) -> DvcRecord:
    folder = params.root.resolve()
    dvc_file = folder / DVC_FILE
    if not dvc_file.exists():
        return _skip(f"no {DVC_FILE} beside {params_path}")
    if params_path.resolve() != folder / PARAMS_FILE:
        return _skip(f"the run read {params_path}; the dvc stages read {folder / PARAMS_FILE}")
    root = _dvc_root(folder)
    if root is None:
        return _skip(f"{folder} is not in a DVC repository (`dvc init`)")
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages") or {}
    file = load_params(folder / PARAMS_FILE)
    why = None
    if split_versions(file) != data_versions(file):
        why = "the labeled or test data changed after the run's split was carved"
    elif code_hash(code_paths(file)) != code:
        why = "the code the stages depend on changed while the run trained"
    names: list[str] = []
    for name in (s for s in RUN_STAGES if s in stages):
        why = why or params_differ(stages[name], params, file)
        if why:
            why = f"stage {name} and after not recorded: {why}"
            break
        names.append(name)
    rel = dvc_file.relative_to(root)
    targets = [f"{rel}:{name}" for name in names]
    if targets:
        dvc("commit", "--force", *targets, root=root)
        log.info("dvc.lock records stage(s) %s as this run made them", ", ".join(names))
    if why:
        log.warning("%s; `dvc status` shows them changed. Not saved as a DVC experiment", why)
        return DvcRecord(committed=names, skipped=why)
    not_git = _git_ready(root)
    if not_git:
        log.warning("not saved as a DVC experiment: %s", not_git)
        return DvcRecord(committed=names, skipped=not_git)
    name = experiment_name(params, version)
    include = [
        arg for path in _untracked_outputs(stages, names, folder, root) for arg in ("-I", path)
    ]
    # --force: a retrain that registered the same version again replaces its experiment.
    dvc("exp", "save", "--force", "-n", name, *include, *targets, root=root)
    log.info("saved as DVC experiment %s (`dvc exp show`)", name)
    try:
        tag_experiment(params, version, name)
    except Exception as exc:  # MLflow's errors are many types; the experiment stands
        log.warning("version %s not tagged with its DVC experiment %s: %s", version, name, exc)
    return DvcRecord(committed=names, experiment=name)


def _skip(reason: str) -> DvcRecord:
    log.warning("run not recorded in DVC: %s", reason)
    return DvcRecord(skipped=reason)
