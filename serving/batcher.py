"""Dynamic micro-batching: requests that arrive close together share one model call.

On a CPU a transformer spends much of a one-text call on fixed costs (Python
dispatch, thread wake-ups, small matrix shapes), and every request of the
unbatched service also paid for its own feedback-store commit. Here each
``/predict`` request becomes a *job* in a bounded asyncio queue; one worker
task takes jobs off the queue into a batch and hands the batch to a dedicated
thread, so the event loop keeps accepting requests while the model runs.

How a batch is formed:

- A job's texts are never split across batches: a batch is a list of jobs and
  each job gets back exactly its own results, in its own order. A job with
  more texts than ``max_batch`` is run alone.
- The worker takes the first job, then everything already queued, up to
  ``max_batch`` texts. It waits for more (at most ``max_wait_ms`` after the
  first job was queued) only while more are likely: a request is being read
  by the server right now (:meth:`MicroBatcher.announce`), or the batch is
  still smaller than the previous one (under steady load the same clients
  come back). An idle service answers a lone request without waiting, so
  batching costs nothing at concurrency 1.
- Two stages, each on its own single thread: ``compute`` (the model) and
  ``finish`` (handing the batch's predictions to the feedback store's writer, or
  committing them). Batch N is logged while batch N+1 computes; at most
  ``FINISHING_BATCHES`` wait in ``finish`` so a slow store slows the model down
  instead of piling up memory. A ``finish_now`` that never blocks (queueing the
  predictions for the background writer) is tried first on the event loop, saving
  the thread hop; it answers None when it would have to wait, and ``finish`` runs.

Failures: a full queue raises :class:`QueueFull` at once (the service answers
503 with ``Retry-After``), never a wait. An exception in ``compute`` or
``finish`` fails only the jobs of that batch, with that exception; the worker
goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

C = TypeVar("C")  # what compute returns per job
R = TypeVar("R")  # what finish returns per job (what the caller gets)

# Batches that have left the model and wait for (or are in) the finish stage.
FINISHING_BATCHES = 2


class QueueFull(RuntimeError):
    """The batcher's queue is full: the caller should retry later (HTTP 503)."""


class BatcherClosed(RuntimeError):
    """The batcher is stopped (the service is shutting down) or was never started."""


