"""Feedback ingestion on a tiny git + DVC project with a real SQLite feedback store."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import LabeledPaths, load_label_set, read_labeled
from slmops.tasks.feedback.ingest import (
    RETRAIN_MARK,
    labels_since_retrain,
    live_accuracy,
    retrain_reason,
    watermark,
)
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.pipeline.prepare import ingest_feedback
from slmops.tasks.task_types import task_type
from tests.conftest import REPO, run
from tests.tasks.feedback.conftest import predict_and_correct

SEQUENCE = task_type("sequence_classification")

pytestmark = pytest.mark.slow


NEW_TEXTS = [
    ("where is the card you posted to me", "exchange_rate", "card_arrival", "ann"),
    ("my top up did not go through at all", "top_up_failed", "top_up_failed", "bob"),
    ("someone stole my card this morning", "card_arrival", "lost_or_stolen_card", None),
]


def test_feedback_becomes_a_committed_data_version_once(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    before = read_labeled(params)
    with FeedbackStore.from_params(params) as store:
        ids = predict_and_correct(store, labels, NEW_TEXTS)
        result = ingest_feedback(params, store)
        assert result.read == 3 and result.summary.added == 3
        assert watermark(store) == max(ids)
        assert result.live == {"1": {"n": 3, "accuracy": pytest.approx(1 / 3, abs=1e-4)}}

        after = read_labeled(params)
        assert len(after) == len(before) + 3
        fed = after[after["source"] == "feedback"]
        assert sorted(fed["source_id"]) == sorted(str(i) for i in ids)
        assert set(fed["batch_id"]) == {f"feedback-1-{max(ids)}"}
        # The .dvc file is committed with a message that says what came in.
        log = run(["git", "log", "-1", "--format=%B", "--", "data/labeled.dvc"], project).stdout
        assert "feedback 1-3: 3 added, 0 corrected, 0 quarantined" in log
        assert "model version 1: live accuracy 0.3333 on 3 feedback rows" in log
        assert run(["git", "status", "--porcelain", "data/labeled.dvc"], project).stdout == ""
        assert result.commit and result.version

        again = ingest_feedback(params, store)
        assert again.read == 0 and again.summary is None
        assert len(read_labeled(params)) == len(after)


def test_conflicting_corrections_are_resolved_by_majority_or_quarantined(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    text_a, text_b = "card still not here after a week", "what rate do you use for euros"
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(
            store,
            labels,
            [
                (text_a, "exchange_rate", "card_arrival", "ann"),
                (text_a, "exchange_rate", "card_arrival", "bob"),
                (text_a, "exchange_rate", "lost_or_stolen_card", "cy"),
                (text_b, "card_arrival", "exchange_rate", "ann"),
                (text_b, "card_arrival", "top_up_failed", "bob"),
            ],
        )
        result = ingest_feedback(params, store)
    assert result.summary.added == 1 and result.summary.quarantined == 1
    data = read_labeled(params)
    assert data.loc[data["text"] == text_a, "label"].tolist() == ["card_arrival"]
    quarantine = pd.read_csv(LabeledPaths(params).quarantine, dtype=str)
    row = quarantine[quarantine["text"] == text_b].iloc[0]
    assert row["source"] == "feedback" and "tie between labels" in row["reason"]


def test_feedback_with_a_label_outside_the_label_set_is_quarantined(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(store, labels, NEW_TEXTS[:1])
        # A served model that knows a label the labeled data does not.
        predict_and_correct(
            store, [*labels, "crypto_question"], [("can I buy bitcoin", "exchange_rate",
                                                   "crypto_question", "ann")]
        )  # fmt: skip
        result = ingest_feedback(params, store)
    assert result.summary.added == 1 and result.summary.quarantined == 1
    quarantine = pd.read_csv(LabeledPaths(params).quarantine, dtype=str)
    row = quarantine.iloc[-1]
    assert row["text"] == "can I buy bitcoin" and row["check"] == "label_in_set"
    assert row["reason"] == "label 'crypto_question' is not in the label set"


KILL_AT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import slmops.tasks.feedback.ingest as ingest
from slmops.tasks.core.config import load_params
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.task_types import task_type

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

params = load_params({params!r})
store = FeedbackStore.from_params(params)
if {point!r} == "before-watermark":
    store.set_watermark = die  # data written, dvc-added and committed; watermark not yet moved
else:
    ingest.track = die  # data written; not yet dvc-added, committed or watermarked
ingest.ingest_feedback(params, store, task_type(params))
"""


@pytest.mark.parametrize("point", ["before-watermark", "before-dvc-add"])
def test_a_kill_mid_ingestion_then_rerun_ingests_each_row_exactly_once(project: Path, point):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    with FeedbackStore.from_params(params) as store:
        ids = predict_and_correct(store, labels, NEW_TEXTS)
    script = project / "kill.py"
    script.write_text(
        textwrap.dedent(
            KILL_AT.format(repo=str(REPO), params=str(project / "params.yaml"), point=point)
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with FeedbackStore.from_params(params) as store:
        assert watermark(store) == 0  # killed before it moved
        result = ingest_feedback(params, store)
        assert result.read == 3 and result.already_in_data == 3
        assert watermark(store) == max(ids)
    data = read_labeled(params)
    fed = data[data["source"] == "feedback"]
    assert sorted(fed["source_id"]) == sorted(str(i) for i in ids)  # each exactly once
    assert run(["git", "status", "--porcelain", "data/labeled.dvc"], project).stdout == ""
    log = run(["git", "log", "--format=%s", "--", "data/labeled.dvc"], project).stdout
    assert "feedback 1-3" in log


def test_retrain_thresholds(tiny_project: Path):
    params = load_params(tiny_project / "params.yaml")
    few = {"1": {"n": 10, "accuracy": 0.1}}  # too few rows to count
    many_bad = {"1": {"n": 60, "accuracy": 0.7}}
    assert retrain_reason(params, 5, few) is None
    assert "below the floor 0.8" in retrain_reason(params, 5, many_bad)
    assert "200 new feedback labels" in retrain_reason(params, 200, {})


def test_labels_since_retrain_counts_past_the_retrain_mark(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(store, labels, NEW_TEXTS)
        ingest_feedback(params, store)
        assert labels_since_retrain(params, store) == 3
        store.set_watermark(RETRAIN_MARK, 2)
        assert labels_since_retrain(params, store) == 1


def test_live_accuracy_per_model_version():
    df = pd.DataFrame(
        {
            "model_version": ["1", "1", "2"],
            "label": ["a", "b", "a"],
            "predicted_label": ["a", "a", "a"],
        }
    )
    assert live_accuracy(df) == {"1": {"n": 2, "accuracy": 0.5}, "2": {"n": 1, "accuracy": 1.0}}
