"""Evaluation on the frozen test split: metrics, slices, calibration, latency, plots.

Writes ``metrics.json`` (the headline numbers, for ``dvc metrics show``),
``report.json`` (per-class metrics, slices, calibration bins), per-example
``predictions.csv`` (what the promotion gate compares), the PNG plots, and the
JSON rows that ``dvc plots show`` renders.

``report.json`` is written last and names the model it evaluated (``model``), so
a run killed part-way leaves a report that still names the previous model (or
none): registration compares it with the model on disk and refuses a mismatch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import EvalConfig
from tasks.dataset import write_csv_atomic, write_json_atomic
from tasks.inference import Predictor
from tasks.metrics import (
    classification_report,
    confusion_rows,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_reliability,
    reliability_rows,
    slice_metrics,
)

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


def measure_latency(predictor: Predictor, texts: list[str], samples: int) -> dict[str, float]:
    """Batch-1 latency (tokenisation included) over ``samples`` texts, in ms."""
    if samples == 0 or not texts:
        return {}
    chosen = [texts[i % len(texts)] for i in range(samples)]
    predictor.predict_proba(chosen[:5], batch_size=1)  # warm-up
    times = []
    for text in chosen:
        start = time.perf_counter()
        predictor.predict_proba([text], batch_size=1)
        times.append((time.perf_counter() - start) * 1000)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {
        "latency_p50_ms": round(float(p50), 3),
        "latency_p95_ms": round(float(p95), 3),
        "latency_p99_ms": round(float(p99), 3),
    }


def predict_frame(
    predictor: Predictor, df: pd.DataFrame, batch_size: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictions for a frame with ``text`` and ``label``: label, pred, confidence, correct."""
    probs = predictor.predict_proba(df["text"].tolist(), batch_size=batch_size)
    pred_idx = probs.argmax(axis=1)
    out = df[["text", "label"]].copy()
    out["pred"] = [predictor.labels[i] for i in pred_idx]
    out["confidence"] = probs.max(axis=1).round(6)
    out["correct"] = out["pred"] == out["label"]
    if "source" in df:
        out["source"] = df["source"]
    return out.reset_index(drop=True), probs


def evaluate_model(
    predictor: Predictor,
    test: pd.DataFrame,
    cfg: EvalConfig,
    out_dir: Path,
    *,
    val: pd.DataFrame | None = None,
    model: str | None = None,
) -> EvalResult:
    """Evaluate on the test split (and slice by data source on ``val`` when given).

    ``model`` (a digest of the evaluated model's files) is recorded in the report.
    """
    labels = predictor.labels
    start = time.perf_counter()
    preds, probs = predict_frame(predictor, test, cfg.batch_size)
    seconds = time.perf_counter() - start
    report = classification_report(preds["label"].tolist(), probs, labels, ece_bins=cfg.ece_bins)
    _, bins = expected_calibration_error(
        preds["confidence"].to_numpy(), preds["correct"].to_numpy(), cfg.ece_bins
    )
    report["calibration_bins"] = bins
    report["slices"] = slice_metrics(preds, length_buckets=cfg.length_buckets)
    if val is not None and "source" in val and len(val):
        val_preds, _ = predict_frame(predictor, val, cfg.batch_size)
        # The test split is all seed data; imported and feedback rows are only in
        # the validation split, so source slices are measured there.
        report["slices"]["source_val"] = slice_metrics(
            val_preds, length_buckets=cfg.length_buckets
        ).get("source", {})

    metrics = {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "weighted_f1": report["weighted_f1"],
        "ece": report["ece"],
        "test_examples": len(preds),
        "examples_per_s": round(len(preds) / seconds, 1),
        **measure_latency(predictor, test["text"].tolist(), cfg.latency_samples),
    }
    report["metrics"] = metrics
    report["model"] = model

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    write_json_atomic(metrics, out_dir / METRICS_FILE)
    write_csv_atomic(preds, out_dir / PREDICTIONS_FILE)
    write_json_atomic(confusion_rows(preds["label"], preds["pred"]), plots / "confusion.json")
    write_json_atomic(reliability_rows(bins), plots / "reliability.json")
    plot_confusion_matrix(preds["label"], preds["pred"], labels, plots / "confusion_matrix.png")
    plot_reliability(bins, plots / "reliability.png")
    write_json_atomic(report, out_dir / REPORT_FILE)  # last: it says the files are complete
    log.info(
        "test accuracy %.4f, macro-F1 %.4f, ECE %.4f on %d examples",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["ece"],
        len(preds),
    )
    return EvalResult(metrics, report, preds, out_dir)