@dataclass
class _Job(Generic[R]):
    texts: Sequence[str]
    future: asyncio.Future[R]
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters since start: what the batcher did (``GET /stats`` shows them)."""

    requests: int = 0
    texts: int = 0
    batches: int = 0
    failed_batches: int = 0
    rejected: int = 0  # queue full
    max_batch_requests: int = 0
    max_batch_texts: int = 0
    # batch size in requests -> number of batches of that size
    batch_requests: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """The counters as JSON-ready values (mean sizes included)."""
        batches = max(self.batches, 1)
        return {
            "requests": self.requests,
            "texts": self.texts,
            "batches": self.batches,
            "failed_batches": self.failed_batches,
            "rejected": self.rejected,
            "mean_batch_requests": round(self.requests / batches, 3),
            "mean_batch_texts": round(self.texts / batches, 3),
            "max_batch_requests": self.max_batch_requests,
            "max_batch_texts": self.max_batch_texts,
            "batch_requests": {str(k): v for k, v in sorted(self.batch_requests.items())},
        }


class MicroBatcher(Generic[C, R]):
    """Coalesce concurrent requests into batches for one model (see the module doc).

    ``compute(jobs)`` gets the texts of every job in the batch (a list of
    lists) and returns one item per job, in order; it runs on the model
    thread. ``finish(items)`` gets those items and returns the caller's result
    per job; it runs on a second thread, overlapping the next ``compute``.
    ``finish_now(items)``, if given, is tried first on the event loop: the same
    results, or None when it would block (then ``finish`` runs on its thread).
    Without ``finish`` the caller gets ``compute``'s items.

    ``start()`` and every other method must run on the same event loop.
    """

    def __init__(
        self,
        compute: Callable[[list[Sequence[str]]], list[C]],
        finish: Callable[[list[C]], list[R]] | None = None,
        *,
        finish_now: Callable[[list[C]], list[R] | None] | None = None,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        queue_size: int = 256,
        name: str = "slmops-batch",
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1, max_wait_ms >= 0")
        self.compute = compute
        self.finish = finish
        self.finish_now = finish_now
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.name = name
        self.stats = BatchStats()
        self.arriving = 0  # requests being read by the server that will submit soon
        # A deque and an event rather than an asyncio.Queue: waiting on an event
        # with a timeout can never lose a job, unlike a timed-out Queue.get.
        self._queue: deque[_Job[R]] | None = None
        self._added = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self._finish_slots: asyncio.Semaphore | None = None
        self._carry: _Job[R] | None = None  # a job that did not fit the previous batch
        self._last_batch_requests = 0
        # One thread per stage: torch keeps its intra-op thread pool per calling
        # thread, and a fast tokenizer must not be used from two threads at once.
        self._model_thread: ThreadPoolExecutor | None = None
        self._finish_thread: ThreadPoolExecutor | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the worker is up (between ``start`` and ``stop``)."""
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Create the queue, the threads and the worker task on the running loop."""
        if self.running:
            return
        self._queue = deque()
        self._added = asyncio.Event()
        self._finish_slots = asyncio.Semaphore(FINISHING_BATCHES)
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-model")
        self._finish_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-finish")
        self._spawn_worker()

    def _spawn_worker(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        self._worker.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._queue is None:
            return
        # _run catches every batch failure, so this is a bug in the batcher itself:
        # say so, and start a new worker rather than leave requests queued forever.
        log.error("micro-batch worker died; restarting it", exc_info=task.exception())
        self._spawn_worker()

    async def stop(self) -> None:
        """Stop the worker; queued jobs fail with :class:`BatcherClosed`."""
        worker, self._worker = self._worker, None
        queue, self._queue = self._queue, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        pending = [self._carry] if self._carry else []
        self._carry = None
        pending.extend(queue or ())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the service is shutting down"))
        for pool in (self._model_thread, self._finish_thread):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    # -- the caller's side ---------------------------------------------------------

    def announce(self) -> None:
        """A request that will :meth:`submit` is arriving: worth waiting for."""
        self.arriving += 1

    def withdraw(self) -> None:
        """An announced request will not submit after all (invalid, or it already did)."""
        self.arriving = max(0, self.arriving - 1)

    def queue_depth(self) -> int:
        """Jobs waiting for a batch right now."""
        return len(self._queue) if self._queue is not None else 0

    async def submit(self, texts: Sequence[str]) -> R:
        """Queue ``texts`` as one job and wait for its result (one ``finish`` item, or
        ``compute`` item without ``finish``).

        Raises :class:`QueueFull` at once when ``queue_size`` jobs are waiting,
        :class:`BatcherClosed` when stopped, else whatever the batch raised.
        """
        if self._queue is None:
            raise BatcherClosed("the batcher is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # A tuple cannot change under the batch: it is passed on as given, so a subclass
        # carries what it holds besides the texts to compute (the service's principal).
        job = _Job(texts if isinstance(texts, tuple) else list(texts), future)
        if len(self._queue) >= self.queue_size:
            self.stats.rejected += 1
            raise QueueFull(
                f"{self.queue_size} requests are already waiting for the model "
                "(serve.batching.queue_size); retry shortly"
            )
        self._queue.append(job)
        self._added.set()
        # A cancelled caller (client gone) leaves its future cancelled; the worker
        # skips such jobs and never sets a result on them.
        return await future

    # -- the worker ----------------------------------------------------------------

    def _more_expected(self, requests: int) -> bool:
        # Someone is being read by the server, or the previous batch was bigger than
        # this one so far: under steady concurrent load the same clients come back.
        return self.arriving > 0 or requests < self._last_batch_requests

    async def _take(self, timeout: float | None) -> _Job[R] | None:
        """The next queued job; wait at most ``timeout`` seconds (None: forever)."""
        assert self._queue is not None
        while not self._queue:
            if timeout is not None and timeout <= 0:
                return None
            self._added.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._added.wait()
            except TimeoutError:
                return None
            timeout = None if timeout is None else 0.0  # woken: look once more, no more waiting
        return self._queue.popleft()

    async def _next_batch(self) -> list[_Job[R]]:
        first = self._carry or await self._take(None)
        assert first is not None
        self._carry = None
        batch, n = [first], len(first.texts)
        deadline = first.queued_at + self.max_wait
        while n < self.max_batch:
            wait = self.max_wait > 0 and self._more_expected(len(batch))
            remaining = deadline - time.monotonic() if wait else 0.0
            job = await self._take(max(remaining, 0.0))
            if job is None:
                break
            if n + len(job.texts) > self.max_batch:
                self._carry = job  # first of the next batch: jobs are never split
                break
            batch.append(job)
            n += len(job.texts)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._finish_slots is not None
        while True:
            batch = [j for j in await self._next_batch() if not j.future.done()]
            if not batch:
                continue
            self._count(batch)
            await self._finish_slots.acquire()
            try:
                items = await loop.run_in_executor(
                    self._model_thread, self.compute, [j.texts for j in batch]
                )
                if len(items) != len(batch):
                    raise RuntimeError(
                        f"compute returned {len(items)} results for {len(batch)} requests"
                    )
            except asyncio.CancelledError:
                self._finish_slots.release()
                self._fail(batch, BatcherClosed("the service is shutting down"))
                raise
            except Exception as exc:  # fails this batch only; the worker goes on
                self._finish_slots.release()
                self._fail(batch, exc)
                continue
            if self.finish is None:
                self._finish_slots.release()
                self._deliver(batch, items)
                continue
            if self.finish_now is not None and self._finish_here(batch, items):
                continue
            task = loop.create_task(self._finish_batch(batch, items))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

    def _finish_here(self, batch: list[_Job[R]], items: list[C]) -> bool:
        """``finish_now`` on the loop; False when it would block (``finish`` must run)."""
        assert self._finish_slots is not None and self.finish_now is not None
        try:
            results = self.finish_now(items)
        except Exception as exc:
            self._fail(batch, exc)
        else:
            if results is None:
                return False
            self._settle(batch, results)
        self._finish_slots.release()
        return True

    async def _finish_batch(self, batch: list[_Job[R]], items: list[C]) -> None:
        assert self._finish_slots is not None and self.finish is not None
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._finish_thread, self.finish, items
            )
        except Exception as exc:
            self._fail(batch, exc)
        else:
            self._settle(batch, results)
        finally:
            self._finish_slots.release()

    def _settle(self, batch: list[_Job[R]], results: list[R]) -> None:
        """Deliver a finished batch's results, or fail it when they do not match it."""
        if len(results) != len(batch):
            mismatch = f"finish returned {len(results)} results for {len(batch)} requests"
            self._fail(batch, RuntimeError(mismatch))
        else:
            self._deliver(batch, results)

    def _count(self, batch: list[_Job[R]]) -> None:
        texts = sum(len(j.texts) for j in batch)
        s = self.stats
        s.batches += 1
        s.requests += len(batch)
        s.texts += texts
        s.max_batch_requests = max(s.max_batch_requests, len(batch))
        s.max_batch_texts = max(s.max_batch_texts, texts)
        s.batch_requests[len(batch)] += 1
        self._last_batch_requests = len(batch)

    def _fail(self, batch: list[_Job[R]], exc: BaseException) -> None:
        self.stats.failed_batches += 1
        if not isinstance(exc, BatcherClosed):
            log.error("a batch of %d requests failed: %s: %s", len(batch), type(exc).__name__, exc)
        for job in batch:
            if not job.future.done():
                job.future.set_exception(exc)

    @staticmethod
    def _deliver(batch: list[_Job[Any]], results: list[Any]) -> None:
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
