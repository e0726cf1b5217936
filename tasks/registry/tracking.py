"""MLflow tracking and registry: where runs go, what each run records, model versions.

The store is embedded by default (``sqlite:///mlflow/mlflow.db`` with artifacts
in ``mlflow/artifacts``); ``MLFLOW_TRACKING_URI`` points everything at a
server instead.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from slmops.tasks.core.config import Params

if TYPE_CHECKING:
    from slmops.tasks.task_types import TaskType

log = logging.getLogger(__name__)

# What the logged model needs at load time. Passed explicitly: MLflow's inferred
# list for the transformers flavour adds torchvision, which is not installed.
MODEL_REQUIREMENTS = ["torch==2.13.0", "transformers>=5.0,<6", "tokenizers", "safetensors"]


def tracking_uri(params: Params) -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` if set, else the configured one.

    A relative ``sqlite:///`` path is resolved against the project root.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = params.path(uri[len(prefix) :])
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db.resolve())
    return uri


def configure(params: Params) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    # Artifact downloads are a few small files; their bars only clutter the logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from_env = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    mlflow.set_tracking_uri(tracking_uri(params))
    if not from_env:
        # MLflow exports the URI it is given to the environment; undo that so a
        # later project in this process (or a child process) reads its own
        # params instead of inheriting this store.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    name = params.registry.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if not from_env:
        location = params.path(params.registry.artifact_location).resolve().as_uri()
    experiment_id = mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def actor() -> str:
    """Who is acting: user@host (recorded in tags and the promotion ledger)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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


def log_dataset(df: pd.DataFrame, *, name: str, source: str, digest: str, context: str) -> None:
    """Record a dataset as a run input (lineage in the MLflow UI), named by its DVC hash."""
    import mlflow

    with warnings.catch_warnings():
        # MLflow finds two equal "local artifact" readings of a path and warns.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        dataset = mlflow.data.from_pandas(
            df[["text", "label"]], source=source, targets="label", name=name, digest=digest[:36]
        )
    mlflow.log_input(dataset, context=context)


def log_model(model_dir: Path, *, input_example: list[str], task: TaskType | None = None):
    """Log the fine-tuned model (transformers flavour, safetensors) to the active run.

    ``task`` defaults to the one the model folder was trained for.
    """
    import mlflow
    import transformers

    from slmops.tasks.task_types import task_of

    task = task or task_of(transformers.AutoConfig.from_pretrained(model_dir))
    model = task.auto_class().from_pretrained(model_dir, use_safetensors=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task=task.pipeline_task,
        pip_requirements=MODEL_REQUIREMENTS,
        input_example=input_example,
    )


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version of ``name``; return the version."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags)
    return str(version.version)


def record_live_accuracy(params: Params, live: dict[str, dict[str, float]]) -> None:
    """Tag each model version with its accuracy on user feedback and add it to the
    version's run as the metric ``live_accuracy`` (a history over time in the UI)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure(params)
    client = MlflowClient()
    name = params.registry.model_name
    for version, m in live.items():
        try:
            mv = client.get_model_version(name, version)
        except MlflowException:
            log.warning(
                "%s version %s: not in the registry; live accuracy not recorded", name, version
            )
            continue
        client.set_model_version_tag(name, version, "live.accuracy", f"{m['accuracy']:.4f}")
        client.set_model_version_tag(name, version, "live.feedback_rows", str(int(m["n"])))
        if mv.run_id:
            client.log_metric(mv.run_id, "live_accuracy", float(m["accuracy"]))
