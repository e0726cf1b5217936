"""Feedback ids that commit out of order on Postgres, and ``feedback.settle_seconds``.

Transaction A inserts feedback (the lower id) and stays open; transaction B inserts (the
higher id) and commits; an ingestion runs; then A commits and an ingestion runs again.
Without settling the first ingestion moves the watermark past A's id and A's feedback
never reaches the labeled data; with ``settle_seconds`` longer than A stayed open both
rows arrive, once each. A is :meth:`FeedbackStore.add_feedback` itself, held between
its INSERT and its commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from slmops.tasks.core.config import load_params
from slmops.tasks.data.dataset import load_label_set, read_labeled
from slmops.tasks.feedback import store as store_module
from slmops.tasks.feedback.ingest import ingested_ids, watermark
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
from slmops.tasks.pipeline.prepare import ingest_feedback
from slmops.tasks.task_types import task_type
from tests.tasks.feedback.test_store_upgrade import fresh_database

pytestmark = pytest.mark.slow

SEQUENCE = task_type("sequence_classification")
SETTLE = 2.0  # seconds; A below stays open well under it, or well over it
TEXTS = [
    ("the card you sent me last month never arrived", "card_arrival"),
    ("my top up was declined twice this evening", "top_up_failed"),
]


@contextmanager
def held_open(store: FeedbackStore, prediction_id: str, label: str, labels) -> Iterator[dict]:
    """``add_feedback`` in a thread, its transaction held between its INSERT and its
    commit until the block ends (then committed); yields what the call returns, under
    "row", once it returned."""
    inserted, release, out = threading.Event(), threading.Event(), {}

    def before_commit(conn) -> None:
        if threading.current_thread() is writer:
            inserted.set()
            release.wait(60)

    def write() -> None:
        out["row"], _ = store.add_feedback(prediction_id, label, labels, "ann", task=SEQUENCE)

    writer = threading.Thread(target=write, name="transaction-A")
    sa.event.listen(store.engine, "commit", before_commit)
    writer.start()
    try:
        assert inserted.wait(30), "transaction A never reached its commit"
        yield out
    finally:
        release.set()
        writer.join(30)
        sa.event.remove(store.engine, "commit", before_commit)
    assert "row" in out, "transaction A failed"


def project_on_postgres(project: Path, server: str, settle: float):
    """The project's params with its feedback store in a new database of ``server``."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("feedback", {}).update(db_url=fresh_database(server), settle_seconds=settle)
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def interleave(params, *, writer_clock_behind: float = 0.0):
    """A inserts and stays open, B inserts and commits, an ingestion, A commits, then an
    ingestion once both are settled, and one more. The writers'
    process clock is ``writer_clock_behind`` seconds behind the ingestion's.
    Returns (A's id, B's id, the ids each ingestion read, the store's watermark)."""
    labels = load_label_set(params)
    real_now = store_module._now
    with FeedbackStore.from_params(params) as store, pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            store_module, "_now", lambda: real_now() - timedelta(seconds=writer_clock_behind)
        )
        pid_a, pid_b = store.log_predictions(
            [NewPrediction(t, "exchange_rate", 0.5, [], "slmops-intent", "1") for t, _ in TEXTS]
        )
        with held_open(store, pid_a, TEXTS[0][1], labels) as a:
            b, created = store.add_feedback(pid_b, TEXTS[1][1], labels, "bob", task=SEQUENCE)
            assert created
            mp.undo()  # the ingestion reads the right time
            first = ingest_feedback(params, store)
        assert a["row"].id < b.id  # A took its id first, and committed last
        time.sleep(params.feedback.settle_seconds + 0.5)
        second = ingest_feedback(params, store)
        third = ingest_feedback(params, store)
        assert third.read == 0
        read = [first.read, second.read]
        return a["row"].id, b.id, read, watermark(store)


def feedback_rows(params) -> list[str]:
    """The source ids of the labeled data's feedback rows (one per row)."""
    labeled = read_labeled(params)
    return sorted(labeled.loc[labeled["source"] == "feedback", "source_id"].astype(str))


def test_without_settling_the_row_that_commits_late_is_skipped_for_ever(project, postgres_url):
    params = project_on_postgres(project, postgres_url, settle=0)
    a, b, read, mark = interleave(params)
    # The first ingestion saw only B and moved the watermark past A's id.
    assert read == [1, 0] and mark == b
    assert str(a) not in ingested_ids(params)
    assert feedback_rows(params) == [str(b)]


@pytest.mark.parametrize("writer_clock_behind", [0.0, 60.0], ids=["same-clock", "writer-behind"])
def test_with_settling_both_rows_are_ingested_once(project, postgres_url, writer_clock_behind):
    """Also when the writer's clock (a service replica's) is a minute behind the
    ingestion's: feedback is stamped, and settled, by the database's clock."""
    params = project_on_postgres(project, postgres_url, settle=SETTLE)
    started = datetime.now().astimezone()
    a, b, read, mark = interleave(params, writer_clock_behind=writer_clock_behind)
    # The first ingestion stopped at B, too young; the second took both.
    assert read == [0, 2] and mark == b
    assert feedback_rows(params) == sorted([str(a), str(b)])
    with FeedbackStore.from_params(params) as store:
        stamps = [i.created_at for i in store.feedback_since(0)]
    assert all(s >= started - timedelta(seconds=5) for s in stamps), stamps


def test_a_transaction_open_longer_than_settling_is_passed_over(project, postgres_url):
    """The guarantee's bound: A open for longer than ``settle_seconds`` is passed over."""
    params = project_on_postgres(project, postgres_url, settle=SETTLE)
    labels = load_label_set(params)
    with FeedbackStore.from_params(params) as store:
        pid_a, pid_b = store.log_predictions(
            [NewPrediction(t, "exchange_rate", 0.5, [], "slmops-intent", "1") for t, _ in TEXTS]
        )
        with held_open(store, pid_a, TEXTS[0][1], labels) as a:
            b, _ = store.add_feedback(pid_b, TEXTS[1][1], labels, "bob", task=SEQUENCE)
            time.sleep(SETTLE + 0.5)  # B settled while A is still open
            first = ingest_feedback(params, store)
        second = ingest_feedback(params, store)
        assert (first.read, second.read) == (1, 0) and watermark(store) == b.id
    assert str(a["row"].id) not in ingested_ids(params)
