"""Prediction logging off the request path: one writer thread commits predictions in groups.

The service answers ``/predict`` as soon as the model has: :meth:`PredictionLog.submit`
gives each prediction its id and time (:func:`~slmops.tasks.feedback.store.prediction_values`)
and queues the rows; the writer thread takes everything queued (up to ``group_rows``
rows, lingering up to ``group_ms`` for more unless a reader waits for one of them) and
commits it in one transaction.

What holds:

- **An id handed out is always accepted.** The log registers itself as the store's
  :attr:`~slmops.tasks.feedback.store.FeedbackStore.pending`: reading a prediction still
  queued (``/feedback`` for an id answered a moment ago) waits for its group to commit;
  ``/review`` and the counts wait for everything queued before them. If the database
  does not take the rows within ``settle_timeout`` seconds, the read raises
  :class:`~slmops.tasks.feedback.store.PredictionPending` (503: retry), never "unknown".
- **Nothing is dropped.** The backlog is bounded (``queue_rows``): when it is full,
  :meth:`submit` waits for room (the request waits, and with it the model), at most
  ``full_timeout`` seconds before :class:`LogFull` (the request fails with 503 and no id
  is handed out). A failed commit (database down) is retried with backoff, its rows kept
  in memory meanwhile, every failure logged and counted. A row the database refuses
  for itself rather than for being down (a value it cannot store, such as a NUL
  character in a text on Postgres) must not block every row behind it: a group
  refused so is written row by row, and a row refused alone is set aside, logged with
  its id and counted (:attr:`LogStats.rejected_rows`); that id answers 404.
- **A clean shutdown loses nothing**: :meth:`close` commits everything queued before it
  returns (bounded by its timeout; what it could not write is logged with its count).
- **A SIGKILL loses what was queued and not committed**: the predictions answered in the
  last group window (``group_ms`` plus one commit, milliseconds when the database keeps
  up), or the whole backlog while the database is down. Ids of lost rows answer 404.

Other processes (ingestion, the CLI) read the database itself, so they see a prediction
a few milliseconds after it was answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from slmops.tasks.feedback.store import (
    FeedbackStore,
    NewPrediction,
    PredictionPending,
    prediction_values,
)

log = logging.getLogger(__name__)

# A failed commit is retried after this long, doubling up to the cap.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 5.0


class LogFull(RuntimeError):
    """The backlog stayed full for ``full_timeout`` seconds (the database is down or far
    behind): the predictions were not queued, and no id was handed out."""


class LogClosed(RuntimeError):
    """:meth:`PredictionLog.submit` after :meth:`PredictionLog.close`."""


class _Refused(Exception):
    """The database refused the rows themselves: retrying the same rows cannot help."""


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """Whether a failed commit is the database being down, busy or out of space (retry
    the same rows) rather than refusing a value or a constraint (retrying cannot help)."""
    if exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)


@dataclass(frozen=True)
class LogStats:
    """What the writer did since start (the service's metrics read it)."""

    backlog: int  # rows handed out and not committed yet
    committed_rows: int
    commits: int
    failed_commits: int
    rejected_rows: int  # rows the database refused for themselves (logged with their ids)
    abandoned_rows: int  # rows a close gave up on (the database never took them)


class PredictionLog:
    """Queue predictions for one writer thread that commits them in groups (module doc).

    Thread-safe: :meth:`submit` and the waits are called from the service's threads.
    """

    def __init__(
        self,
        store: FeedbackStore,
        *,
        group_ms: float = 2.0,
        group_rows: int = 512,
        queue_rows: int = 10_000,
        settle_timeout: float = 10.0,
        full_timeout: float = 10.0,
    ) -> None:
        if group_ms < 0 or group_rows < 1 or queue_rows < 1:
            raise ValueError("group_ms must be >= 0, group_rows and queue_rows >= 1")
        self.store = store
        self.group_s = group_ms / 1000.0
        self.group_rows = group_rows
        self.queue_rows = queue_rows
        self.settle_timeout = settle_timeout
        self.full_timeout = full_timeout
        # One condition for every state change: the writer waits for rows, callers for
        # room or for a commit. A few waiters at most; notify_all is cheap enough.
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, list[dict[str, Any]]]] = deque()  # (seq, rows)
        self._queued_rows = 0
        self._pending: dict[str, int] = {}  # id -> seq of the submit that queued it
        self._submitted = 0  # seq of the last submit
        self._committed = 0  # every submit up to this seq is committed (or abandoned)
        self._closing = False
        self._hurry = False  # a reader waits for queued rows: commit now, no lingering
        self._drain_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._committed_rows = 0
        self._commits = 0
        self._failed_commits = 0
        self._rejected_rows = 0
        self._abandoned_rows = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the writer is up (between :meth:`start` and :meth:`close`)."""
        return self._thread is not None and not self._closing

    def start(self) -> PredictionLog:
        """Start the writer thread and make the store wait for queued rows before reads."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="slmops-prediction-log", daemon=True
            )
            self._thread.start()
            self.store.pending = self
        return self

    def close(self, timeout: float = 30.0) -> bool:
        """Commit everything queued, then stop the writer; True when nothing was lost.

        Waits at most ``timeout`` seconds; rows the database did not take by then are
        given up, logged with their count (:attr:`LogStats.abandoned_rows`).
        """
        with self._cond:
            if self._closing:
                return not self._pending
            self._closing = True
            self._drain_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        if self._thread is not None:
            # A little past the deadline: the writer gives up at it, then ends.
            self._thread.join(timeout + RETRY_MAX_S)
        if self.store.pending is self:
            self.store.pending = None
        with self._cond:
            return not self._pending  # a row committed leaves it; one given up stays

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the request side ----------------------------------------------------------------

    def submit(self, rows: Sequence[NewPrediction], *, wait: bool = True) -> list[str] | None:
        """Queue ``rows``; their ids, in input order, before they are committed.

        Waits while the backlog is full (:class:`LogFull` after ``full_timeout`` s);
        with ``wait`` false returns None at once instead (nothing queued).
        """
        if not rows:
            return []
        values = prediction_values(rows)
        deadline = time.monotonic() + self.full_timeout
        with self._cond:
            # A submit larger than the whole bound still goes in once the backlog is empty.
            while self._pending and len(self._pending) + len(values) > self.queue_rows:
                if self._closing:
                    break
                if not wait:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LogFull(
                        f"{len(self._pending)} predictions are waiting for the feedback "
                        "database (serve.prediction_log.queue_rows); retry shortly"
                    )
                self._cond.wait(left)
            if self._closing:
                raise LogClosed("the prediction log is closed (the service is shutting down)")
            self._submitted += 1
            seq = self._submitted
            for v in values:
                self._pending[v["id"]] = seq
            self._queue.append((seq, values))
            self._queued_rows += len(values)
            self._cond.notify_all()
        return [v["id"] for v in values]

    def settle(self, prediction_id: str | None = None, timeout: float | None = None) -> None:
        """Return once ``prediction_id`` is committed (at once if it is not queued), or
        with None once everything submitted before this call is; raises
        :class:`PredictionPending` after ``timeout`` (default ``settle_timeout``) seconds."""
        # Most reads are for committed rows: a dict lookup, no lock (atomic in CPython).
        if prediction_id is not None and prediction_id not in self._pending:
            return
        deadline = time.monotonic() + (self.settle_timeout if timeout is None else timeout)
        with self._cond:
            if prediction_id is None:
                target = self._submitted
            else:
                seq = self._pending.get(prediction_id)
                if seq is None:
                    return
                target = seq
            if self._committed < target:
                self._hurry = True
                self._cond.notify_all()
            while self._committed < target:
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is None or not self._thread.is_alive()):
                    what = prediction_id or f"{len(self._pending)} predictions"
                    raise PredictionPending(
                        f"{what}: not yet in the feedback database (it is down or behind); "
                        "retry shortly"
                    )
                self._cond.wait(left)
            if prediction_id is not None and prediction_id in self._pending:
                # Committed up to its seq yet still pending: a close gave it up.
                raise PredictionPending(f"{prediction_id}: could not be written")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed; False on timeout."""
        try:
            self.settle(None, timeout)
        except PredictionPending:
            return False
        return True

    def stats(self) -> LogStats:
        """The writer's counters now."""
        with self._cond:
            return LogStats(
                backlog=len(self._pending),
                committed_rows=self._committed_rows,
                commits=self._commits,
                failed_commits=self._failed_commits,
                rejected_rows=self._rejected_rows,
                abandoned_rows=self._abandoned_rows,
            )

    # -- the writer ----------------------------------------------------------------------

    def _take(self) -> list[tuple[int, list[dict[str, Any]]]] | None:
        """The next group: everything queued up to ``group_rows`` rows (a submit's rows
        stay together), after lingering up to ``group_ms`` for more; None: closed, empty."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if self.group_s > 0 and not self._closing:
                until = time.monotonic() + self.group_s
                while self._queued_rows < self.group_rows and not (self._closing or self._hurry):
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            self._hurry = False
            group = [self._queue.popleft()]
            rows = len(group[0][1])
            while self._queue and rows + len(self._queue[0][1]) <= self.group_rows:
                entry = self._queue.popleft()
                group.append(entry)
                rows += len(entry[1])
            self._queued_rows -= rows
            return group

    def _run(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            values = [v for _, rows in group for v in rows]
            try:
                done = self._commit(values)
            except _Refused:
                # Something in the group the database will never take: row by row.
                done = all([self._commit_alone(v) for v in values])  # every row, no short cut
            with self._cond:
                self._committed = group[-1][0]
                self._cond.notify_all()
            if not done:
                self._give_up()
                return

    def _commit_alone(self, value: dict[str, Any]) -> bool:
        """One row of a refused group; a row refused alone is set aside (logged, counted)."""
        try:
            return self._commit([value])
        except _Refused as exc:
            with self._cond:
                self._pending.pop(value["id"], None)
                self._rejected_rows += 1
            log.error(
                "prediction log: the database refused prediction %s, which is not stored: %s",
                value["id"],
                exc,
            )
            return True

    def _commit(self, values: list[dict[str, Any]]) -> bool:
        """Commit one group, retrying with backoff while the database is down or busy;
        False once a close's deadline passed; :class:`_Refused` for rows it refuses."""
        wait = RETRY_FIRST_S
        while True:
            try:
                self.store.insert_predictions(values)
            except sa.exc.DBAPIError as exc:
                if not _transient(exc):
                    self._failed(values, exc, "refused: one row at a time")
                    raise _Refused(f"{type(exc).__name__}: {exc.orig}") from exc
                self._failed(values, exc, f"retrying in {wait:.2f} s")
            except Exception as exc:  # not the database's answer: keep the rows, retry
                self._failed(values, exc, f"retrying in {wait:.2f} s")
            else:
                with self._cond:
                    for v in values:
                        self._pending.pop(v["id"], None)
                    self._committed_rows += len(values)
                    self._commits += 1
                return True
            with self._cond:
                deadline = self._drain_deadline
                if deadline is not None and time.monotonic() + wait > deadline:
                    return False
                # The backoff, cut short only by a close starting (it sets the deadline
                # looked at above); not by submits, which notify too.
                closing = self._closing
                self._cond.wait_for(lambda: self._closing != closing, timeout=wait)  # noqa: B023
            wait = min(wait * 2, RETRY_MAX_S)

    def _failed(self, values: list[dict[str, Any]], exc: Exception, then: str) -> None:
        with self._cond:
            self._failed_commits += 1
            failures = self._failed_commits
        log.error(
            "prediction log: committing %d predictions failed (%s: %s); %s (%d failed "
            "commits so far)",
            len(values),
            type(exc).__name__,
            exc,
            then,
            failures,
        )

    def _give_up(self) -> None:
        """A close's deadline passed with rows unwritten: count and log them."""
        with self._cond:
            lost = len(self._pending)
            self._abandoned_rows += lost
            self._committed = self._submitted
            self._queue.clear()
            self._queued_rows = 0
            self._cond.notify_all()
        log.error(
            "prediction log: %d predictions were never written (the feedback database did "
            "not take them before shutdown); their ids will be unknown",
            lost,
        )
