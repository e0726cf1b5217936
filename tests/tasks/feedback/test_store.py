"""The feedback store on a real SQLite file: predictions, idempotent feedback, review queue,
ingestion reads and watermarks."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from slmops.tasks.core.config import parse_params
from slmops.tasks.feedback.store import (
    FeedbackStore,
    NewPrediction,
    UnknownLabel,
    UnknownPrediction,
    make_engine,
    predictions_table,
    resolve_url,
)
from slmops.tasks.task_types import task_type

SEQUENCE = task_type("sequence_classification")

LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]


def new(text: str, label: str = "card_arrival", confidence: float = 0.5) -> NewPrediction:
    top = [{"label": label, "score": confidence}, {"label": "exchange_rate", "score": 0.1}]
    return NewPrediction(text, label, confidence, top, "slmops-intent", "1")


@pytest.fixture
def params(tmp_path: Path):
    return parse_params({}, tmp_path / "params.yaml", root=tmp_path)


@pytest.fixture
def store(params):
    with FeedbackStore.from_params(params) as s:
        yield s


def test_relative_sqlite_path_is_under_the_project_in_wal_mode(params, store, tmp_path):
    db = tmp_path / "data" / "feedback" / "feedback.db"
    assert db.is_file()
    assert resolve_url("sqlite:///data/feedback/feedback.db", tmp_path).database == str(db)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"predictions", "feedback", "ingest_watermark"} <= tables


def test_absolute_and_in_memory_urls(tmp_path):
    absolute = tmp_path / "elsewhere" / "fb.db"
    assert resolve_url(f"sqlite:///{absolute}", Path("/nowhere")).database == str(absolute)
    # In memory: one shared connection, so a second thread sees the same tables.
    store = FeedbackStore(make_engine("sqlite://", tmp_path))
    ids = store.log_predictions([new("hello there")])
    seen = []
    worker = threading.Thread(target=lambda: seen.append(store.get_prediction(ids[0])))
    worker.start()
    worker.join()
    assert seen[0] is not None and seen[0].text == "hello there"


def test_log_predictions_returns_ids_in_order_and_rows_round_trip(store):
    before = datetime.now(UTC)
    ids = store.log_predictions([new("first", confidence=0.9), new("second", "exchange_rate")])
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    first = store.get_prediction(ids[0])
    assert first.text == "first" and first.confidence == pytest.approx(0.9)
    assert first.top_k[0] == {"label": "card_arrival", "score": 0.9}
    assert first.created_at.tzinfo is not None and first.created_at >= before - timedelta(seconds=1)
    assert store.get_prediction(ids[1]).label == "exchange_rate"
    assert store.get_prediction("0" * 32) is None
    assert store.log_predictions([]) == []


def test_feedback_is_idempotent_per_prediction_label_and_reviewer(store):
    (pid,) = store.log_predictions([new("where is my card", "card_arrival")])
    row, created = store.add_feedback(pid, "lost_or_stolen_card", LABELS, user="ana", task=SEQUENCE)
    assert created and row.kind == "correction" and row.user == "ana"
    again, created_again = store.add_feedback(
        pid, "lost_or_stolen_card", LABELS, user="ana", task=SEQUENCE
    )
    assert not created_again and again == row  # a retry: the stored row, unchanged
    # Another reviewer agreeing is their own row: a second vote, not a repeat.
    bob, created = store.add_feedback(pid, "lost_or_stolen_card", LABELS, user="bob", task=SEQUENCE)
    assert created and bob.user == "bob" and bob.id > row.id
    confirm, created = store.add_feedback(pid, "card_arrival", LABELS, task=SEQUENCE)
    assert created and confirm.kind == "confirmation" and confirm.id > bob.id
    assert store.counts() == {"predictions": 1, "feedback": 3}


def test_a_prediction_deleted_while_feedback_is_written_is_unknown_not_an_error(store, monkeypatch):
    # Retention deletes the prediction between the lookup and the insert: the foreign
    # key refuses the row, and the client hears 404 (unknown id), not a server error.
    (pid,) = store.log_predictions([new("about to be pruned")])
    looked_up = store.get_prediction(pid)
    with store.engine.begin() as conn:
        conn.execute(sa.delete(predictions_table).where(predictions_table.c.id == pid))
    calls = iter([looked_up])
    real = store.get_prediction
    monkeypatch.setattr(store, "get_prediction", lambda i: next(calls, None) or real(i))
    with pytest.raises(UnknownPrediction):
        store.add_feedback(pid, "card_arrival", LABELS, user="ana", task=SEQUENCE)
    assert store.counts()["feedback"] == 0


def test_unknown_prediction_and_label_write_nothing(store):
    with pytest.raises(UnknownPrediction, match="unknown prediction id 'nope'"):
        store.add_feedback("nope", "card_arrival", LABELS, task=SEQUENCE)
    (pid,) = store.log_predictions([new("hi")])
    with pytest.raises(UnknownLabel) as info:
        store.add_feedback(pid, "card_arival", LABELS, task=SEQUENCE)
    message = str(info.value)
    assert "'card_arival'" in message and "card_arrival" in message and "exchange_rate" in message
    assert info.value.known_labels == sorted(LABELS)
    many = [f"label_{i:02d}" for i in range(30)]
    assert "22 more" in str(UnknownLabel("x", many))
    assert store.counts()["feedback"] == 0


def test_identical_feedback_racing_from_threads_is_stored_once(store):
    (pid,) = store.log_predictions([new("race")])
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        results.append(store.add_feedback(pid, "top_up_failed", LABELS, task=SEQUENCE)[1])

    workers = [threading.Thread(target=send) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(results) == [False, False, False, True]
    assert store.counts()["feedback"] == 1


def test_review_queue_is_unreviewed_least_confident_first(store):
    ids = store.log_predictions(
        [new("a", confidence=0.7), new("b", confidence=0.2), new("c", confidence=0.4)]
    )
    ids += store.log_predictions([new("d", confidence=0.1)])
    store.add_feedback(
        ids[3], "exchange_rate", LABELS, task=SEQUENCE
    )  # "d" is reviewed: not queued
    queue = store.review_queue(10)
    assert [p.text for p in queue] == ["b", "c", "a"]
    assert [p.text for p in store.review_queue(2)] == ["b", "c"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert store.review_queue(10, since=future) == []
    assert len(store.review_queue(10, since=datetime.now(UTC) - timedelta(hours=1))) == 3


def test_feedback_since_reads_in_id_order_with_the_prediction_text(store):
    ids = store.log_predictions([new("one"), new("two"), new("three")])
    for pid, label in zip(ids, ["exchange_rate", "card_arrival", "top_up_failed"], strict=True):
        store.add_feedback(pid, label, LABELS, task=SEQUENCE)
    items = store.feedback_since(0)
    assert [i.text for i in items] == ["one", "two", "three"]
    assert [i.kind for i in items] == ["correction", "confirmation", "correction"]
    assert items[0].predicted_label == "card_arrival" and items[0].model_version == "1"
    assert [i.text for i in store.feedback_since(items[0].id)] == ["two", "three"]
    assert [i.text for i in store.feedback_since(0, limit=2)] == ["one", "two"]
    assert store.feedback_since(items[-1].id) == []
    # Rows younger than the settling time are not returned, and nothing after them.
    assert store.feedback_since(0, settle_seconds=3600) == []


def test_watermark_round_trip_and_exactly_once_reading(store):
    assert store.get_watermark("labeled") is None
    ids = store.log_predictions([new("x"), new("y")])
    store.add_feedback(ids[0], "exchange_rate", LABELS, task=SEQUENCE)
    batch = store.feedback_since(0)
    mark = store.set_watermark("labeled", max(i.id for i in batch))
    assert store.get_watermark("labeled").last_feedback_id == mark.last_feedback_id
    store.add_feedback(ids[1], "top_up_failed", LABELS, task=SEQUENCE)
    assert [i.text for i in store.feedback_since(mark.last_feedback_id)] == ["y"]
    time.sleep(0.01)
    later = store.set_watermark("labeled", mark.last_feedback_id + 1)
    assert later.last_feedback_id == mark.last_feedback_id + 1
    assert later.updated_at > mark.updated_at
    assert store.get_watermark("other") is None


def test_a_watermark_never_moves_back(store):
    """A slower twin run that read an older watermark cannot move it back (which would
    make the next ingestion read rows already in the data)."""
    high = store.set_watermark("labeled", 7)
    for stale in (3, 0, 7):
        kept = store.set_watermark("labeled", stale)
        assert (kept.last_feedback_id, kept.updated_at) == (7, high.updated_at)
    assert store.get_watermark("labeled").last_feedback_id == 7


def test_the_daily_cap_count_searches_an_index_not_every_feedback_row(store):
    # Ingestion counts a reviewer's corrections of the day once per reviewer and day in
    # every chunk: a scan of the whole feedback table there grows with the store's history
    # (benchmarks/bench_curves.py). SQLite's plan for the query the store sends must
    # search the (user_name, created_at) index, for a reviewer and for anonymous feedback.
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT COUNT"):
            statements.append((statement, parameters))

    day = datetime(2026, 11, 30, tzinfo=UTC)
    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.corrections_by("ann", day, day + timedelta(days=1), before_id=10)
        store.corrections_by(None, day, day + timedelta(days=1), before_id=10)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert len(statements) == 2
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            plan = " ".join(
                str(row[-1])
                for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            )
            assert "USING INDEX ix_feedback_user_created" in plan, plan


def test_feedback_takes_a_prediction_out_of_the_review_queue_at_once(store):
    ids = store.log_predictions([new("a", confidence=0.1), new("b", confidence=0.2)])
    assert [p.id for p in store.review_queue(1)] == [ids[0]]
    store.add_feedback(ids[0], "card_arrival", LABELS, user="ann", task=SEQUENCE)
    assert [p.id for p in store.review_queue(1)] == [ids[1]]
    # A second reviewer's vote on it, or a repeat, changes nothing.
    store.add_feedback(ids[0], "exchange_rate", LABELS, user="bob", task=SEQUENCE)
    store.add_feedback(ids[0], "card_arrival", LABELS, user="ann", task=SEQUENCE)
    with store.engine.connect() as conn:
        flags = dict(
            conn.execute(sa.select(predictions_table.c.id, predictions_table.c.reviewed)).all()
        )
    assert flags == {ids[0]: True, ids[1]: False}
    assert [p.id for p in store.review_queue(10)] == [ids[1]]


def test_the_review_queue_reads_its_partial_index_in_order(store):
    # Reviewers take the least confident predictions, so the reviewed ones gather at the
    # low end: a page read from an index over every prediction steps over all of them
    # (benchmarks/bench_curves.py). SQLite's plan must walk the index of unreviewed rows,
    # already in the queue's order (no sort of the whole table).
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM predictions" in statement and "ORDER BY" in statement:
            statements.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.review_queue(50)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    ((statement, parameters),) = statements
    with store.engine.connect() as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        )
    assert "USING INDEX ix_predictions_review_queue" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
