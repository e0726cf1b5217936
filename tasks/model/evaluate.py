"""Evaluation on the frozen test split: the report files every task type writes.

Writes ``metrics.json`` (the headline numbers, for ``dvc metrics show``),
``report.json`` (per-class metrics, slices, calibration bins), per-example
``predictions.csv`` (what the promotion gate compares), the PNG plots (confusion
matrix, reliability diagram), and the JSON rows that ``dvc plots show`` renders.

``report.json`` is written last and names the model it evaluated (``model``), so
a run killed part-way leaves a report that still names the previous model (or
none): registration compares it with the model on disk and refuses a mismatch.

This module is the engine: it times the predictions, measures latency and
writes the files. What is predicted and which figures fill the files is the
task type's (:meth:`slmops.tasks.core.task_type.TaskType.eval_predictions` and
:meth:`~slmops.tasks.core.task_type.TaskType.eval_report`): labels, accuracy and
per-class scores for a sequence classifier (:mod:`slmops.tasks.task_types.sequence.evaluate`),
entity spans and entity-level scores for a token classifier
(:mod:`slmops.tasks.task_types.token.evaluate`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from slmops.tasks.core.config import EvalConfig
from slmops.tasks.data.dataset import write_csv_atomic, write_json_atomic
from slmops.tasks.model.inference import BasePredictor
from slmops.tasks.model.metrics import (
    confusion_rows,
    plot_confusion_matrix,
    plot_reliability,
    reliability_rows,
)

if TYPE_CHECKING:
    from slmops.tasks.core.task_type import TaskType

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.csv"


@dataclass(frozen=True)
class EvalResult:
    """Headline metrics, the full report and where the files are."""

    metrics: dict[str, float]
    report: dict[str, Any]
    predictions: pd.DataFrame
    out_dir: Path


@dataclass(frozen=True)
class Predictions:
    """A task type's answers for the rows of a frame.

    ``frame`` is what ``predictions.csv`` holds: ``text``, ``label``, ``pred``,
    ``confidence``, ``correct`` (and ``source`` when the rows have one); ``raw``
    is whatever else the task type's report reads (class probabilities, word tags).
    """

    frame: pd.DataFrame
    raw: Any = None


@dataclass(frozen=True)
class TaskReport:
    """A task type's figures for one evaluation.

    ``metrics``: the headline figures (``metrics.json`` adds the example count and
    the timings); ``report``: the body of ``report.json`` (``calibration_bins``
    and ``slices`` included); ``actual``/``predicted``/``classes``: the confusion
    matrix's pairs and its class order; ``summary``: the log line's figures.
    """

    metrics: dict[str, float]
    report: dict[str, Any]
    actual: Sequence[str]
    predicted: Sequence[str]
    classes: list[str]
    summary: str


def measure_latency(
    predict: Callable[..., Any], texts: list[str], samples: int
) -> dict[str, float]:
    """Batch-1 latency of ``predict`` (a task type's :meth:`predict_call`: tokenization
    and decoding included) over ``samples`` texts, in ms."""
    if samples == 0 or not texts:
        return {}
    chosen = [texts[i % len(texts)] for i in range(samples)]
    predict(chosen[:5], batch_size=1)  # warm-up
    times = []
    for text in chosen:
        start = time.perf_counter()
        predict([text], batch_size=1)
        times.append((time.perf_counter() - start) * 1000)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {
        "latency_p50_ms": round(float(p50), 3),
        "latency_p95_ms": round(float(p95), 3),
        "latency_p99_ms": round(float(p99), 3),
    }


def evaluate_model(
    predictor: BasePredictor,
    test: pd.DataFrame,
    cfg: EvalConfig,
    out_dir: Path,
    *,
    task: TaskType,
    val: pd.DataFrame | None = None,
    model: str | None = None,
) -> EvalResult:
    """Evaluate ``predictor`` on the test split as ``task`` does, into the report files.

    ``val`` (with a ``source`` column) is predicted too: the test split is all
    seed data, while imported and feedback rows are only in the validation split,
    so source slices are measured there. ``model`` (a digest of the evaluated
    model's files) is recorded in the report.
    """
    out_dir = Path(out_dir)
    start = time.perf_counter()
    preds = task.eval_predictions(predictor, test, cfg.batch_size)
    seconds = time.perf_counter() - start
    val_preds = None
    if val is not None and "source" in val and len(val):
        val_preds = task.eval_predictions(predictor, val, cfg.batch_size)
    part = task.eval_report(preds, val_preds, predictor.labels, cfg)
    frame = preds.frame
    metrics = {
        **part.metrics,
        "test_examples": len(frame),
        "examples_per_s": round(len(frame) / seconds, 1),
        **measure_latency(
            task.predict_call(predictor), frame["text"].tolist(), cfg.latency_samples
        ),
    }
    report = {**part.report, "metrics": metrics, "model": model}
    bins = report["calibration_bins"]

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    write_json_atomic(metrics, out_dir / METRICS_FILE)
    write_csv_atomic(frame, out_dir / PREDICTIONS_FILE)
    write_json_atomic(confusion_rows(part.actual, part.predicted), plots / "confusion.json")
    write_json_atomic(reliability_rows(bins), plots / "reliability.json")
    plot_confusion_matrix(part.actual, part.predicted, part.classes, plots / "confusion_matrix.png")
    plot_reliability(bins, plots / "reliability.png")
    write_json_atomic(report, out_dir / REPORT_FILE)  # last: it says the files are complete
    log.info("test %s on %d examples", part.summary, len(frame))
    return EvalResult(metrics, report, frame, out_dir)
