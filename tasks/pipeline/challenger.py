"""The challenger's life before the gate: train, evaluate, log and register it.

These are the steps the dvc stages (``train``, ``evaluate``), the CLI and the
``retrain`` flow all call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

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
from slmops.tasks.pipeline.recipe import recipe
from slmops.tasks.registry import model_card
from slmops.tasks.registry.recipes import TAG_RECIPE
from slmops.tasks.registry.registration import (
    PENDING,
    TAG_DIGEST,
    TAG_REGISTRATION,
    find_registered,
    mark_complete,
)
from slmops.tasks.registry.store import Registry
from slmops.tasks.registry.tracking import (
    REGISTERED,
    TAG_PHASE,
    TRAINED,
    actor,
    flatten,
    git_commit,
    log_model,
    open_training_run,
    portable,
    register,
    start_run,
)
from slmops.tasks.task_types import task_type

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"  # beside the model: history and settings of its training run
TAG_DUPLICATE = "slmops.duplicate_of"  # on a run whose model was registered before


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


def challenger_run_name(params: Params, data: dict[str, str], trigger: str) -> str:
    """``<base model>-<labeled data hash, 8 chars>-<trigger>``: what a challenger's MLflow
    run is named (e.g. ``minilm-b6c307ae-flow:schedule``)."""
    base = Path(params.train.base_model.rstrip("/")).name or params.train.base_model
    labeled = (data.get("labeled") or "untracked").split(":")[-1][:8]
    return f"{base}-{labeled}-{trigger}"


def _base_digest(params: dict[str, Any]) -> str | None:
    """The content hash of a local base model (its folder's path is not logged)."""
    folder = Path(str(params.get("base_model_path", "")))
    return model_digest(folder) if (folder / "config.json").is_file() else None


def train_challenger(
    params: Params,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    trigger: str = "cli",
    on_progress: Callable[[dict], None] | None = None,
):
    """Fine-tune the base model on the train split; the model lands in ``train.output_dir``.

    The challenger's MLflow run is opened first (named by :func:`challenger_run_name`), each epoch's
    metrics are logged into it as the epoch ends (``step`` = epoch), and it is ended
    when training ends, to be resumed by :func:`register_challenger` (its id is in
    ``training.json``): the run's duration covers training and its charts show the
    learning curves while it trains. ``on_progress`` receives the training loop's
    progress reports (every ``train.report_every_seconds``;
    :func:`~slmops.tasks.model.train.train_model`).
    """
    train, val = _splits(params)
    data = split_versions(params) or data_versions(params)
    tracked = None
    if os.environ.get("RANK", "0") == "0":  # one run for several training processes
        tracked = open_training_run(
            params,
            name=challenger_run_name(params, data, trigger),
            tags={
                "trigger": trigger,
                "actor": actor(),
                "git.commit": git_commit(params.root),
                "data.labeled_hash": data.get("labeled", ""),
                "data.test_hash": data.get("test", ""),
            },
        )

    def epoch_ended(row: dict) -> None:
        if tracked is not None:
            try:
                tracked.log_epoch(row)
            except Exception as exc:  # a store hiccup costs a point of the curve, not the run
                log.warning(
                    "epoch %s: not logged to MLflow run %s (%s)", row["epoch"], tracked.id, exc
                )
        if on_epoch is not None:
            on_epoch(row)

    try:
        result = train_model(
            train,
            val,
            load_label_set(params),
            params.train,
            params.path(params.train.output_dir),
            params.path(params.train.checkpoint_dir),
            task=task_type(params),
            on_epoch=epoch_ended,
            on_progress=on_progress,
            progress=progress,
        )
    except BaseException:
        if tracked is not None:
            tracked.end(failed=True)
        raise
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
            "params": {**result.params, "base_model_digest": _base_digest(result.params)},
            # What the split was carved from (not the workspace now: an ingestion may
            # have landed while this run trained).
            "data": data,
            "mlflow_run_id": tracked.id if tracked is not None else None,
        },
        result.model_dir / TRAINING_FILE,
    )
    if tracked is not None:
        tracked.end()
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


# The training settings a logged model carries (the run has them all).
_MODEL_PARAMS = (
    "train.base_model",
    "train.base_model_digest",
    "train.epochs",
    "train.learning_rate",
    "train.batch_size",
    "train.data_fraction",
    "train.seed",
)


def _resumable_run(registry: Registry, run_id: str | None) -> str | None:
    """``run_id`` when it is the training run of this model, ended by its training
    (FINISHED, ``slmops.phase: trained``), hence to be resumed; else None."""
    run = registry.run(run_id) if run_id else None
    if run is None or run.status != "FINISHED" or run.tags.get(TAG_PHASE) != TRAINED:
        return None
    return run.run_id


