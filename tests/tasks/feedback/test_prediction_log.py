"""The background prediction writer on a real SQLite file: ids handed out before the commit
are always found, groups, a full backlog waits (never drops), a failing database is
retried, a close commits everything queued (and counts what it had to give up)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from slmops.tasks.core.config import parse_params
from slmops.tasks.feedback.prediction_log import LogClosed, LogFull, PredictionLog
from slmops.tasks.feedback.store import (
    FeedbackStore,
    NewPrediction,
    PredictionPending,
    prediction_values,
    predictions_table,
)
from slmops.tasks.task_types import task_type

SEQUENCE = task_type("sequence_classification")
LABELS = ["card_arrival", "exchange_rate"]
# Rows are certainly still queued when a test looks right after submitting them (a
# reader waiting for one, or a close, cuts the lingering short).
LINGER_MS = 30_000


def new(text: str) -> NewPrediction:
    return NewPrediction(text, "card_arrival", 0.5, [], "slmops-intent", "1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    params = parse_params({}, tmp_path / "params.yaml", root=tmp_path)
    with FeedbackStore.from_params(params) as s:
        yield s


def committed(store: FeedbackStore) -> set[str]:
    """Ids in the database itself (not through the store's wait for queued rows)."""
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(predictions_table.c.id)).scalars())


class Gate:
    """Wraps ``store.insert_predictions``: can hold commits, or fail the next ``fail``."""

    def __init__(self, store: FeedbackStore) -> None:
        self.real = store.insert_predictions
        self.open = threading.Event()
        self.open.set()
        self.fail = 0
        self.calls: list[int] = []

    def __call__(self, values) -> None:
        self.calls.append(len(values))
        assert self.open.wait(30), "the test never opened the gate"
        if self.fail:
            self.fail -= 1
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is down"))
        self.real(values)


@pytest.fixture
def gate(store, monkeypatch) -> Gate:
    g = Gate(store)
    monkeypatch.setattr(store, "insert_predictions", g)
    return g


def test_ids_are_handed_out_before_the_commit_and_always_found(store):
    with PredictionLog(store, group_ms=LINGER_MS) as plog:
        ids = plog.submit([new("first"), new("second")])
        assert len(ids) == 2 and all(len(i) == 32 for i in ids)  # uuid4 hex, as before
        assert not committed(store) & set(ids)  # still queued...
        assert plog.stats().backlog == 2
        found = store.get_prediction(ids[1])  # ...yet found: the read waited for it
        assert found is not None and found.text == "second"
        assert set(ids) <= committed(store) and plog.stats().backlog == 0
        row, created = store.add_feedback(ids[0], "exchange_rate", LABELS, "r", task=SEQUENCE)
        assert created and row.kind == "correction"
        # Reads of many rows wait for everything queued before them.
        more = plog.submit([new("third")])
        assert {p.id for p in store.review_queue(10)} == {ids[1], *more}
        assert store.counts()["predictions"] == 3
    assert store.pending is None  # closed: reads no longer wait


def test_concurrent_submits_share_commits_and_every_id_is_found(store):
    with PredictionLog(store, group_ms=5, group_rows=64) as plog:
        found: list[bool] = []

        def client(i: int) -> None:
            for j in range(20):
                (pid,) = plog.submit([new(f"client {i} text {j}")])
                found.append(store.get_prediction(pid) is not None)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = plog.stats()
    assert found == [True] * 160
    assert stats.committed_rows == 160 and stats.failed_commits == 0
    assert stats.commits < 160  # groups formed
    assert len(committed(store)) == 160


def test_a_group_holds_at_most_group_rows_and_a_submit_stays_whole(store, gate):
    gate.open.clear()  # hold the first commit while the rest queue up
    with PredictionLog(store, group_ms=0, group_rows=4) as plog:
        plog.submit([new("alone")])
        while not gate.calls:
            time.sleep(0.001)
        for n in (2, 2, 3, 1, 6):
            plog.submit([new(f"{n}-{k}") for k in range(n)])
        gate.open.set()
        assert plog.flush(10)
    # 1 (held), then 2+2, 3+1, and 6 alone (more than group_rows, never split).
    assert gate.calls == [1, 4, 4, 6]


