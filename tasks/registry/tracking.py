"""MLflow tracking: a challenger's run (tags, params, metrics, datasets, artifacts, the
model), its registration as a version, and live accuracy recorded on versions.

Where the store is and how it is reached: :mod:`slmops.tasks.registry.store`.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.registry.store import Registry, configure, tracking_uri

if TYPE_CHECKING:
    from slmops.tasks.core.task_type import TaskType

__all__ = [  # configure and tracking_uri are the store's, kept importable from here
    "MODEL_REQUIREMENTS",
    "OWNER_HOST",
    "OWNER_PID",
    "OWNER_STARTED",
    "REGISTERED",
    "TAG_PHASE",
    "TRAINED",
    "TRAINING",
    "LoggedModel",
    "Run",
    "TrainingRun",
    "actor",
    "configure",
    "describe_owner",
    "flatten",
    "git_commit",
    "log_dataset",
    "log_model",
    "open_training_run",
    "owner_alive",
    "portable",
    "record_live_accuracy",
    "register",
    "run_owner",
    "start_run",
    "tracking_uri",
]

log = logging.getLogger(__name__)

# What the logged model needs at load time. Passed explicitly: MLflow's inferred
# list for the transformers flavour adds torchvision, which is not installed.
MODEL_REQUIREMENTS = ["torch==2.13.0", "transformers>=5.0,<6", "tokenizers", "safetensors"]


def actor() -> str:
    """Who is acting: user@host (recorded in tags and the promotion ledger)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# The process that opened a run, recorded on it: a RUNNING run whose process is gone
# was killed (its run can never end by itself) and the next flow marks it FAILED.
OWNER_HOST = "slmops.owner.host"
OWNER_PID = "slmops.owner.pid"
OWNER_STARTED = "slmops.owner.started"  # with the pid, names one process even if the pid is reused


def _process(pid: int) -> tuple[str, str] | None:
    """(state, start) of process ``pid`` from Linux's /proc: its state letter and a
    start token (boot id and start time in clock ticks); None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after its last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], f"{boot}:{fields[19]}"


def run_owner() -> dict[str, str]:
    """Tags naming this process as a run's owner: host, pid and, on Linux, its start."""
    pid = os.getpid()
    found = _process(pid)
    return {
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: str(pid),
        OWNER_STARTED: found[1] if found else "",
    }


def describe_owner(tags: Mapping[str, str]) -> str:
    """``pid N on HOST`` from a run's owner tags (``no owner recorded`` without them)."""
    if not tags.get(OWNER_PID):
        return "no owner recorded"
    return f"pid {tags[OWNER_PID]} on {tags.get(OWNER_HOST, '?')}"


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that owns a run (its :func:`run_owner` tags) still runs.

    None when that cannot be known from here: no owner recorded (a run logged by
    another tool, or before owners were recorded), or an owner on another host.
    """
    host, pid_text, started = tags.get(OWNER_HOST), tags.get(OWNER_PID), tags.get(OWNER_STARTED)
    if not host or not pid_text or host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    found = _process(pid)
    if found is not None:
        state, start = found
        # A zombie (killed, not yet reaped) is dead; another start is another process
        # that got the same pid.
        return state not in ("Z", "X") and (not started or start == started)
    try:
        os.kill(pid, 0)  # signal 0: is there such a process (no signal is sent)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    except OSError:
        return None
    return True


def git_commit(root: Path) -> str:
    """The checked-out commit, with ``-dirty`` when tracked files have changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested config → flat ``a.b.c`` keys (MLflow params are flat)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def portable(value: Any, root: Path) -> Any:
    """``value`` fit to log on a shared store: an absolute path of this machine becomes
    relative to the project ``root`` (when under it) or its last part, so that no
    logged value names a folder of the machine that ran it (another machine, another
    checkout: the same run). Anything else is returned unchanged."""
    if not isinstance(value, str) or not value.startswith(("/", "~")):
        return value
    path = Path(value).expanduser()
    try:
        return path.resolve().relative_to(root.resolve()).as_posix() or "."
    except (ValueError, OSError):
        return path.name or value


