"""The service's Prefect events: the wire form of the Prefect API's ``POST /events``,
and the throttle (one at once, at most one more per interval, carrying the newest)."""

from __future__ import annotations

import asyncio

import pytest

from slmops.serving.events import EventForwarder, NotForwarded, http_sender, prefect_event
from tests.webhook import Webhook, refused_url


def test_an_event_is_posted_as_the_prefect_api_takes_it():
    event = prefect_event("slmops.review.annotated", {"prefect.resource.id": "slmops.model.m"}, {})
    with Webhook(path="/api") as api:
        asyncio.run(http_sender(api.url, "secret")(event))
    (post,) = api.posts
    assert post["path"] == "/api/events"
    assert post["json"] == [event]
    assert set(event) == {"id", "occurred", "event", "resource", "related", "payload"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_makes_one_event_now_and_one_at_the_end_of_the_interval_with_the_newest():
    sent: list[dict] = []

    async def send(event: dict) -> None:
        sent.append(event)

    async def burst() -> None:
        clock = Clock()
        forwarder = EventForwarder(send, interval=0.2, clock=clock)
        first = await forwarder.request({"event": "e", "n": 1})
        assert first.sent and len(sent) == 1
        for n in (2, 3, 4):  # within the interval: one scheduled, carrying the newest
            clock.now += 0.01
            later = await forwarder.request({"event": "e", "n": n})
            assert not later.sent
        assert len(sent) == 1
        clock.now += 0.2
        await asyncio.sleep(0.3)
        assert [e["n"] for e in sent] == [1, 4]
        clock.now += 1.0  # a quiet interval later: sent at once again
        assert (await forwarder.request({"event": "e", "n": 5})).sent
        await forwarder.close()

    asyncio.run(burst())


def test_without_a_prefect_api_or_when_it_refuses_nothing_is_forwarded_and_it_says_so():
    async def go() -> None:
        with pytest.raises(NotForwarded, match="PREFECT_API_URL"):
            await EventForwarder(None, 60).request({"event": "e"})
        down = EventForwarder(http_sender(refused_url(), None), 60)
        with pytest.raises(NotForwarded, match="did not take"):
            await down.request({"event": "e"})
        # Not counted as sent: the next request tries again at once.
        with pytest.raises(NotForwarded):
            await down.request({"event": "e"})

    asyncio.run(go())


def test_a_scheduled_event_is_dropped_at_shutdown_with_a_warning(caplog):
    async def go() -> None:
        sent: list[dict] = []

        async def send(event: dict) -> None:
            sent.append(event)

        forwarder = EventForwarder(send, interval=60)
        await forwarder.request({"event": "e"})
        assert not (await forwarder.request({"event": "e"})).sent
        await forwarder.close()
        await asyncio.sleep(0)
        assert len(sent) == 1

    asyncio.run(go())
    assert "was not sent" in caplog.text
