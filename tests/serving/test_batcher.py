"""The micro-batcher on its own (no model, no HTTP): coalescing, routing, limits, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from slmops.serving.batcher import BatcherClosed, MicroBatcher, QueueFull


class Gate:
    """A compute function that records its batches and can be held shut."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.batches: list[list[list[str]]] = []
        self.fail_on = fail_on

    def __call__(self, jobs: list[Sequence[str]]) -> list[list[str]]:
        self.batches.append([list(j) for j in jobs])
        self.entered.set()
        assert self.open.wait(10), "the test never opened the gate"
        if self.fail_on is not None and any(self.fail_on in t for j in jobs for t in j):
            raise RuntimeError(f"compute failed on {self.fail_on!r}")
        return [[t.upper() for t in j] for j in jobs]


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_jobs_queued_while_the_model_runs_share_the_next_batch_and_get_their_own_results():
    gate = Gate()

    async def main() -> None:
        b = MicroBatcher(gate, max_batch=64, max_wait_ms=0)
        b.start()
        gate.open.clear()
        first = asyncio.create_task(b.submit(["a"]))
        await wait_for(gate.entered.is_set)  # the model is busy with "a"
        jobs = [[f"t{i}", f"u{i}"] if i % 2 else [f"t{i}"] for i in range(10)]
        tasks = [asyncio.create_task(b.submit(j)) for j in jobs]
        await wait_for(lambda: b.queue_depth() == 10)
        gate.open.set()
        assert await first == ["A"]
        results = await asyncio.gather(*tasks)
        assert results == [[t.upper() for t in j] for j in jobs]
        assert gate.batches[1] == jobs  # one batch, in arrival order
        assert b.stats.batches == 2 and b.stats.max_batch_requests == 10
        assert b.stats.requests == 11 and b.stats.texts == 16
        assert b.stats.as_dict()["batch_requests"] == {"1": 1, "10": 1}
        await b.stop()

    run(main())


def test_max_batch_bounds_the_texts_per_call_and_never_splits_a_request():
    gate = Gate()

    async def main() -> None:
        b = MicroBatcher(gate, max_batch=3, max_wait_ms=0)
        b.start()
        gate.open.clear()
        first = asyncio.create_task(b.submit(["x"]))
        await wait_for(gate.entered.is_set)
        jobs = [["a", "b"], ["c", "d"], ["e"], ["f", "g", "h", "i", "j"], ["k"]]
        tasks = [asyncio.create_task(b.submit(j)) for j in jobs]
        await wait_for(lambda: b.queue_depth() == len(jobs))
        gate.open.set()
        await first
        assert await asyncio.gather(*tasks) == [[t.upper() for t in j] for j in jobs]
        await b.stop()

    run(main())
    assert gate.batches[1:] == [
        [["a", "b"]],  # ["c", "d"] would make 4 texts
        [["c", "d"], ["e"]],
        [["f", "g", "h", "i", "j"]],  # more than max_batch: alone
        [["k"]],
    ]


def test_a_lone_request_on_an_idle_batcher_does_not_wait():
    gate = Gate()

    async def main() -> float:
        b = MicroBatcher(gate, max_batch=32, max_wait_ms=2000)
        b.start()
        start = time.monotonic()
        assert await b.submit(["alone"]) == ["ALONE"]
        took = time.monotonic() - start
        await b.stop()
        return took

    assert run(main()) < 1.0


def test_an_announced_request_is_waited_for_up_to_max_wait():
    gate = Gate()

    async def main() -> None:
        b = MicroBatcher(gate, max_batch=32, max_wait_ms=2000)
        b.start()
        b.announce()  # the server is reading another request's body
        first = asyncio.create_task(b.submit(["first"]))
        await asyncio.sleep(0.05)
        assert not gate.batches  # still waiting for the announced one
        b.withdraw()
        second = asyncio.create_task(b.submit(["second"]))
        assert await asyncio.gather(first, second) == [["FIRST"], ["SECOND"]]
        assert gate.batches == [[["first"], ["second"]]]
        # max_wait bounds the wait even when the announced request never comes.
        b.announce()
        start = time.monotonic()
        b.max_wait = 0.1
        assert await b.submit(["third"]) == ["THIRD"]
        assert 0.05 < time.monotonic() - start < 1.5
        await b.stop()

    run(main())


