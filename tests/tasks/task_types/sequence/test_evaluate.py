"""Evaluating a sequence classifier: the report files, with figures that agree with
the predictions written, and source slices from the validation split."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from slmops.tasks.core.config import EvalConfig
from slmops.tasks.model.evaluate import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    evaluate_model,
)
from slmops.tasks.model.inference import Predictor
from slmops.tasks.model.metrics import classification_report
from slmops.tasks.task_types import task_type
from tests.tasks.tiny_model import TINY_LABELS, make_tiny_model, tiny_frames

SEQ = task_type("sequence_classification")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    model = make_tiny_model(tmp_path_factory.mktemp("tiny") / "cls", labels=TINY_LABELS)
    return Predictor.from_dir(model, device="cpu", task=SEQ)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    test, val = tiny_frames(8, 4)
    val = val.assign(source=(["seed", "feedback"] * len(val))[: len(val)])
    val.loc[0, "source"] = None
    return test, val


@pytest.fixture(scope="module")
def evaluated(predictor, frames, tmp_path_factory):
    test, val = frames
    out = tmp_path_factory.mktemp("eval")
    cfg = EvalConfig(latency_samples=3, length_buckets=[5, 10])
    return evaluate_model(predictor, test, cfg, out, task=SEQ, val=val, model="sha256:abc"), out


def test_the_files_are_written_and_agree(evaluated, frames, predictor):
    result, out = evaluated
    test, _ = frames
    for name in (METRICS_FILE, REPORT_FILE, PREDICTIONS_FILE):
        assert (out / name).is_file(), name
    for name in ("confusion.json", "confusion_matrix.png", "reliability.json", "reliability.png"):
        assert (out / "plots" / name).is_file(), name
    report = json.loads((out / REPORT_FILE).read_text())
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert report["model"] == "sha256:abc" and report["metrics"] == metrics == result.metrics
    want = classification_report(
        test["label"].tolist(), predictor.predict_proba(test["text"].tolist()), TINY_LABELS
    )
    for key in ("accuracy", "macro_f1", "weighted_f1", "ece"):
        assert metrics[key] == want[key], key
    assert report["per_class"] == want["per_class"]
    assert metrics["test_examples"] == len(test) and metrics["examples_per_s"] > 0
    assert {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms"} <= set(metrics)
    assert list(report)[-2:] == ["metrics", "model"], "the engine's keys come last"


def test_predictions_and_slices(evaluated, frames, predictor):
    result, out = evaluated
    test, val = frames
    preds = pd.read_csv(out / PREDICTIONS_FILE)
    assert list(preds.columns) == ["text", "label", "pred", "confidence", "correct"]
    assert preds["text"].tolist() == test["text"].tolist()
    assert preds["pred"].tolist() == predictor.predict(test["text"].tolist())
    assert preds["correct"].tolist() == (preds["pred"] == preds["label"]).tolist()
    confusion = json.loads((out / "plots" / "confusion.json").read_text())
    assert [(r["actual"], r["predicted"]) for r in confusion] == list(
        zip(preds["label"], preds["pred"], strict=True)
    )
    slices = result.report["slices"]
    assert sum(s["n"] for s in slices["length"].values()) == len(test)
    assert {k: v["n"] for k, v in slices["source_val"].items()} == {
        "feedback": (val["source"] == "feedback").sum(),
        "seed": (val["source"] == "seed").sum(),
        "unknown": 1,
    }
    assert sum(b["count"] for b in result.report["calibration_bins"]) == len(test)


def test_no_source_column_no_source_slice(predictor, frames, tmp_path):
    test, _ = frames
    result = evaluate_model(
        predictor, test.head(6), EvalConfig(latency_samples=0), tmp_path, task=SEQ
    )
    assert "source_val" not in result.report["slices"]
    assert "latency_p50_ms" not in result.metrics
