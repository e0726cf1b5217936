"""Evaluating a token classifier (NER): the sequence classifier's files, filled with
entity-level figures (strict span match, :mod:`slmops.tasks.task_types.token.metrics`).

The engine (:func:`slmops.tasks.model.evaluate.evaluate_model`) times the
predictions and writes the files; this module says what fills them:

- ``metrics.json``: ``f1``, ``precision``, ``recall`` (micro over entities),
  ``macro_f1`` (over entity types), ``accuracy`` (share of texts whose predicted
  span set is exactly the gold one), ``word_accuracy`` and ``ece`` (word level),
  and the engine's counts and timings;
- ``report.json``: :func:`slmops.tasks.task_types.token.metrics.entity_report`
  (``per_class`` per entity type), ``word_level``, ``calibration_bins``,
  ``slices`` (``per_type``, ``length`` in words, ``source_val``);
- ``predictions.csv``: ``text``, ``label`` (gold span JSON), ``pred`` (predicted
  span JSON), ``confidence`` (mean over the text's words of the top probability
  at their first sub-word), ``correct`` (``pred == label``), ``source`` if any;
- plots: the confusion of entity *types* per word (``O`` included) and the
  reliability of the per-word tag probability (word correct = its BIO tag right).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from slmops.tasks.core.config import EvalConfig
from slmops.tasks.model.evaluate import Predictions, TaskReport
from slmops.tasks.model.inference import BasePredictor
from slmops.tasks.model.metrics import expected_calibration_error
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.task_types.token.alignment import WordTags
from slmops.tasks.task_types.token.metrics import (
    entity_report,
    length_slices,
    micro_scores,
    row_counts,
)
from slmops.tasks.task_types.token.predict import predict_word_tags


def entity_predictions(predictor: BasePredictor, df: pd.DataFrame, batch_size: int) -> Predictions:
    """Predictions for a frame with ``text`` and ``label`` (span JSON): label
    (canonical), pred, confidence, correct (and source); ``raw`` holds each text's
    :class:`slmops.tasks.task_types.token.alignment.WordTags`."""
    texts = df["text"].astype(str).tolist()
    words = predict_word_tags(predictor, texts, batch_size=batch_size)
    out = pd.DataFrame({"text": texts})
    out["label"] = [sp.dumps(sp.loads(cell)) for cell in df["label"].astype(str)]
    out["pred"] = [sp.dumps(w.spans()) for w in words]
    out["confidence"] = [round(w.confidence, 6) for w in words]
    out["correct"] = out["pred"] == out["label"]  # both canonical: equal strings, equal sets
    if "source" in df:
        out["source"] = df["source"].to_numpy()
    return Predictions(out, words)


def word_level(
    texts: list[str], gold: list[list[sp.Span]], words: list[WordTags]
) -> dict[str, np.ndarray]:
    """Per word of every text: the gold and predicted BIO tags, their entity types (``O``
    for none) and the score (NaN for a word cut by truncation, predicted ``O``)."""
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


def entity_eval_report(
    test: Predictions, val: Predictions | None, types: list[str], cfg: EvalConfig
) -> TaskReport:
    """Entity scores (micro, macro, per type), word-level tag accuracy and calibration,
    slices by type and length (and by source on ``val``); the confusion of entity
    types per word. ``types``: the entity types the model was trained for."""
    preds, words = test.frame, test.raw
    texts = preds["text"].tolist()
    gold = [sp.loads(cell) for cell in preds["label"]]
    pred = [w.spans() for w in words]
    report = entity_report(gold, pred, types)
    word = word_level(texts, gold, words)
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
    if val is not None:
        counts = row_counts(
            [sp.loads(cell) for cell in val.frame["label"]], [w.spans() for w in val.raw]
        )
        source = val.frame["source"].astype(object).where(val.frame["source"].notna(), "unknown")
        source = source.astype(str).to_numpy()
        report["slices"]["source_val"] = {
            name: micro_scores(counts[source == name]) for name in sorted(set(source))
        }
    metrics = {
        "f1": report["f1"],
        "precision": report["precision"],
        "recall": report["recall"],
        "macro_f1": report["macro_f1"],
        "accuracy": report["accuracy"],
        "word_accuracy": word_accuracy,
        "ece": ece,
    }
    summary = (
        "entity F1 {:.4f} (precision {:.4f}, recall {:.4f}), macro-F1 {:.4f}, exact-match "
        "accuracy {:.4f}"
    ).format(
        metrics["f1"], metrics["precision"], metrics["recall"], metrics["macro_f1"],
        metrics["accuracy"],
    )  # fmt: skip
    classes = ["O", *types, *sorted(set(word["predicted"]) - {"O", *types})]
    return TaskReport(metrics, report, word["actual"], word["predicted"], classes, summary)
