"""Prediction retention (``feedback.retention_days``): old predictions that never got
feedback are deleted in bounded batches; those with feedback, and recent ones, stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from slmops.tasks.core.config import ConfigError, load_params, parse_params
from slmops.tasks.feedback.retention import apply_retention
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction, predictions_table
from slmops.tasks.task_types import task_type

SEQUENCE = task_type("sequence_classification")
LABELS = ["card_arrival", "exchange_rate"]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]


def params_with(tmp_path: Path, **feedback):
    return parse_params({"feedback": feedback}, tmp_path / "params.yaml", root=tmp_path)


@pytest.fixture
def store(tmp_path):
    with FeedbackStore.from_params(params_with(tmp_path)) as s:
        yield s


def predictions(store: FeedbackStore, n: int, made: datetime, prefix: str) -> list[str]:
    """Log ``n`` predictions and date them ``made``."""
    rows = [
        NewPrediction(f"{prefix} {i}", "card_arrival", 0.5, [], "slmops-intent", "1")
        for i in range(n)
    ]
    ids = store.log_predictions(rows)
    with store.engine.begin() as conn:
        conn.execute(
            predictions_table.update()
            .where(predictions_table.c.id.in_(ids))
            .values(created_at=made)
        )
    return ids


def remaining(store: FeedbackStore) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(predictions_table.c.id)).scalars())


def test_old_predictions_without_feedback_go_those_with_feedback_and_recent_ones_stay(store):
    old = predictions(store, 3, NOW - timedelta(days=40), "old")
    reviewed = predictions(store, 2, NOW - timedelta(days=40), "old reviewed")
    recent = predictions(store, 2, NOW - timedelta(days=29), "recent")
    store.add_feedback(reviewed[0], "exchange_rate", LABELS, task=SEQUENCE)  # a correction
    store.add_feedback(reviewed[1], "card_arrival", LABELS, task=SEQUENCE)  # a confirmation

    assert store.count_prunable_predictions(NOW - timedelta(days=30)) == 3
    assert store.prune_predictions(NOW - timedelta(days=30), batch=100) == 3

    assert remaining(store) == {*reviewed, *recent}
    assert not remaining(store) & set(old)
    assert store.counts()["feedback"] == 2  # no feedback went with them
    assert [i.prediction_id for i in store.feedback_since(0)] == reviewed  # text still there
    assert store.prune_predictions(NOW - timedelta(days=30), batch=100) == 0


def test_each_transaction_deletes_at_most_one_batch(store):
    predictions(store, 25, NOW - timedelta(days=40), "old")
    events: list[str | int] = []

    def deleted(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("DELETE FROM PREDICTIONS"):
            events.append(cursor.rowcount)

    sa.event.listen(store.engine, "after_cursor_execute", deleted)
    sa.event.listen(store.engine, "commit", lambda conn: events.append("commit"))

    assert store.prune_predictions(NOW, batch=10) == 25
    # One DELETE of at most 10 rows per transaction; the short batch ends the loop.
    assert events == [10, "commit", 10, "commit", 5, "commit"]
    assert remaining(store) == set()
    with pytest.raises(ValueError, match="at least 1"):
        store.prune_predictions(NOW, batch=0)


def test_the_batch_delete_skips_rows_locked_by_feedback_on_postgres(store):
    # A Postgres server is not part of the test setup; the statement is what matters:
    # a prediction whose feedback is being written (its row locked by the foreign key
    # check) is skipped, never deleted with the new feedback cascading after it.
    predictions(store, 1, NOW - timedelta(days=40), "old")
    statements = []
    sa.event.listen(
        store.engine, "before_execute", lambda conn, clause, *_: statements.append(clause)
    )
    assert store.prune_predictions(NOW, batch=10) == 1
    (delete,) = [s for s in statements if isinstance(s, sa.Delete)]
    sql = str(delete.compile(dialect=postgresql.dialect()))
    assert "LIMIT" in sql and "FOR UPDATE SKIP LOCKED" in sql and "NOT (EXISTS" in sql


def test_apply_retention_uses_retention_days_and_a_dry_run_deletes_nothing(tmp_path):
    params = params_with(tmp_path, retention_days=7)
    with FeedbackStore.from_params(params) as store:
        predictions(store, 2, NOW - timedelta(days=8), "old")
        kept = predictions(store, 1, NOW - timedelta(days=6), "recent")

        dry = apply_retention(params, store, dry_run=True, now=NOW)
        assert (dry.rows, dry.dry_run, dry.cutoff) == (2, True, NOW - timedelta(days=7))
        assert len(remaining(store)) == 3

        done = apply_retention(params, store, now=NOW, batch=1)
        assert (done.rows, done.retention_days) == (2, 7)
        assert remaining(store) == set(kept)


def test_null_retention_keeps_everything(tmp_path):
    params = params_with(tmp_path, retention_days=None)
    with FeedbackStore.from_params(params) as store:
        predictions(store, 2, NOW - timedelta(days=3650), "ancient")
        result = apply_retention(params, store, now=NOW)
        assert (result.retention_days, result.rows) == (None, 0)
        assert len(remaining(store)) == 2


def test_the_default_is_30_days_and_params_yaml_says_so():
    assert load_params(ROOT / "params.yaml").feedback.retention_days == 30
    assert parse_params({}, Path("p.yaml")).feedback.retention_days == 30


@pytest.mark.parametrize(
    ("retention_days", "window_hours", "error"),
    [
        (1, 48, "monitoring.window_hours is 48 hours, but feedback.retention_days (1)"),
        (30, None, "monitoring.window_hours is null (no time limit)"),
        (1, 24, None),
        (None, None, None),
        (None, 10_000, None),
    ],
)
def test_retention_must_cover_the_monitoring_window(tmp_path, retention_days, window_hours, error):
    path = tmp_path / "params.yaml"
    path.write_text(
        f"feedback:\n  retention_days: {retention_days or 'null'}\n"
        f"monitoring:\n  window_hours: {window_hours or 'null'}\n"
    )
    if error is None:
        load_params(path)
        return
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert error in message and "set monitoring.window_hours to at most" in message
    assert "{" not in message  # the check is named, the whole file is not echoed
