"""The challenger's life before the gate: train, evaluate, log and register it.

These are the steps the dvc stages (``train``, ``evaluate``), the CLI and the
``retrain`` flow all call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.tasks.core.config import Params
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.lock import project_lock
from slmops.tasks.data.dataset import (
    load_label_set,
    read_table,
    read_test,
    write_json_atomic,
)
from slmops.tasks.data.split import data_versions, split_versions
from slmops.tasks.model.evaluate import METRICS_FILE, REPORT_FILE, EvalResult, evaluate_model
from slmops.tasks.model.inference import Predictor
from slmops.tasks.model.train import train_model
from slmops.tasks.registry.registration import (
    PENDING,
    TAG_DIGEST,
    TAG_REGISTRATION,
    find_registered,
    mark_complete,
)
from slmops.tasks.registry.store import Registry
from slmops.tasks.registry.tracking import (
    actor,
    flatten,
    git_commit,
    log_dataset,
    log_model,
    register,
    start_run,
)
from slmops.tasks.task_types import task_type

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"  # beside the model: history and settings of its training run


@dataclass(frozen=True)
class Registered:
    """A challenger logged to MLflow and registered as a model version."""

    run_id: str
    version: str
    model_uri: str
    reused: bool = False  # the same model was registered before: its version, no new one


def _splits(params: Params):
    folder = params.path(params.data.splits_dir)
    if not (folder / "train.csv").exists():
        raise DataError(f"{folder}: no train/val split; run `slmops split` (or the flow) first")
    return read_table(folder / "train.csv"), read_table(folder / "val.csv")


def model_digest(model_dir: Path) -> str:
    """sha256 of the model's config, labels and weights: names what an evaluation evaluated."""
    h = hashlib.sha256()
    files = [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors"))]
    files += [f for f in (model_dir / "labels.json",) if f.exists()]
    for path in files:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def train_challenger(
    params: Params, *, progress: bool = True, on_epoch: Callable[[dict], None] | None = None
):
    """Fine-tune the base model on the train split; the model lands in ``train.output_dir``."""
    train, val = _splits(params)
    result = train_model(
        train,
        val,
        load_label_set(params),
        params.train,
        params.path(params.train.output_dir),
        params.path(params.train.checkpoint_dir),
        task=task_type(params),
        on_epoch=on_epoch,
        progress=progress,
    )
    if result.rank != 0:
        return result  # one of several training processes: rank 0 writes the record
    write_json_atomic(
        {
            "history": result.history,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "resumed_from_epoch": result.resumed_from_epoch,
            "device": result.device,
            "precision": result.precision,
            "train_examples": result.train_examples,
            "seconds": round(result.seconds, 1),
            "params": result.params,
            # What the split was carved from (not the workspace now: an ingestion may
            # have landed while this run trained).
            "data": split_versions(params) or data_versions(params),
        },
        result.model_dir / TRAINING_FILE,
    )
    return result


def evaluate_challenger(params: Params, model_dir: Path | None = None) -> EvalResult:
    """Evaluate the trained model on the frozen test split into ``evaluate.output_dir``."""
    model_dir = model_dir or params.path(params.train.output_dir)
    if not (model_dir / "config.json").exists():
        raise DataError(f"{model_dir}: no trained model; run `slmops train` first")
    task = task_type(params)
    predictor = Predictor.from_dir(
        model_dir,
        device=params.train.device,
        precision=params.train.precision,
        num_threads=params.train.num_threads,
        task=task,
    )
    _, val = _splits(params)
    return evaluate_model(
        predictor,
        read_test(params),
        params.evaluate,
        params.path(params.evaluate.output_dir),
        task=task,
        val=val,
        model=model_digest(model_dir),
    )


def register_challenger(
    params: Params, *, trigger: str = "cli", run_name: str | None = None
) -> Registered:
    """Log the trained, evaluated challenger as an MLflow run and register a new version.

    The run records params, per-epoch metrics, test metrics, the DVC hashes of
    the training and test data, the git commit, the evaluation files and the
    model (transformers flavour, safetensors) with a signature and input example.

    Idempotent: when this model (its :func:`model_digest`) is already registered,
    evaluated on the same test split, that version is returned (``reused``) and
    nothing new is logged; a version whose earlier registration was killed after
    it was created is completed first
    (:mod:`slmops.tasks.registry.registration`). The version is tagged
    ``registration: pending`` when created and ``complete`` once its run has ended.
    """
    model_dir = params.path(params.train.output_dir)
    eval_dir = params.path(params.evaluate.output_dir)
    try:
        training = json.loads((model_dir / TRAINING_FILE).read_text())
        metrics: dict[str, Any] = json.loads((eval_dir / METRICS_FILE).read_text())
        evaluated = json.loads((eval_dir / REPORT_FILE).read_text()).get("model")
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename}: missing; train and evaluate before registering") from None
    digest = model_digest(model_dir)
    if evaluated != digest:
        # An evaluation of an earlier model, or one killed before it wrote report.json.
        raise DataError(
            f"{eval_dir}: the evaluation is not of the model in {model_dir} "
            "(evaluation interrupted, or the model was retrained since); "
            "run `slmops evaluate` before registering"
        )
    data = training.get("data") or data_versions(params)
    # The model must be of the split in the workspace, evaluated on the test split in
    # the workspace. The labeled data may have moved on since the split (an ingestion
    # while this run trained): the version is tagged with the data it was trained on,
    # a version DVC and git keep. A split from before splits recorded their data: the
    # labeled data must not have moved either.
    now, split = data_versions(params), split_versions(params)
    if data != (split or now) or data["test"] != now["test"]:
        raise DataError(
            f"{model_dir}: trained on data {data} but the split is of {split or now} and "
            f"the workspace's test split is {now['test']!r}; retrain before registering"
        )
    name = params.registry.model_name
    registry = Registry.configured(params)
    who = actor()
    found = find_registered(registry, name, digest, data["test"], who=who)
    if found is not None:
        log.info("%s version %s is this model (%s) already: reused", name, found.version, digest)
        return Registered(found.run_id, found.version, found.uri, reused=True)
    commit = git_commit(params.root)
    train, _ = _splits(params)
    test = read_test(params)
    task = task_type(params)
    version_tags = {
        "data.labeled_hash": data["labeled"],
        "data.test_hash": data["test"],
        "git.commit": commit,
        "metrics.accuracy": str(metrics["accuracy"]),
        "metrics.macro_f1": str(metrics["macro_f1"]),
        **({"metrics.f1": str(metrics["f1"])} if "f1" in metrics else {}),
        "task": task.name.value,
        "gate.decision": "pending",
        TAG_DIGEST: digest,
        TAG_REGISTRATION: PENDING,  # complete once the run has ended
    }
    with start_run(params, run_name=run_name) as run:
        run.set_tags(
            {
                "git.commit": commit,
                "data.labeled_hash": data["labeled"],
                "data.test_hash": data["test"],
                "trigger": trigger,
                "actor": actor(),
                "device": training["device"],
                "precision": training["precision"],
            }
        )
        run.log_params(flatten("train", training["params"]))
        run.log_params(flatten("evaluate", params.evaluate.model_dump(mode="json")))
        for row in training["history"]:
            epoch = int(row["epoch"])
            run.log_metrics(
                {k: float(v) for k, v in row.items() if k != "epoch" and v is not None}, step=epoch
            )
        run.log_metrics(
            {(k if k.startswith("test_") else f"test_{k}"): float(v) for k, v in metrics.items()}
        )
        run.log_metrics({"train_seconds": float(training["seconds"])})
        log_dataset(
            train,
            name="labeled",
            source=params.data.labeled_dir,
            digest=data["labeled"],
            context="training",
        )
        log_dataset(
            test,
            name="test",
            source=params.data.test_dir,
            digest=data["test"],
            context="evaluation",
        )
        run.log_artifacts(eval_dir, artifact_path="eval")
        run.log_artifact(model_dir / TRAINING_FILE)
        logged = log_model(model_dir, input_example=test["text"].head(2).tolist(), task=task)
        # The lookup again and the registration as one step: a twin registering the
        # same model meanwhile gets one version, not two.
        with project_lock(params, "register"):
            found = find_registered(registry, name, digest, data["test"], who=who)
            if found is not None:
                run.set_tags({"slmops.duplicate_of": f"{name} version {found.version}"})
                log.info("%s version %s was registered meanwhile: reused", name, found.version)
                return Registered(found.run_id, found.version, found.uri, reused=True)
            version = register(logged.model_uri, name, tags=version_tags)
    mark_complete(registry, name, version)  # the run has ended: nothing left to do
    log.info("registered %s version %s (run %s)", name, version, run.id)
    return Registered(run.id, version, logged.model_uri)