def register_challenger(
    params: Params, *, trigger: str = "cli", run_name: str | None = None
) -> Registered:
    """Log the trained, evaluated challenger as an MLflow run and register a new version.

    The run is the one :func:`train_challenger` opened (resumed: RUNNING again, its
    start time kept), or a new one named ``run_name`` (default
    :func:`challenger_run_name`) when that run cannot be resumed (trained before runs
    were opened at training, ended otherwise than FINISHED, or not in this store).
    It records params (no path of this machine: :func:`~slmops.tasks.registry.tracking.
    portable`), per-epoch metrics, the DVC hashes of the training and test data (as
    its input datasets), the git commit, the evaluation files, a per-class table and
    the model (transformers flavour, safetensors) with a signature and input example.
    The test metrics are logged against the logged model and the test dataset, which
    is what MLflow's model comparison views read. The version's description is its
    model card (:mod:`slmops.tasks.registry.model_card`).

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
        report = json.loads((eval_dir / REPORT_FILE).read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename}: missing; train and evaluate before registering") from None
    digest = model_digest(model_dir)
    if report.get("model") != digest:
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
    resume = _resumable_run(registry, training.get("mlflow_run_id"))
    found = find_registered(registry, name, digest, data["test"], who=who)
    if found is not None:
        log.info("%s version %s is this model (%s) already: reused", name, found.version, digest)
        if resume is not None:  # its training run, ended, says what became of it
            registry.set_run_tags(
                resume, {TAG_DUPLICATE: f"{name} version {found.version}", TAG_PHASE: "duplicate"}
            )
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
        model_card.TAG_DECISION: "pending",
        model_card.TAG_WEAKEST: model_card.weakest_classes(report.get("per_class") or {}),
        TAG_DIGEST: digest,
        TAG_REGISTRATION: PENDING,  # complete once the run has ended
        TAG_RECIPE: recipe(params, data).fingerprint,  # a retrain of the same skips
    }
    if resume is None:
        run_name = run_name or challenger_run_name(params, data, trigger)
    # Params are logged without any path of this machine (relative to the project, or
    # the last part and, for a local base model, its content hash).
    train_params = {
        k: portable(v, params.root) for k, v in flatten("train", training["params"]).items()
    }
    eval_params = flatten("evaluate", params.evaluate.model_dump(mode="json"))
    with start_run(params, run_name=run_name, run_id=resume) as run:
        run.set_tags(
            {
                "git.commit": commit,
                "data.labeled_hash": data["labeled"],
                "data.test_hash": data["test"],
                "trigger": trigger,
                "actor": actor(),
                "device": training["device"],
                "precision": training["precision"],
                model_card.TAG_DECISION: "pending",
            }
        )
        run.log_params(train_params)
        run.log_params({k: portable(v, params.root) for k, v in eval_params.items()})
        for row in training["history"]:
            epoch = int(row["epoch"])
            if resume is not None and epoch > int(training.get("resumed_from_epoch") or 0):
                continue  # logged by the training run as it ended
            run.log_metrics(
                {k: float(v) for k, v in row.items() if k != "epoch" and v is not None}, step=epoch
            )
        run.log_metrics({"train_seconds": float(training["seconds"])})
        run.log_dataset(
            train,
            name="labeled",
            source=str(portable(params.data.labeled_dir, params.root)),
            digest=data["labeled"],
            context="training",
        )
        run.log_dataset(
            test,
            name="test",
            source=str(portable(params.data.test_dir, params.root)),
            digest=data["test"],
            context="evaluation",
        )
        run.log_artifacts(eval_dir, artifact_path="eval")
        run.log_artifact(model_dir / TRAINING_FILE)
        if report.get("per_class"):
            per_class = [{"class": k, **v} for k, v in report["per_class"].items()]
            run.log_table(pd.DataFrame(per_class), "eval/per_class.json")
        logged = log_model(
            model_dir,
            input_example=test["text"].head(2).tolist(),
            task=task,
            params={
                **{k: train_params[k] for k in _MODEL_PARAMS if k in train_params},
                "data.labeled_hash": data["labeled"],
                "data.test_hash": data["test"],
            },
        )
        # Test metrics of this model on the test split: what the Models tab and the
        # version comparison show side by side (logged on the run too).
        run.log_model_metrics(
            {(k if k.startswith("test_") else f"test_{k}"): float(v) for k, v in metrics.items()},
            model_id=logged.model_id,
            dataset="test",
        )
        # The lookup again and the registration as one step: a twin registering the
        # same model meanwhile gets one version, not two.
        with project_lock(params, "register"):
            found = find_registered(registry, name, digest, data["test"], who=who)
            if found is not None:
                run.set_tags(
                    {TAG_DUPLICATE: f"{name} version {found.version}", TAG_PHASE: "duplicate"}
                )
                log.info("%s version %s was registered meanwhile: reused", name, found.version)
                return Registered(found.run_id, found.version, found.uri, reused=True)
            version = register(logged.model_uri, name, tags=version_tags)
        run.set_tags({TAG_PHASE: REGISTERED})
    mark_complete(registry, name, version)  # the run has ended: nothing left to do
    model_card.refresh(registry, name, version)
    log.info("registered %s version %s (run %s)", name, version, run.id)
    return Registered(run.id, version, logged.model_uri)