def test_a_full_queue_refuses_at_once_and_the_queued_jobs_still_run():
    gate = Gate()

    async def main() -> None:
        b = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_size=2)
        b.start()
        gate.open.clear()
        running = asyncio.create_task(b.submit(["r"]))
        await wait_for(gate.entered.is_set)
        queued = [asyncio.create_task(b.submit([q])) for q in ("q1", "q2")]
        await wait_for(lambda: b.queue_depth() == 2)
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            await b.submit(["refused"])
        assert b.stats.rejected == 1
        gate.open.set()
        assert await asyncio.gather(running, *queued) == [["R"], ["Q1"], ["Q2"]]
        await b.stop()

    run(main())


def test_a_failed_batch_fails_only_its_requests_and_the_worker_goes_on():
    gate = Gate(fail_on="boom")

    async def main() -> None:
        b = MicroBatcher(gate, max_batch=8, max_wait_ms=0)
        b.start()
        gate.open.clear()
        first = asyncio.create_task(b.submit(["fine"]))
        await wait_for(gate.entered.is_set)
        doomed = [asyncio.create_task(b.submit(t)) for t in (["boom"], ["innocent bystander"])]
        await wait_for(lambda: b.queue_depth() == 2)
        gate.open.set()
        assert await first == ["FINE"]
        for task in doomed:
            with pytest.raises(RuntimeError, match="compute failed on 'boom'"):
                await task
        assert await b.submit(["after"]) == ["AFTER"]
        assert b.stats.failed_batches == 1 and b.running
        await b.stop()

    run(main())


def test_finish_runs_on_its_own_thread_and_its_failure_fails_its_batch():
    threads: dict[str, str] = {}

    def compute(jobs):
        threads["compute"] = threading.current_thread().name
        return [len(j) for j in jobs]

    def finish(items):
        threads["finish"] = threading.current_thread().name
        if 99 in items:
            raise OSError("disk full")
        return [f"{n} texts" for n in items]

    async def main() -> None:
        b = MicroBatcher(compute, finish, max_batch=200, max_wait_ms=0)
        b.start()
        assert await b.submit(["a", "b"]) == "2 texts"
        with pytest.raises(OSError, match="disk full"):
            await b.submit(["x"] * 99)
        assert await b.submit(["c"]) == "1 texts"
        await b.stop()

    run(main())
    assert threads["compute"].startswith("slmops-batch-model")
    assert threads["finish"].startswith("slmops-batch-finish")


def test_finish_now_runs_on_the_loop_and_finish_takes_over_when_it_would_block():
    threads: dict[str, list[str]] = {"now": [], "finish": []}

    def finish_now(items):
        threads["now"].append(threading.current_thread().name)
        if 7 in items:
            raise ValueError("bad batch")
        return None if 3 in items else [f"{n} now" for n in items]  # 3: "would block"

    def finish(items):
        threads["finish"].append(threading.current_thread().name)
        return [f"{n} later" for n in items]

    async def main() -> None:
        b = MicroBatcher(
            lambda jobs: [len(j) for j in jobs], finish, finish_now=finish_now, max_wait_ms=0
        )
        b.start()
        assert await b.submit(["a"]) == "1 now"
        assert await b.submit(["a", "b", "c"]) == "3 later"
        with pytest.raises(ValueError, match="bad batch"):
            await b.submit(["x"] * 7)
        assert await b.submit(["a", "b"]) == "2 now"  # the slot was given back each time
        assert b.stats.failed_batches == 1
        await b.stop()
        return threading.current_thread().name

    loop_thread = run(main())
    assert set(threads["now"]) == {loop_thread}
    assert len(threads["finish"]) == 1 and threads["finish"][0].startswith("slmops-batch-finish")


def test_a_cancelled_caller_is_skipped_and_stop_fails_what_is_left():
    gate = Gate()

    async def main() -> None:
        b = MicroBatcher(gate, max_batch=1, max_wait_ms=0)
        b.start()
        gate.open.clear()
        running = asyncio.create_task(b.submit(["r"]))
        await wait_for(gate.entered.is_set)
        gone = asyncio.create_task(b.submit(["gone"]))
        left = asyncio.create_task(b.submit(["left"]))
        await wait_for(lambda: b.queue_depth() == 2)
        gone.cancel()
        gate.open.set()
        assert await running == ["R"]
        assert await left == ["LEFT"]
        assert ["gone"] not in [j for batch in gate.batches for j in batch]
        gate.open.clear()
        gate.entered.clear()
        busy = asyncio.create_task(b.submit(["busy"]))
        await wait_for(gate.entered.is_set)
        waiting = asyncio.create_task(b.submit(["waiting"]))
        await wait_for(lambda: b.queue_depth() == 1)
        await b.stop()
        gate.open.set()
        for task in (busy, waiting):
            with pytest.raises(BatcherClosed):
                await task
        with pytest.raises(BatcherClosed):
            await b.submit(["late"])

    run(main())