def test_close_commits_everything_queued(store):
    plog = PredictionLog(store, group_ms=LINGER_MS).start()
    ids = [pid for i in range(50) for pid in plog.submit([new(f"text {i}")])]
    assert plog.stats().backlog > 0  # the writer is still lingering
    assert plog.close() is True
    assert committed(store) == set(ids)
    with pytest.raises(LogClosed):
        plog.submit([new("too late")])


def test_a_full_backlog_makes_submit_wait_then_fail_and_drops_nothing(store, gate):
    gate.open.clear()
    plog = PredictionLog(store, group_ms=0, queue_rows=3, full_timeout=0.3).start()
    try:
        ids = plog.submit([new("a"), new("b")]) + plog.submit([new("c")])
        started = time.monotonic()
        with pytest.raises(LogFull, match="queue_rows"):
            plog.submit([new("d")])
        assert time.monotonic() - started >= 0.25  # it waited for room first
        # Room comes: a waiting submit goes in once the held commit lands.
        waiting: list[list[str]] = []
        t = threading.Thread(target=lambda: waiting.append(plog.submit([new("e")])))
        plog.full_timeout = 10
        t.start()
        time.sleep(0.1)
        assert not waiting  # still waiting for room
        gate.open.set()
        t.join(10)
        assert plog.flush(10)
    finally:
        plog.close()
    assert committed(store) == set(ids + waiting[0])


def test_a_failing_database_is_retried_and_loses_nothing(store, gate, caplog):
    gate.fail = 3
    with caplog.at_level(logging.ERROR), PredictionLog(store, group_ms=0) as plog:
        ids = plog.submit([new("x"), new("y")])
        record = store.get_prediction(ids[0])  # waits through the retries
        stats = plog.stats()
    assert record is not None
    assert stats.failed_commits == 3 and stats.committed_rows == 2
    assert committed(store) == set(ids)
    assert caplog.text.count("committing 2 predictions failed") == 3


def test_a_read_of_a_row_the_database_does_not_take_is_pending_not_unknown(store, gate):
    gate.open.clear()
    plog = PredictionLog(store, group_ms=0, settle_timeout=0.2).start()
    try:
        (pid,) = plog.submit([new("stuck")])
        with pytest.raises(PredictionPending):
            store.get_prediction(pid)
        assert store.get_prediction("0" * 32) is None  # never queued: unknown at once
        assert plog.flush(timeout=0.1) is False
    finally:
        gate.open.set()
        plog.close()
    assert store.get_prediction(pid) is not None


def test_close_gives_up_on_a_dead_database_and_counts_what_it_lost(store, gate, caplog):
    gate.fail = 10_000
    plog = PredictionLog(store, group_ms=0).start()
    ids = plog.submit([new("p"), new("q"), new("r")])
    with caplog.at_level(logging.ERROR):
        assert plog.close(timeout=0.3) is False
    assert plog.stats().abandoned_rows == 3
    assert "3 predictions were never written" in caplog.text
    assert not committed(store) & set(ids)


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_written(store, caplog):
    bad = NewPrediction("poison", None, 0.5, [], "slmops-intent", "1")  # label NOT NULL
    with caplog.at_level(logging.ERROR), PredictionLog(store, group_ms=LINGER_MS) as plog:
        good = plog.submit([new("before")])
        (poison,) = plog.submit([bad])
        good += plog.submit([new("after")])  # one group with the poison row
        assert store.get_prediction(good[1]) is not None  # not blocked behind it
        assert store.get_prediction(poison) is None  # unknown: 404, not pending forever
        more = plog.submit([new("later")])  # the writer goes on
        assert store.get_prediction(more[0]) is not None
        stats = plog.stats()
    assert stats.rejected_rows == 1 and stats.committed_rows == 3
    assert committed(store) == {*good, *more}
    assert f"the database refused prediction {poison}" in caplog.text


def test_inserting_the_same_rows_again_is_a_no_op(store):
    values = prediction_values([new("once"), new("twice")])
    store.insert_predictions(values)
    store.insert_predictions(values)  # a retry after a commit that did land
    assert committed(store) == {v["id"] for v in values}
    clash = [{**values[0], "text": "another"}]
    store.insert_predictions(clash)  # the id is there: treated as the same row
    with pytest.raises(sa.exc.IntegrityError):  # a genuine failure still raises
        store.insert_predictions([{**prediction_values([new("z")])[0], "label": None}])
