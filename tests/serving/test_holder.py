"""The served model and its hot swap: loads, swaps, failed versions, the poller thread."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

import slmops.serving.holder as holder_module
from slmops.serving.holder import ModelHolder, NoModel, Poller
from slmops.serving.model_source import LoadedModel, ModelRef, NoChampion, RegistrySource
from tests.conftest import TINY_LABELS
from tests.serving.conftest import set_champion


class StubSource:
    """A source whose champion and loads the test controls (nothing is downloaded)."""

    def __init__(self) -> None:
        self.ref: ModelRef | None = None
        self.loads = 0
        self.release = threading.Event()
        self.release.set()

    def champion(self) -> ModelRef:
        if self.ref is None:
            raise NoChampion("no 'champion' yet")
        return self.ref

    def load(self, ref: ModelRef) -> LoadedModel:
        self.loads += 1
        assert self.release.wait(10)
        return LoadedModel(ref.name, ref.version, ref.run_id, object(), ref.uri, None)


def test_serving_says_why_there_is_no_model():
    holder = ModelHolder(StubSource(), "m")
    with pytest.raises(NoModel, match="no model loaded yet: the model is still loading"):
        holder.serving()
    holder.check()
    assert holder.status == "degraded"
    with pytest.raises(NoModel, match="no 'champion' yet"):
        holder.serving()


def test_the_poller_loads_in_the_background_and_stop_leaves_a_stuck_load(caplog, monkeypatch):
    source = StubSource()
    source.ref = ModelRef("m", "1", "r")
    holder = ModelHolder(source, "m")
    seen: list[str] = []
    holder.on_load = lambda m: seen.append(m.version)
    poller = Poller(holder, 0)
    poller.start()
    deadline = time.monotonic() + 10
    while holder.current is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert holder.serving().version == "1" and seen == ["1"]
    anyio.run(poller.stop)

    # A load that hangs does not hold up shutdown past the join timeout.
    monkeypatch.setattr(holder_module, "POLLER_JOIN_SECONDS", 0.1)
    source.release.clear()
    stuck = Poller(ModelHolder(source, "m"), 0)
    stuck.start()
    anyio.run(stuck.stop)
    assert "still busy" in caplog.text
    source.release.set()


def test_holder_loads_swaps_and_stops_polling_cleanly(params, registry):
    holder = ModelHolder(RegistrySource(params), registry.name)
    assert holder.status == "loading" and holder.current is None
    stop = threading.Event()
    poller = threading.Thread(target=holder.poll, args=(stop, 0.05))
    poller.start()
    try:
        deadline = time.monotonic() + 30
        while holder.current is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first = holder.current
        assert first.version == "1" and holder.status == "ok"
        set_champion(params, registry.good[1])
        while holder.current is first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert holder.current.version == "2"
        # The old model object still works for whoever holds it.
        assert first.predictor.predict(["hello"])[0] in TINY_LABELS
    finally:
        stop.set()
        poller.join(timeout=10)
    assert not poller.is_alive()


class CountingSource(RegistrySource):
    """The registry source, counting load attempts."""

    loads = 0

    def load(self, ref: ModelRef) -> LoadedModel:
        self.loads += 1
        return super().load(ref)


def test_a_failed_version_is_not_reloaded_on_every_poll(params, registry):
    source = CountingSource(params)
    holder = ModelHolder(source, registry.name)
    holder.check()
    set_champion(params, registry.broken)
    first = holder.check()
    assert first.error and holder.status == "degraded" and holder.current.version == "1"
    assert source.loads == 2
    again = holder.check()  # within the retry interval: no second attempt
    assert again.error == first.error and source.loads == 2
    assert holder.check(force=True).error and source.loads == 3  # /admin/reload retries


def test_with_polling_off_a_failed_first_load_is_retried_until_served(monkeypatch):
    monkeypatch.setattr(holder_module, "INITIAL_RETRY_SECONDS", 0.01)
    source = StubSource()  # no champion yet
    holder = ModelHolder(source, "m")
    stop = threading.Event()
    poller = threading.Thread(target=holder.poll, args=(stop, 0))
    poller.start()
    try:
        deadline = time.monotonic() + 10
        while holder.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert holder.status == "degraded" and "no 'champion'" in holder.last_error
        source.ref = ModelRef("m", "1", "r")  # promoted after the service started
        while holder.current is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert holder.current.version == "1" and holder.status == "ok"
    finally:
        stop.set()
        poller.join(timeout=10)
    assert not poller.is_alive()  # with a model served, the retry loop has ended
