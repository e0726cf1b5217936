"""Prefect events the service sends: what a Label Studio webhook becomes (``POST
/hooks/label-studio``, :mod:`slmops.serving.routers.hooks`).

Sent to the Prefect API's own ``POST /events`` endpoint (``PREFECT_API_URL``, and
``PREFECT_API_KEY`` when set) with httpx, so the service never imports Prefect.
Throttled: a burst of annotations makes one event at once and at most one more at the
end of ``serve.hook_interval_seconds``, which covers everything that came meanwhile (the
ingestion it starts pulls every finished annotation). A scheduled event not yet sent at
shutdown is dropped with a warning: the annotations stay in Label Studio, and the next
ingestion (hourly) pulls them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0
# send(event) -> None; raises httpx.HTTPError when the Prefect API did not take it.
Sender = Callable[[dict[str, Any]], Awaitable[None]]


class NotForwarded(RuntimeError):
    """The Prefect API is not configured, or did not take the event."""


def prefect_event(name: str, resource: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
    """An event as the Prefect API's ``POST /events`` takes it (a list of these)."""
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": name,
        "resource": resource,
        "related": [],
        "payload": payload,
    }


def http_sender(api_url: str, api_key: str | None) -> Sender:
    """A :data:`Sender` that POSTs to ``<api_url>/events``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{api_url.rstrip('/')}/events"

    async def send(event: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT_S) as client:
            response = await client.post(url, json=[event], headers=headers)
            response.raise_for_status()

    return send


@dataclass(frozen=True)
class Forwarded:
    """The outcome of :meth:`EventForwarder.request`: ``at`` is when it goes out."""

    sent: bool
    at: datetime


class EventForwarder:
    """Sends one kind of event, at most once per ``interval`` seconds (see the module).

    ``send`` None: no Prefect API configured; every request raises :class:`NotForwarded`.
    """

    def __init__(
        self,
        send: Sender | None,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send, self.interval, self._clock = send, interval, clock
        self._last_sent: float | None = None
        self._trailing: asyncio.Task[None] | None = None
        self._pending: dict[str, Any] | None = None
        self._trailing_at = datetime.now(UTC)

    @classmethod
    def from_environment(cls, interval: float) -> EventForwarder:
        """The forwarder to the Prefect API of ``PREFECT_API_URL`` (None: not configured)."""
        api_url = os.environ.get("PREFECT_API_URL")
        send = http_sender(api_url, os.environ.get("PREFECT_API_KEY")) if api_url else None
        return cls(send, interval)

    async def request(self, event: dict[str, Any]) -> Forwarded:
        """Send ``event`` now, or schedule it (the newest requested meanwhile goes out)."""
        if self._send is None:
            raise NotForwarded("PREFECT_API_URL is not set where the service runs")
        if self._trailing is not None:  # one is scheduled already: it carries this one
            self._pending = event
            return Forwarded(sent=False, at=self._trailing_at)
        now = self._clock()
        if self._last_sent is None or now - self._last_sent >= self.interval:
            await self._deliver(event)
            return Forwarded(sent=True, at=datetime.now(UTC))
        delay = self._last_sent + self.interval - now
        self._pending = event
        self._trailing_at = datetime.now(UTC) + timedelta(seconds=delay)
        self._trailing = asyncio.create_task(self._later(delay))
        return Forwarded(sent=False, at=self._trailing_at)

    async def _deliver(self, event: dict[str, Any]) -> None:
        assert self._send is not None
        try:
            await self._send(event)
        except httpx.HTTPError as exc:
            raise NotForwarded(f"the Prefect API did not take the event: {exc}") from exc
        self._last_sent = self._clock()

    async def _later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        event, self._pending, self._trailing = self._pending, None, None
        if event is None:
            return
        try:
            await self._deliver(event)
        except NotForwarded as exc:
            log.warning("Prefect event %s not sent: %s", event["event"], exc)

    async def close(self) -> None:
        """Drop a scheduled event (logged): the next scheduled ingestion covers it."""
        if self._trailing is not None:
            self._trailing.cancel()
            log.warning(
                "shutdown: the scheduled Prefect event %s was not sent; the next ingestion "
                "pulls the annotations it announced",
                (self._pending or {}).get("event"),
            )
            self._trailing = None
