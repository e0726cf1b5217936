"""Review-queue export, read back by the label import as an annotator would return it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.feedback.review import export_review
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
from slmops.tasks.labels.sources import NO_ANNOTATIONS_ONLY_PREDICTIONS, read_votes
from slmops.tasks.task_types import LABEL_FORMATS, task_type

SEQUENCE = task_type("sequence_classification")


@pytest.fixture
def params(tmp_path):
    params = parse_params({}, tmp_path / "params.yaml", root=tmp_path)
    with FeedbackStore.from_params(params) as store:
        ids = store.log_predictions(
            [
                NewPrediction(
                    text, label, conf, [{"label": label, "score": conf}], "slmops-intent", "2"
                )
                for text, label, conf in (
                    ("card never came", "card_arrival", 0.4),
                    ("what rate for euros", "exchange_rate", 0.9),
                    ("top up did not work", "card_arrival", 0.2),
                )
            ]
        )
        store.add_feedback(
            ids[1], "exchange_rate", ["exchange_rate"], task=SEQUENCE
        )  # reviewed: not exported
    return params


def test_label_studio_export_carries_answers_as_predictions_not_votes(params, tmp_path):
    out = tmp_path / "review" / "tasks.json"
    assert export_review(params, out) == 2
    tasks = json.loads(out.read_text())
    assert [t["data"]["text"] for t in tasks] == ["top up did not work", "card never came"]
    pre = tasks[0]["predictions"][0]
    assert pre["model_version"] == "slmops-intent/2" and pre["score"] == pytest.approx(0.2)
    assert pre["result"][0]["value"] == {"choices": ["card_arrival"]}
    assert len(tasks[0]["data"]["prediction_id"]) == 32

    # An annotator corrects the first task in Label Studio; the second stays untouched.
    tasks[0]["annotations"] = [
        {
            "completed_by": 1,
            "result": [{**pre["result"][0], "value": {"choices": ["top_up_failed"]}}],
        }
    ]
    tasks[1]["annotations"] = []
    returned = tmp_path / "export.json"
    returned.write_text(json.dumps(tasks))
    table = read_votes(returned, params.label_import, LABEL_FORMATS)
    assert table.votes[["text", "label"]].values.tolist() == [
        ["top up did not work", "top_up_failed"]
    ]
    assert table.rejected["reason"].tolist() == [NO_ANNOTATIONS_ONLY_PREDICTIONS]


def test_csv_export_leaves_the_label_for_the_reviewer(params, tmp_path):
    out = tmp_path / "review.csv"
    assert export_review(params, out, fmt="csv", limit=1) == 1
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame.columns.tolist() == [
        "prediction_id",
        "text",
        "predicted_label",
        "confidence",
        "model_version",
        "label",
    ]
    assert frame.loc[0, "text"] == "top up did not work" and frame.loc[0, "label"] == ""
    frame.loc[0, "label"] = "top_up_failed"
    frame.to_csv(out, index=False)
    votes = read_votes(out, params.label_import, LABEL_FORMATS).votes
    assert votes[["text", "label"]].values.tolist() == [["top up did not work", "top_up_failed"]]
    with pytest.raises(ValueError, match="expected 'label-studio' or 'csv'"):
        export_review(params, out, fmt="xml")  # type: ignore[arg-type]
