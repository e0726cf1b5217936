"""The service's ASGI middleware: body-size limit, batcher arrivals, request metrics.

All three are pure ASGI rather than ``@app.middleware("http")``: Starlette's
BaseHTTPMiddleware adds a task group and memory streams to every request, and
these run on every request.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slmops.serving.batcher import MicroBatcher
from slmops.serving.metrics import ServiceMetrics
from slmops.tasks.core.config import ServeConfig

# Worst case bytes per character in a JSON string (an escaped surrogate pair is
# 12 bytes for one character) plus room for keys: bodies above this are refused
# before they are read.
JSON_BYTES_PER_CHAR = 12
BODY_OVERHEAD_BYTES = 64 * 1024
UNMATCHED = "(unmatched)"  # the metrics' endpoint label of a request no route matches
ANNOUNCED = "slmops_announced"  # request.state flag: counted as arriving at the batcher


def max_body(serve: ServeConfig) -> int:
    """The largest request body worth reading: ``serve.max_batch`` texts of
    ``serve.max_text_chars`` characters, in the worst JSON encoding."""
    return serve.max_batch * serve.max_text_chars * JSON_BYTES_PER_CHAR + BODY_OVERHEAD_BYTES


class LimitBody:
    """Refuse a request body over ``max_body`` bytes: at once from a declared
    ``content-length``, else (chunked, or a length that lies) as the bytes arrive.

    Counting the bytes received is what holds for every body: a chunked request
    declares no length, and without the count the endpoint would read and parse
    megabytes before its own checks refuse them.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    def _too_large(self, size: str) -> str:
        return f"request body of {size} bytes; the limit is {self.max_body}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 from the ``content-length`` header, else pass the request on with
        a ``receive`` that raises a 413 once more than ``max_body`` bytes came in."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    response = JSONResponse(
                        {"detail": self._too_large(value.decode())}, status_code=413
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # Raised inside the endpoint's body read: FastAPI passes an
                    # HTTPException through, and the app answers it as a 413.
                    raise HTTPException(413, self._too_large(f"more than {self.max_body}"))
            return message

        await self.app(scope, counted, send)


class AnnounceArrivals:
    """Tell the batcher a ``POST /predict`` is arriving, before its body is read.

    The batcher waits for more requests only when some are on their way, so a
    lone request on an idle service is answered without waiting.
    """

    def __init__(self, app: ASGIApp, batcher: MicroBatcher[Any, Any]) -> None:
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request as arriving until the endpoint queues it (or it ends)."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[ANNOUNCED] = True
        self.batcher.announce()
        try:
            await self.app(scope, receive, send)
        finally:
            if state.get(ANNOUNCED):  # never queued (invalid, unauthorised, no model)
                state[ANNOUNCED] = False
                self.batcher.withdraw()


def route_template(scope: Scope) -> str:
    """The route template a request went to (``/predict``), or ``(unmatched)``.

    After routing, Starlette leaves the matched route in ``scope["route"]``. A
    request answered before routing (413 for an oversized body) has none: the
    routes are matched here instead.
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RecordRequests:
    """Time every HTTP request and count it by route template and status
    (:class:`~slmops.serving.metrics.ServiceMetrics`).

    Added last, so it is outermost and also sees the answers of the other
    middleware (a 413 before the body is read).
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; record its status and duration once it is answered."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe_request(
                route_template(scope), scope["method"], status, time.perf_counter() - start
            )
