"""The served model and its hot swap.

A background thread (:class:`Poller`) looks at the registry's ``champion``
alias. When it moves, the new version is downloaded and loaded completely,
then one reference is replaced. A request reads that reference once, so
requests already running finish on the model they started with and none fails
during a swap. When loading fails, the old model keeps serving and ``/health``
says ``degraded`` with the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from slmops.serving.model_source import LoadedModel, ModelSource, NoChampion
from slmops.serving.schemas import HealthStatus
from slmops.tasks.core.redact import redact_text

log = logging.getLogger(__name__)

# A failed version is retried on polls at most this often (/admin/reload retries
# at once): reloading a broken model every few seconds only burns CPU.
RETRY_FAILED_SECONDS = 300.0
# With polling off, a failed first load is retried after 1, 2, 4 ... 60 s.
INITIAL_RETRY_SECONDS = 1.0
MAX_INITIAL_RETRY_SECONDS = 60.0
# How long shutdown waits for the poller (it may be in the middle of a load).
POLLER_JOIN_SECONDS = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


class NoModel(RuntimeError):
    """No model is loaded yet (the service answers 503)."""


@dataclass(frozen=True)
class ReloadOutcome:
    """What one look at the alias did."""

    previous_version: str | None
    version: str | None
    changed: bool
    error: str | None


class ModelHolder:
    """The served model, replaced atomically when the champion alias moves.

    ``current`` is read without a lock: assigning one attribute is atomic, and
    each request reads it once. The lock only keeps two reloads (poller and
    /admin/reload) from loading the same version at once.
    """

    def __init__(self, source: ModelSource, name: str) -> None:
        self.source = source
        self.name = name
        self.current: LoadedModel | None = None
        self.last_checked_at: datetime | None = None
        self.last_error: str | None = None
        self._failed: tuple[str, str, float] | None = None  # version, run_id, monotonic time
        self._lock = threading.Lock()
        # Told about every version swapped in (the metrics' model info).
        self.on_load: Callable[[LoadedModel], None] | None = None

    @property
    def status(self) -> HealthStatus:
        """``degraded`` after a failed reload, ``loading`` before the first model, else ``ok``."""
        if self.last_error is not None:
            return "degraded"
        return "ok" if self.current is not None else "loading"

    def serving(self) -> LoadedModel:
        """The model to answer with: read once per request (or batch), so a swap during
        it does not affect it. :class:`NoModel` while none is loaded."""
        loaded = self.current
        if loaded is None:
            why = self.last_error or "the model is still loading"
            raise NoModel(f"no model loaded yet: {why}")
        return loaded

    def check(self, *, force: bool = False) -> ReloadOutcome:
        """Look at the alias; if it moved, load the new version and swap it in.

        Never raises: a failure is recorded in ``last_error`` and the served
        model stays. ``force`` retries a version that failed recently.
        """
        with self._lock:
            old = self.current
            before = old.version if old else None
            self.last_checked_at = _now()
            try:
                ref = self.source.champion()
                if old is not None and (ref.version, ref.run_id) == (old.version, old.run_id):
                    self.last_error = None
                    self._failed = None
                    return ReloadOutcome(before, before, False, None)
                if (
                    not force
                    and self._failed is not None
                    and self._failed[:2] == (ref.version, ref.run_id)
                    and time.monotonic() - self._failed[2] < RETRY_FAILED_SECONDS
                ):
                    return ReloadOutcome(before, before, False, self.last_error)
                log.info("loading %s version %s (serving: %s)", ref.name, ref.version, before)
                try:
                    new = self.source.load(ref)
                except Exception:
                    self._failed = (ref.version, ref.run_id, time.monotonic())
                    raise
                self.current = new  # the swap: one reference, loaded completely before
                self.last_error = None
                self._failed = None
                if self.on_load is not None:
                    self.on_load(new)
                log.info("serving %s version %s", new.name, new.version)
                return ReloadOutcome(before, new.version, True, None)
            except NoChampion as exc:
                self.last_error = redact_text(str(exc))
            except Exception as exc:  # any failure must leave the old model serving
                # Shown by the open /health: a URI's credentials in the message are masked.
                self.last_error = redact_text(f"{type(exc).__name__}: {exc}")
                log.warning("model reload failed, still serving %s: %s", before, self.last_error)
            return ReloadOutcome(before, before, False, self.last_error)

    def poll(self, stop: threading.Event, interval: float) -> None:
        """Load the champion now, then check every ``interval`` seconds until ``stop``.

        With ``interval`` 0 the alias is not watched, but a first load that
        failed (registry not up yet, no champion yet) is retried with growing
        pauses until a model is served: a service started before its registry
        should not need a manual reload.
        """
        self.check()
        if interval > 0:
            while not stop.wait(interval):
                self.check()
            return
        pause = INITIAL_RETRY_SECONDS
        while self.current is None and not stop.wait(pause):
            self.check()
            pause = min(pause * 2, MAX_INITIAL_RETRY_SECONDS)


class Poller:
    """The thread that runs :meth:`ModelHolder.poll` while the app runs."""

    def __init__(self, holder: ModelHolder, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=holder.poll,
            args=(self._stop, interval),
            name="slmops-model-poller",
            daemon=True,  # a load stuck on the network must not keep the process alive
        )

    def start(self) -> None:
        """Load the champion in the background, then keep watching its alias."""
        self._thread.start()

    async def stop(self) -> None:
        """Stop polling; wait up to :data:`POLLER_JOIN_SECONDS` for a load in progress."""
        self._stop.set()
        await anyio.to_thread.run_sync(self._thread.join, POLLER_JOIN_SECONDS)
        if self._thread.is_alive():
            log.warning("model poller still busy after %.0f s; leaving it", POLLER_JOIN_SECONDS)
