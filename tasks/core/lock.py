"""One writer at a time: the project lock.

Every change of the labeled data (a label import, feedback ingestion, a train/val
split read from it) and every move of the registry aliases happens inside
:func:`project_lock`, so that two runs at once (the weekly schedule and a
feedback-triggered retrain, a CLI command beside a flow) take turns instead of
interleaving. It is a file lock (``.slmops.lock`` beside the params file), so it holds
without a Prefect server, across processes on one machine; a second run waits for the
first (queued, not dropped). The lock is re-entrant in a thread: a locked step may
call another.

When the feedback store is Postgres (``feedback.db_url`` a ``postgresql`` URL), machines
that share that database also take turns: the lock then also holds a Postgres
session-level advisory lock (``pg_advisory_lock``) on a key derived from the project's
model name, taken after the file lock and released before it. Postgres releases it by
itself when the holder's connection ends (a killed run never leaves it held).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from filelock import FileLock, Timeout
from sqlalchemy.engine import make_url

from slmops.tasks.core.config import Params
from slmops.tasks.core.redact import redact_uri

log = logging.getLogger(__name__)

LOCK_FILE = ".slmops.lock"
# How often a wait with a time limit asks Postgres again for the advisory lock.
ADVISORY_POLL_S = 0.2
_locks: dict[Path, FileLock] = {}
_guard = threading.Lock()
_held = threading.local()  # per thread: lock file -> how deep this thread holds it


class AdvisoryLockTimeout(Timeout):
    """The Postgres advisory lock was not acquired in time (another machine's run held it)."""

    def __init__(self, key: int, db_url: str, timeout: float) -> None:
        super().__init__(f"postgres advisory lock {key}")
        self.key, self.db_url, self.timeout = key, redact_uri(db_url), timeout

    def __str__(self) -> str:
        return (
            f"the Postgres advisory lock {self.key} on {self.db_url} was not acquired in "
            f"{self.timeout:g} s: another run holds it"
        )


def _lock_for(path: Path) -> FileLock:
    # One FileLock object per file in a process; each thread holds its own handle
    # (filelock's thread-local default), so two threads of one process take turns.
    with _guard:
        if path not in _locks:
            _locks[path] = FileLock(path)
        return _locks[path]


def _depths() -> dict[Path, int]:
    if not hasattr(_held, "depth"):
        _held.depth = {}
    return _held.depth


def advisory_key(params: Params) -> int:
    """The project's Postgres advisory lock key: a signed 64-bit number derived from
    ``registry.model_name`` (the same on every machine of the project)."""
    digest = hashlib.sha256(f"slmops:{params.registry.model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def uses_postgres(params: Params) -> bool:
    """Whether the feedback store is Postgres (then the lock is also an advisory lock)."""
    return make_url(params.feedback.db_url).get_backend_name() == "postgresql"


@contextmanager
def project_lock(params: Params, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold the project's lock while ``what`` (for the log) runs; wait for it when
    another run holds it (``timeout`` seconds in all, ``-1``: as long as it takes;
    :class:`filelock.Timeout` after that, :class:`AdvisoryLockTimeout` when it was the
    Postgres lock that did not come).

    The outermost hold logs ``<what>: holding the project lock`` and
    ``<what>: released the project lock``, so a run's log shows when it held it."""
    path = params.root.resolve() / LOCK_FILE
    depths = _depths()
    if depths.get(path):  # this thread holds it already: a locked step inside another
        depths[path] += 1
        try:
            yield
        finally:
            depths[path] -= 1
        return
    deadline = None if timeout < 0 else time.monotonic() + timeout
    lock = _lock_for(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: waiting for another run to finish with the data (%s)", what, lock.lock_file)
        lock.acquire(timeout=timeout)
    try:
        with _advisory_lock(params, what, deadline, timeout):
            depths[path] = 1
            since = time.monotonic()
            log.info("%s: holding the project lock", what)
            try:
                yield
            finally:
                depths.pop(path, None)
                log.info(
                    "%s: released the project lock (held %.1f s)", what, time.monotonic() - since
                )
    finally:
        lock.release()


@contextmanager
def _advisory_lock(
    params: Params, what: str, deadline: float | None, timeout: float
) -> Iterator[None]:
    """The Postgres advisory lock of the project when the feedback store is Postgres;
    nothing otherwise."""
    if not uses_postgres(params):
        yield
        return
    key = advisory_key(params)
    # Its own connection, in autocommit: a session-level lock outlives transactions,
    # and the session stays idle (not "idle in transaction") while the lock is held.
    engine = sa.create_engine(
        params.feedback.db_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as conn:
            _acquire_advisory(conn, key, what, deadline, timeout, params.feedback.db_url)
            try:
                yield
            finally:
                try:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except sa.exc.DBAPIError as exc:
                    # The connection is gone, and the lock with it.
                    log.warning("%s: advisory lock %d not released cleanly: %s", what, key, exc)
    finally:
        engine.dispose()


def _acquire_advisory(
    conn: sa.Connection, key: int, what: str, deadline: float | None, timeout: float, url: str
) -> None:
    try_lock = sa.text("SELECT pg_try_advisory_lock(:k)")
    if conn.execute(try_lock, {"k": key}).scalar_one():
        return
    log.info(
        "%s: waiting for another run to finish with the data (Postgres advisory lock %d on %s)",
        what,
        key,
        redact_uri(url),
    )
    if deadline is None:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})  # waits in Postgres
        return
    while not conn.execute(try_lock, {"k": key}).scalar_one():
        if time.monotonic() >= deadline:
            raise AdvisoryLockTimeout(key, url, timeout)
        time.sleep(ADVISORY_POLL_S)