@dataclass(frozen=True)
class LoggedModel:
    """A model logged to a run: what :func:`register` takes, and MLflow's id for it."""

    model_uri: str
    model_id: str


# A challenger's run goes through phases, tagged on it: opened before training
# (``training``, RUNNING), ended when training ends (``trained``, FINISHED: the
# ``train`` process exits, and a run left RUNNING by a gone process would be marked
# FAILED by the next resolve_leftovers), resumed by the registration
# (``registering``, RUNNING again, same start time) and ended (``registered``).
TAG_PHASE = "slmops.phase"
TRAINING, TRAINED, REGISTERING, REGISTERED = "training", "trained", "registering", "registered"


def _source_tags() -> dict[str, str]:
    # MLflow's own defaults would record the script's absolute path (mlflow.source.name).
    user = actor().split("@", 1)[0]
    return {"mlflow.source.name": "slmops", "mlflow.source.type": "LOCAL", "mlflow.user": user}


@dataclass(frozen=True)
class TrainingRun:
    """A run opened before training (:func:`open_training_run`): its epochs are logged as
    they end, so the run's charts show the learning curves while it trains."""

    id: str
    registry: Registry

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Log one epoch's metrics (a row of the training history) at step ``epoch``."""
        values = {k: float(v) for k, v in row.items() if k != "epoch" and v is not None}
        self.registry.log_metrics(self.id, values, step=int(row["epoch"]))

    def end(self, *, failed: bool = False) -> None:
        """End the training phase: FINISHED (``slmops.phase: trained``, to be resumed by
        the registration), or FAILED when training raised."""
        self.registry.set_run_tags(self.id, {TAG_PHASE: "failed" if failed else TRAINED})
        self.registry.end_run(self.id, "FAILED" if failed else "FINISHED")


def open_training_run(params: Params, *, name: str, tags: Mapping[str, str]) -> TrainingRun:
    """Open the challenger's run in the configured experiment before it trains (RUNNING,
    with its owner's tags: :func:`run_owner`), without making it the process's active
    run; ``tags`` are set on it."""
    experiment_id = configure(params)
    registry = Registry.of(params)
    run_id = registry.create_run(
        experiment_id, name, {**_source_tags(), **run_owner(), TAG_PHASE: TRAINING, **tags}
    )
    return TrainingRun(run_id, registry)


@dataclass(frozen=True)
class Run:
    """The active MLflow run (opened by :func:`start_run`): what a challenger's run records."""

    id: str
    # The datasets logged as inputs (by name): metrics are logged against them.
    datasets: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the run."""
        import mlflow  # deferred: importing mlflow takes seconds

        mlflow.set_tags(dict(tags))

    def log_params(self, values: Mapping[str, Any]) -> None:
        """Record flat parameters (see :func:`flatten`)."""
        import mlflow  # deferred: importing mlflow takes seconds

        mlflow.log_params(dict(values))

    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Record metrics, at ``step`` (an epoch) when given."""
        import mlflow  # deferred: importing mlflow takes seconds

        mlflow.log_metrics(dict(values), step=step)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        """Upload the files of ``folder`` (to ``artifact_path`` of the run)."""
        import mlflow  # deferred: importing mlflow takes seconds

        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_artifact(self, path: Path) -> None:
        """Upload one file to the run's root."""
        import mlflow  # deferred: importing mlflow takes seconds

        mlflow.log_artifact(str(path))

    def log_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        """Upload a table (JSON, shown as a table in the UI and comparable across runs)."""
        import mlflow  # deferred: importing mlflow takes seconds

        mlflow.log_table(table, artifact_file=artifact_file)

    def log_dataset(
        self, df: pd.DataFrame, *, name: str, source: str, digest: str, context: str
    ) -> None:
        """Record a dataset as an input of the run (lineage in the MLflow UI), named by its
        DVC hash (``digest``); :meth:`log_model_metrics` can then log against it."""
        self.datasets[name] = log_dataset(
            df, name=name, source=source, digest=digest, context=context
        )

    def log_model_metrics(
        self, values: Mapping[str, float], *, model_id: str, dataset: str
    ) -> None:
        """Record metrics of a logged model (``model_id``) measured on a dataset logged
        with :meth:`log_dataset`: MLflow's model comparison views (the experiment's
        Models tab, the logged model's page) read them from there."""
        import mlflow  # deferred: importing mlflow takes seconds

        mlflow.log_metrics(
            {k: float(v) for k, v in values.items()},
            model_id=model_id,
            dataset=self.datasets[dataset],
        )


