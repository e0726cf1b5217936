"""Revoking a principal's feedback: the next ingestion derives the labels again as if it
had never come, and says so in the data's history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import LabeledPaths, load_label_set, read_labeled
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.pipeline.prepare import ingest_feedback
from tests.conftest import run
from tests.tasks.feedback.conftest import predict_and_correct
from tests.tasks.feedback.test_policy import label_of, seed_texts

pytestmark = pytest.mark.slow


def test_revoking_one_of_two_reviewers_restores_the_curated_label(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    (text,) = seed_texts(params, "card_arrival", 1)
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(
            store,
            labels,
            [
                (text, "card_arrival", "exchange_rate", "ann"),
                (text, "card_arrival", "exchange_rate", "mallory"),
            ],
        )
        ingest_feedback(params, store)
        assert label_of(params, text) == "exchange_rate"
        revoked = store.revoke("mallory", by="ops", reason="stolen key")
        assert len(revoked) == 1 and store.revoke("mallory", by="ops", reason="again") == []
        result = ingest_feedback(params, store)
        assert result.undone.relabeled == 1 and result.read == 0
        again = ingest_feedback(params, store)
        assert not again.undone.changed  # nothing cites a revoked id any more
    row = read_labeled(params).set_index("text").loc[text]
    assert row["label"] == "card_arrival" and row["source"] == "seed"
    last = pd.read_csv(LabeledPaths(params).corrections, dtype=str).iloc[-1]
    assert (last["old_label"], last["new_label"]) == ("exchange_rate", "card_arrival")
    assert last["new_source_file"] == "revocation" and last["new_source_id"] == str(revoked[0])
    log = run(["git", "log", "-1", "--format=%s", "--", "data/labeled.dvc"], project).stdout
    assert log.startswith("data: revoked feedback undone: 1 label(s) changed")


def test_a_text_only_revoked_feedback_brought_leaves_for_the_quarantine(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    text = "can i pay for a top up with bitcoin"
    with FeedbackStore.from_params(params) as store:
        (fid,) = predict_and_correct(
            store, labels, [(text, "card_arrival", "top_up_failed", "eve")]
        )
        ingest_feedback(params, store)
        assert label_of(params, text) == "top_up_failed"
        store.revoke("eve", by="ops", reason="spam")
        assert ingest_feedback(params, store).undone.removed == 1
    assert text not in set(read_labeled(params)["text"])
    quarantine = pd.read_csv(LabeledPaths(params).quarantine, dtype=str)
    row = quarantine[quarantine["text"] == text].iloc[-1]
    assert row["check"] == "revocation" and f"its feedback ({fid}) was revoked" in row["reason"]


def test_revoked_feedback_not_yet_ingested_never_counts_and_leaves_the_queue(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    (text,) = seed_texts(params, "top_up_failed", 1)
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(store, labels, [(text, "top_up_failed", "exchange_rate", "ann")])
        ingest_feedback(params, store)  # waits in the conflicts queue
        predict_and_correct(store, labels, [(text, "top_up_failed", "exchange_rate", "mallory")])
        # --since: only what mallory sent from now on (all of it here)
        since = datetime.now(UTC) - timedelta(minutes=1)
        assert len(store.revoke("mallory", by="ops", reason="x", since=since)) == 1
        assert (
            len(
                store.revoke(
                    "ann", by="ops", reason="x", since=datetime.now(UTC) + timedelta(days=1)
                )
            )
            == 0
        )
        result = ingest_feedback(params, store)
        assert result.skipped == 1 and result.new_labels == 0
        (waiting,) = store.held("conflict")  # ann's, still waiting for a second reviewer
        assert waiting.item.user == "ann"
        store.revoke("ann", by="ops", reason="x")
        ingest_feedback(params, store)
        assert store.held("conflict") == []
        assert [h.resolution for h in store.held(pending=False)] == ["revoked"]
    assert label_of(params, text) == "top_up_failed"
