"""Evaluating a token classifier: the same files as a sequence classifier, filled
with entity-level figures that agree with the predictions written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from slmops.tasks.core.config import EvalConfig
from slmops.tasks.model.evaluate import METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE, evaluate_model
from slmops.tasks.model.inference import Predictor
from slmops.tasks.task_types import task_type
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.task_types.token.metrics import entity_report
from slmops.tasks.task_types.token.predict import predict_entities
from tests.tasks.tiny_model import WNUT_TYPES, make_tiny_model, tiny_ner_frames

TAGS = sp.tag_names(WNUT_TYPES)
NER = task_type("token_classification")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    model = make_tiny_model(
        tmp_path_factory.mktemp("tiny") / "ner", labels=TAGS, task="token_classification"
    )
    return Predictor.from_dir(model, device="cpu", task=NER)


@pytest.fixture(scope="module")
def frames(predictor) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A test frame whose first half is labelled with the model's own answers (so some
    rows are exactly right and F1 is not 0) and a validation frame with sources."""
    val, test = tiny_ner_frames(16, 40)
    half = len(test) // 2
    own = predict_entities(predictor, test["text"].head(half).tolist())
    test = test.copy()
    test.loc[: half - 1, "label"] = [
        sp.dumps([(e["start"], e["end"], e["label"]) for e in row]) for row in own
    ]
    val = val.assign(source=["seed"] * 10 + ["feedback"] * 4 + [None] * 2)
    return test, val


@pytest.fixture(scope="module")
def evaluated(predictor, frames, tmp_path_factory):
    test, val = frames
    out = tmp_path_factory.mktemp("eval")
    cfg = EvalConfig(latency_samples=3, length_buckets=[10, 20])
    return evaluate_model(predictor, test, cfg, out, task=NER, val=val, model="sha256:abc"), out


def test_the_same_files_are_written(evaluated):
    _, out = evaluated
    for name in (METRICS_FILE, REPORT_FILE, PREDICTIONS_FILE):
        assert (out / name).is_file(), name
    for name in ("confusion.json", "confusion_matrix.png", "reliability.json", "reliability.png"):
        assert (out / "plots" / name).is_file(), name
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["model"] == "sha256:abc"
    assert report["metrics"] == json.loads((out / METRICS_FILE).read_text())


def test_metrics_agree_with_entity_report_on_the_predictions(evaluated, frames):
    result, out = evaluated
    test, _ = frames
    preds = pd.read_csv(out / PREDICTIONS_FILE, keep_default_na=False)
    assert list(preds.columns) == ["text", "label", "pred", "confidence", "correct"]
    assert preds["text"].tolist() == test["text"].tolist()
    gold = [sp.loads(c) for c in preds["label"]]
    pred = [sp.loads(c) for c in preds["pred"]]
    assert gold == [sp.loads(c) for c in test["label"]]
    want = entity_report(gold, pred, WNUT_TYPES)
    metrics = json.loads((out / METRICS_FILE).read_text())
    for key in ("f1", "precision", "recall", "macro_f1", "accuracy"):
        assert metrics[key] == want[key], key
    assert metrics["test_examples"] == len(test)
    assert metrics["examples_per_s"] > 0
    assert {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms"} <= set(metrics)
    assert 0.0 < metrics["f1"] < 1.0 and metrics["accuracy"] >= 0.5
    assert preds["correct"].tolist() == [g == p for g, p in zip(gold, pred, strict=True)]
    assert preds["correct"].head(len(test) // 2).all(), "rows labelled with the model's answers"
    assert ((preds["confidence"] > 0) & (preds["confidence"] <= 1)).all()
    assert result.metrics == metrics


def test_report_slices_and_word_level_figures(evaluated, frames):
    _, out = evaluated
    test, _ = frames
    report = json.loads((out / REPORT_FILE).read_text())
    assert list(report["per_class"]) == WNUT_TYPES
    assert report["slices"]["per_type"] == report["per_class"]
    lengths = report["slices"]["length"]
    assert set(lengths) <= {"<=10 words", "11-20 words", ">20 words"}
    assert sum(s["n"] for s in lengths.values()) == len(test)
    source = report["slices"]["source_val"]
    assert {k: v["n"] for k, v in source.items()} == {"feedback": 4, "seed": 10, "unknown": 2}
    words = sum(len(sp.words(t)) for t in test["text"])
    assert report["word_level"]["words"] == words
    assert report["word_level"]["scored_words"] == words  # nothing truncated at 128
    assert sum(b["count"] for b in report["calibration_bins"]) == words

    confusion = json.loads((out / "plots" / "confusion.json").read_text())
    assert len(confusion) == words
    assert {r["actual"] for r in confusion} <= {"O", *WNUT_TYPES}
    assert "O" in {r["actual"] for r in confusion}
    reliability = json.loads((out / "plots" / "reliability.json").read_text())
    assert reliability and all(0 <= r["accuracy"] <= 1 for r in reliability)


def test_word_confusion_counts_match_the_tags(evaluated, frames):
    _, out = evaluated
    preds = pd.read_csv(out / PREDICTIONS_FILE, keep_default_na=False)
    confusion = json.loads((out / "plots" / "confusion.json").read_text())
    pairs = []
    for text, label, pred in zip(preds["text"], preds["label"], preds["pred"], strict=True):
        want = sp.to_tags(text, sp.loads(label))
        got = sp.to_tags(text, sp.loads(pred))
        pairs += [(a[2:] or a, b[2:] or b) for a, b in zip(want, got, strict=True)]
    assert [(r["actual"], r["predicted"]) for r in confusion] == pairs
    metrics = json.loads((out / METRICS_FILE).read_text())
    agree = np.mean([a == b for a, b in pairs])
    assert metrics["word_accuracy"] <= agree + 1e-9  # BIO tags right implies types right


def test_no_source_column_no_source_slice(predictor, frames, tmp_path):
    test, _ = frames
    result = evaluate_model(
        predictor, test.head(5), EvalConfig(latency_samples=0), tmp_path, task=NER
    )
    assert "source_val" not in result.report["slices"]
    assert "latency_p50_ms" not in result.metrics
    assert "source" not in result.predictions.columns