@contextmanager
def start_run(
    params: Params, run_name: str | None = None, *, run_id: str | None = None
) -> Iterator[Run]:
    """Open a run in the configured experiment, or resume run ``run_id`` (a run opened by
    :func:`open_training_run`: RUNNING again, its start time kept); it ends (failed, if
    an exception escapes) when the block does. The run carries its owner's tags
    (:func:`run_owner`, set before a resumed run is RUNNING again), so that a run left
    RUNNING by a killed process can be told from a live one
    (:func:`slmops.tasks.registry.registration.resolve_leftovers`)."""
    import mlflow  # deferred: importing mlflow takes seconds

    configure(params)
    if run_id is not None:
        Registry.of(params).set_run_tags(run_id, {**run_owner(), TAG_PHASE: REGISTERING})
        active = mlflow.start_run(run_id=run_id, run_name=run_name)
    else:
        active = mlflow.start_run(run_name=run_name, tags={**_source_tags(), **run_owner()})
    with active as run:
        yield Run(run.info.run_id)


def log_dataset(df: pd.DataFrame, *, name: str, source: str, digest: str, context: str) -> Any:
    """Record a dataset as an input of the active run (lineage in the MLflow UI), named by
    its DVC hash; return MLflow's dataset (for :meth:`Run.log_model_metrics`)."""
    import mlflow  # deferred: importing mlflow takes seconds

    with warnings.catch_warnings():
        # MLflow finds two equal "local artifact" readings of a path and warns.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        dataset = mlflow.data.from_pandas(
            df[["text", "label"]], source=source, targets="label", name=name, digest=digest[:36]
        )
    mlflow.log_input(dataset, context=context)
    return dataset


def log_model(
    model_dir: Path,
    *,
    input_example: list[str],
    task: TaskType,
    params: Mapping[str, Any] | None = None,
) -> LoggedModel:
    """Log the fine-tuned model (transformers flavour, safetensors) of task type ``task``
    to the active run, with ``params`` (shown beside its metrics in the Models tab)."""
    import mlflow  # deferred: importing mlflow takes seconds
    import transformers  # deferred: importing transformers takes seconds

    model = task.auto_class().from_pretrained(model_dir, use_safetensors=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task=task.pipeline_task,
        pip_requirements=MODEL_REQUIREMENTS,
        input_example=input_example,
        params={k: str(v) for k, v in (params or {}).items()},
    )
    return LoggedModel(str(info.model_uri), str(info.model_id))


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version of ``name``; return the version."""
    import mlflow  # deferred: importing mlflow takes seconds

    version = mlflow.register_model(model_uri, name, tags=tags)
    return str(version.version)


def record_live_accuracy(params: Params, live: dict[str, dict[str, float]]) -> None:
    """Tag each model version with its accuracy on user feedback and add it to the
    version's run as the metric ``live_accuracy`` (a history over time in the UI)."""
    configure(params)
    registry = Registry.of(params)
    name = params.registry.model_name
    for version, m in live.items():
        mv = registry.version(name, version)
        if mv is None:
            log.warning(
                "%s version %s: not in the registry; live accuracy not recorded", name, version
            )
            continue
        registry.set_tags(
            name,
            version,
            {"live.accuracy": f"{m['accuracy']:.4f}", "live.feedback_rows": str(int(m["n"]))},
        )
        if mv.run_id:
            registry.log_metric(mv.run_id, "live_accuracy", float(m["accuracy"]))
