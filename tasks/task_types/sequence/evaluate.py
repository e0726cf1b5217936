"""Evaluating a sequence classifier: one label per text, scored by accuracy and
per-class precision, recall and F1; calibration of the top probability; accuracy
and macro-F1 per text length and per data source.

The engine (:func:`slmops.tasks.model.evaluate.evaluate_model`) times the
predictions and writes the files; this module says what fills them:

- ``metrics.json``: ``accuracy``, ``macro_f1``, ``weighted_f1``, ``ece`` (and the
  engine's counts and timings);
- ``report.json``: :func:`slmops.tasks.model.metrics.classification_report`,
  ``calibration_bins``, ``slices`` (``length`` in words, ``source_val``);
- ``predictions.csv``: ``text``, ``label``, ``pred``, ``confidence`` (the top
  probability), ``correct``, ``source`` if any;
- plots: the confusion of labels and the reliability of the top probability.
"""

from __future__ import annotations

from slmops.tasks.core.config import EvalConfig
from slmops.tasks.model.evaluate import Predictions, TaskReport
from slmops.tasks.model.inference import BasePredictor
from slmops.tasks.model.metrics import (
    classification_report,
    expected_calibration_error,
    slice_metrics,
)


def label_predictions(predictor: BasePredictor, df, batch_size: int) -> Predictions:
    """Predictions for a frame with ``text`` and ``label``: label, pred, confidence,
    correct (and source); ``raw`` holds the class probabilities ``[rows, labels]``."""
    probs = predictor.predict_proba(df["text"].tolist(), batch_size=batch_size)
    pred_idx = probs.argmax(axis=1)
    out = df[["text", "label"]].copy()
    out["pred"] = [predictor.labels[i] for i in pred_idx]
    out["confidence"] = probs.max(axis=1).round(6)
    out["correct"] = out["pred"] == out["label"]
    if "source" in df:
        out["source"] = df["source"]
    return Predictions(out.reset_index(drop=True), probs)


def label_report(
    test: Predictions, val: Predictions | None, labels: list[str], cfg: EvalConfig
) -> TaskReport:
    """Accuracy, macro- and weighted F1, ECE; per-class scores, calibration bins and
    slices by length (and by source on ``val``)."""
    preds = test.frame
    report = classification_report(preds["label"].tolist(), test.raw, labels, ece_bins=cfg.ece_bins)
    _, bins = expected_calibration_error(
        preds["confidence"].to_numpy(), preds["correct"].to_numpy(), cfg.ece_bins
    )
    report["calibration_bins"] = bins
    report["slices"] = slice_metrics(preds, length_buckets=cfg.length_buckets)
    if val is not None:
        report["slices"]["source_val"] = slice_metrics(
            val.frame, length_buckets=cfg.length_buckets
        ).get("source", {})
    metrics = {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "weighted_f1": report["weighted_f1"],
        "ece": report["ece"],
    }
    summary = "accuracy {:.4f}, macro-F1 {:.4f}, ECE {:.4f}".format(
        metrics["accuracy"], metrics["macro_f1"], metrics["ece"]
    )
    return TaskReport(metrics, report, preds["label"], preds["pred"], labels, summary)
