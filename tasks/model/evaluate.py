"""Evaluation on the frozen test split: metrics, slices, calibration, latency, plots.

Writes ``metrics.json`` (the headline numbers, for ``dvc metrics show``),
``report.json`` (per-class metrics, slices, calibration bins), per-example
``predictions.csv`` (what the promotion gate compares), the PNG plots, and the
JSON rows that ``dvc plots show`` renders.

``report.json`` is written last and names the model it evaluated (``model``), so
a run killed part-way leaves a report that still names the previous model (or
none): registration compares it with the model on disk and refuses a mismatch.

A token classifier (NER; ``predictor.task``) writes the same files, filled with
entity-level figures (strict span match, :mod:`slmops.tasks.task_types.token.metrics`):

- ``metrics.json``: ``f1``, ``precision``, ``recall`` (micro over entities),
  ``macro_f1`` (over entity types), ``accuracy`` (share of texts whose predicted
  span set is exactly the gold one), ``word_accuracy`` and ``ece`` (word level),
  ``test_examples``, ``examples_per_s`` and the latencies;
- ``report.json``: :func:`slmops.tasks.task_types.token.metrics.entity_report` (``per_class`` per
  entity type), ``word_level``, ``calibration_bins``, ``slices`` (``per_type``,
  ``length`` in words, ``source_val``), ``metrics``, ``model``;
- ``predictions.csv``: ``text``, ``label`` (gold span JSON), ``pred`` (predicted
  span JSON), ``confidence`` (mean over the text's words of the top probability
  at their first sub-word), ``correct`` (``pred == label``), ``source`` if any;
- plots: the confusion of entity *types* per word (``O`` included) and the
  reliability of the per-word tag probability (word correct = its BIO tag right).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slmops.tasks.core.config import EvalConfig
from slmops.tasks.data.dataset import write_csv_atomic, write_json_atomic
from slmops.tasks.model.inference import BasePredictor, Predictor
from slmops.tasks.model.metrics import (
    classification_report,
    confusion_rows,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_reliability,
    reliability_rows,
    slice_metrics,
)
from slmops.tasks.task_types import task_type

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
    predict = task_type(predictor.task).predict_call(predictor)  # decoding included
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
    """Evaluate on the test split (and slice by data source on ``val`` when given), as
    the predictor's task type does (:meth:`slmops.tasks.task_types.TaskType.evaluate`): a
    sequence classifier by labels (:func:`evaluate_labels`), a token classifier by
    entities (:func:`evaluate_entities`), into the same files.

    ``model`` (a digest of the evaluated model's files) is recorded in the report.
    """
    return task_type(predictor.task).evaluate(
        predictor, test, cfg, Path(out_dir), val=val, model=model
    )


def evaluate_labels(
    predictor: Predictor,
    test: pd.DataFrame,
    cfg: EvalConfig,
    out_dir: Path,
    *,
    val: pd.DataFrame | None = None,
    model: str | None = None,
) -> EvalResult:
    """:func:`evaluate_model` for a sequence classifier (module doc)."""
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


# --------------------------------------------------------------------------- token classification


def predict_entity_frame(
    predictor: BasePredictor, df: pd.DataFrame, batch_size: int
) -> tuple[pd.DataFrame, list]:
    """Predictions of a token classifier for a frame with ``text`` and ``label`` (span
    JSON): label (canonical), pred, confidence, correct (and source); and each text's
    :class:`slmops.tasks.task_types.token.alignment.WordTags`."""
    from slmops.tasks.task_types.token import spans as sp

    texts = df["text"].astype(str).tolist()
    words = predictor.predict_word_tags(texts, batch_size=batch_size)
    out = pd.DataFrame({"text": texts})
    out["label"] = [sp.dumps(sp.loads(cell)) for cell in df["label"].astype(str)]
    out["pred"] = [sp.dumps(w.spans()) for w in words]
    out["confidence"] = [round(w.confidence, 6) for w in words]
    out["correct"] = out["pred"] == out["label"]  # both canonical: equal strings, equal sets
    if "source" in df:
        out["source"] = df["source"].to_numpy()
    return out, words


def _word_level(texts: list[str], gold: list, words: list) -> dict[str, np.ndarray]:
    """Per word of every text: the gold and predicted BIO tags, their entity types (``O``
    for none) and the score (NaN for a word cut by truncation, predicted ``O``)."""
    from slmops.tasks.task_types.token import spans as sp

    want: list[str] = []
    got: list[str] = []
    scores: list[float] = []
    for text, spans, row in zip(texts, gold, words, strict=True):
        want += sp.to_tags(text, spans)
        got += row.tags
        scores += row.scores
    return {
        "tags": np.asarray(want, dtype=object),
        "pred_tags": np.asarray(got, dtype=object),
        "actual": np.asarray([t[2:] if t != "O" else "O" for t in want], dtype=object),
        "predicted": np.asarray([t[2:] if t != "O" else "O" for t in got], dtype=object),
        "score": np.asarray(scores, dtype=float),
    }


def _micro(counts: np.ndarray) -> dict[str, Any]:
    """Micro entity scores of rows from their ``(tp, fp, fn)`` counts (as length slices)."""
    tp, fp, fn = (int(x) for x in counts.sum(axis=0))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": len(counts),
        "entities": tp + fn,
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
    }


def evaluate_entities(
    predictor: BasePredictor,
    test: pd.DataFrame,
    cfg: EvalConfig,
    out_dir: Path,
    *,
    val: pd.DataFrame | None = None,
    model: str | None = None,
) -> EvalResult:
    """:func:`evaluate_model` for a token classifier (module doc)."""
    from slmops.tasks.task_types.token import spans as sp
    from slmops.tasks.task_types.token.metrics import entity_report, length_slices, row_counts

    types = predictor.label_set
    start = time.perf_counter()
    preds, words = predict_entity_frame(predictor, test, cfg.batch_size)
    seconds = time.perf_counter() - start
    texts = preds["text"].tolist()
    gold = [sp.loads(cell) for cell in preds["label"]]
    pred = [w.spans() for w in words]
    report = entity_report(gold, pred, types)
    word = _word_level(texts, gold, words)
    right = word["tags"] == word["pred_tags"]
    scored = ~np.isnan(word["score"])  # reliability: only the words the model scored
    ece, bins = expected_calibration_error(
        np.clip(word["score"][scored], 0.0, 1.0), right[scored], cfg.ece_bins
    )
    word_accuracy = round(float(right.mean()), 6) if len(right) else 0.0
    report["word_level"] = {
        "words": len(right),
        "scored_words": int(scored.sum()),  # all but those cut by truncation
        "tag_accuracy": word_accuracy,  # every word; a truncated one counts as predicted O
        "ece": ece,
    }
    report["calibration_bins"] = bins
    report["slices"] = {
        "per_type": report["per_class"],
        "length": length_slices(texts, gold, pred, cfg.length_buckets),
    }
    if val is not None and "source" in val and len(val):
        val_preds, val_words = predict_entity_frame(predictor, val, cfg.batch_size)
        counts = row_counts(
            [sp.loads(cell) for cell in val_preds["label"]], [w.spans() for w in val_words]
        )
        # As for classification: imported and feedback rows are only in the validation
        # split, so source slices are measured there.
        source = val_preds["source"].astype(object).where(val_preds["source"].notna(), "unknown")
        source = source.astype(str).to_numpy()
        report["slices"]["source_val"] = {
            name: _micro(counts[source == name]) for name in sorted(set(source))
        }

    metrics = {
        "f1": report["f1"],
        "precision": report["precision"],
        "recall": report["recall"],
        "macro_f1": report["macro_f1"],
        "accuracy": report["accuracy"],
        "word_accuracy": word_accuracy,
        "ece": ece,
        "test_examples": len(preds),
        "examples_per_s": round(len(preds) / seconds, 1),
        **measure_latency(predictor, texts, cfg.latency_samples),
    }
    report["metrics"] = metrics
    report["model"] = model

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    classes = ["O", *types, *sorted(set(word["predicted"]) - {"O", *types})]
    write_json_atomic(metrics, out_dir / METRICS_FILE)
    write_csv_atomic(preds, out_dir / PREDICTIONS_FILE)
    write_json_atomic(confusion_rows(word["actual"], word["predicted"]), plots / "confusion.json")
    write_json_atomic(reliability_rows(bins), plots / "reliability.json")
    plot_confusion_matrix(
        word["actual"], word["predicted"], classes, plots / "confusion_matrix.png"
    )
    plot_reliability(bins, plots / "reliability.png")
    write_json_atomic(report, out_dir / REPORT_FILE)  # last: it says the files are complete
    log.info(
        "test entity F1 %.4f (precision %.4f, recall %.4f), macro-F1 %.4f, exact-match "
        "accuracy %.4f on %d examples",
        metrics["f1"],
        metrics["precision"],
        metrics["recall"],
        metrics["macro_f1"],
        metrics["accuracy"],
        len(preds),
    )
    return EvalResult(metrics, report, preds, out_dir)
