"""The feedback policy at ingestion: curated labels need k reviewers, a daily cap per
reviewer, anonymous feedback is one reviewer, rows that would break the data set are
dead-lettered, ingestion goes in bounded chunks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import LabeledPaths, load_label_set, read_labeled
from slmops.tasks.feedback.ingest import watermark
from slmops.tasks.feedback.policy import CHECK_CURATED, CHECK_DAILY_CAP
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.pipeline.prepare import ingest_feedback
from tests.conftest import run, write_params
from tests.tasks.feedback.conftest import predict_and_correct

pytestmark = pytest.mark.slow


def seed_texts(params, label: str, n: int) -> list[str]:
    data = read_labeled(params)
    return data.loc[(data["source"] == "seed") & (data["label"] == label), "text"].head(n).tolist()


def label_of(params, text: str) -> str:
    data = read_labeled(params)
    return data.loc[data["text"] == text, "label"].item()


def with_feedback(project: Path, **feedback) -> object:
    write_params(project, feedback=feedback)
    return load_params(project / "params.yaml")


def test_one_reviewer_cannot_change_curated_labels_however_often(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    texts = seed_texts(params, "card_arrival", 3)
    attack = [(t, "card_arrival", "exchange_rate", "mallory") for t in texts for _ in range(3)]
    with FeedbackStore.from_params(params) as store:
        ids = predict_and_correct(store, labels, attack)
        result = ingest_feedback(params, store)
        assert watermark(store) == max(ids)  # looked at, set aside, not stuck
        held = store.held("conflict")
    assert [label_of(params, t) for t in texts] == ["card_arrival"] * 3
    assert result.conflicts == 9 and result.new_labels == 0
    assert result.live == {}  # held corrections do not count toward a forced retrain
    assert sorted(h.item.id for h in held) == sorted(ids)
    assert {h.check for h in held} == {CHECK_CURATED}
    assert "contradicts the curated label 'card_arrival' (seed)" in held[0].reason
    assert "2 distinct reviewers must agree" in held[0].reason


def test_two_reviewers_agreeing_change_a_curated_label_and_are_named(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    (text,) = seed_texts(params, "card_arrival", 1)
    with FeedbackStore.from_params(params) as store:
        (first,) = predict_and_correct(
            store, labels, [(text, "card_arrival", "lost_or_stolen_card", "ann")]
        )
        assert ingest_feedback(params, store).conflicts == 1
        assert label_of(params, text) == "card_arrival"
        # A second reviewer, a week later in another batch, agrees: the waiting
        # conflict counts again with the new vote.
        (second,) = predict_and_correct(
            store, labels, [(text, "card_arrival", "lost_or_stolen_card", "bob")]
        )
        result = ingest_feedback(params, store)
        assert result.summary.corrected == 1 and result.conflicts == 0
        assert store.held("conflict") == []
        (resolved,) = store.held("conflict", pending=False)
        assert resolved.item.id == first and resolved.resolution == "accepted"
    data = read_labeled(params)
    row = data[data["text"] == text].iloc[0]
    assert row["label"] == "lost_or_stolen_card" and row["source"] == "feedback"
    assert sorted(row["source_id"].split(",")) == sorted([str(first), str(second)])
    corrections = pd.read_csv(LabeledPaths(params).corrections, dtype=str)
    last = corrections.iloc[-1]
    assert last["old_label"] == "card_arrival" and last["old_source"].startswith("seed:")
    assert sorted(last["new_annotators"].split(",")) == ["ann", "bob"]


def test_feedback_without_a_principal_is_one_reviewer(project: Path):
    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    (text,) = seed_texts(params, "top_up_failed", 1)
    anonymous = [(text, "top_up_failed", "exchange_rate", None)] * 3
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(store, labels, anonymous)
        result = ingest_feedback(params, store)
    assert label_of(params, text) == "top_up_failed" and result.conflicts == 3


def test_corrections_past_a_reviewers_daily_cap_wait_for_a_person(project: Path):
    params = with_feedback(project, max_corrections_per_reviewer_per_day=2)
    labels = load_label_set(params)
    new = [
        ("is the euro rate fixed today", "card_arrival", "exchange_rate", "eve"),
        ("card never came in the post", "exchange_rate", "card_arrival", "eve"),
        ("my top up bounced twice", "card_arrival", "top_up_failed", "eve"),
        ("top up failed again", "top_up_failed", "top_up_failed", "eve"),  # a confirmation
        ("what rate for dollars", "card_arrival", "exchange_rate", "fay"),
    ]
    with FeedbackStore.from_params(params) as store:
        ids = predict_and_correct(store, labels, new)
        result = ingest_feedback(params, store)
        (held,) = store.held("conflict")
    assert result.summary.added == 4 and result.conflicts == 1
    assert held.item.id == ids[2] and held.check == CHECK_DAILY_CAP
    assert "reviewer 'eve' sent more than 2 corrections on" in held.reason


def test_a_batch_draining_a_class_is_dead_lettered_in_part_and_never_retried(project: Path):
    # One reviewer may change curated labels here, so that one batch can drain a class.
    params = with_feedback(project, reviewers_to_override=1)
    labels = load_label_set(params)
    texts = seed_texts(params, "exchange_rate", 20)
    have = len(texts)
    minimum = params.validation.min_examples_per_class
    drain = [(t, "exchange_rate", "card_arrival", "ann") for t in texts]
    with FeedbackStore.from_params(params) as store:
        ids = predict_and_correct(store, labels, drain)
        result = ingest_feedback(params, store)
        assert watermark(store) == max(ids)
        dead = store.held("dead_letter")
        again = ingest_feedback(params, store)
        assert again.read == 0 and len(store.held("dead_letter")) == len(dead)
    data = read_labeled(params)
    assert (data["label"] == "exchange_rate").sum() == minimum  # drained to the floor, no lower
    assert result.summary.corrected == have - minimum
    assert len(result.dead_letters) == minimum == len(dead)
    assert {h.item.id for h in dead} == set(ids[have - minimum :])  # the last ones came too late
    assert all(h.check == "min_examples_per_class" for h in dead)
    assert "merging it would make the labeled data fail min_examples_per_class" in dead[0].reason


def test_ingestion_goes_in_chunks_each_its_own_version_that_grow_with_the_backlog(
    project: Path,
):
    params = with_feedback(project, ingest_chunk_rows=2)
    labels = load_label_set(params)
    new = [(f"a new question number {i} about rates", "card_arrival", "exchange_rate", "ann")
           for i in range(9)]  # fmt: skip
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(store, labels, new)
        result = ingest_feedback(params, store)
        assert watermark(store) == 9
    assert result.read == 9 and result.summary.added == 9
    assert result.watermark_before == 0 and result.watermark_after == 9
    log = run(["git", "log", "--format=%s", "--", "data/labeled.dvc"], project).stdout.split("\n")
    # 2 rows, then as many as read so far: 2, 4, 8 (1 left).
    assert [line for line in log if line.startswith("data: feedback")] == [
        "data: feedback 9-9: 1 added, 0 corrected, 0 quarantined",
        "data: feedback 5-8: 4 added, 0 corrected, 0 quarantined",
        "data: feedback 3-4: 2 added, 0 corrected, 0 quarantined",
        "data: feedback 1-2: 2 added, 0 corrected, 0 quarantined",
    ]


def test_a_conflict_a_person_settled_by_an_import_leaves_the_queue(project: Path):
    from slmops.tasks.pipeline.prepare import import_labels

    params = load_params(project / "params.yaml")
    labels = load_label_set(params)
    (text,) = seed_texts(params, "card_arrival", 1)
    with FeedbackStore.from_params(params) as store:
        predict_and_correct(store, labels, [(text, "card_arrival", "exchange_rate", "mallory")])
        ingest_feedback(params, store)
        # The conflicts export went to an annotator, who chose a third label.
        export = project / "annotated.csv"
        pd.DataFrame({"text": [text], "label": ["lost_or_stolen_card"]}).to_csv(export, index=False)
        import_labels(export, params)
        # Later feedback on another text: the settled conflict leaves the queue.
        predict_and_correct(store, labels, [("a brand new text here", "card_arrival",
                                             "card_arrival", "ann")])  # fmt: skip
        ingest_feedback(params, store)
        assert store.held("conflict") == []
        (settled,) = store.held(pending=False)
        assert settled.resolution == "settled"
    assert label_of(params, text) == "lost_or_stolen_card"
