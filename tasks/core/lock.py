"""One writer at a time: the project lock.

Every change of the labeled data (a label import, feedback ingestion) and every move
of the registry aliases happens inside :func:`project_lock`, so that two runs at once
(the weekly schedule and a feedback-triggered retrain, a CLI command beside a flow)
take turns instead of interleaving. It is a file lock (``.slmops.lock`` beside the
params file), so it holds without a Prefect server, across processes on one machine;
a second run waits for the first (queued, not dropped). The lock is re-entrant in a
thread: a locked step may call another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from slmops.tasks.core.config import Params

log = logging.getLogger(__name__)

LOCK_FILE = ".slmops.lock"
_locks: dict[Path, FileLock] = {}
_guard = threading.Lock()


def _lock_for(path: Path) -> FileLock:
    # One FileLock object per file in a process, so that nesting in a thread counts up
    # instead of waiting on itself; each thread holds its own handle (filelock's
    # thread-local default), so two threads of one process still take turns.
    with _guard:
        if path not in _locks:
            _locks[path] = FileLock(path)
        return _locks[path]


@contextmanager
def project_lock(params: Params, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold the project's lock while ``what`` (for the log) runs; wait for it when
    another run holds it (``timeout`` seconds, ``-1``: as long as it takes;
    :class:`filelock.Timeout` after that)."""
    lock = _lock_for(params.root.resolve() / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: waiting for another run to finish with the data (%s)", what, lock.lock_file)
        lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()
