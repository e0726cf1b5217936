"""The body limit holds for every body: declared, chunked, or a length that lies."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from slmops.serving.app import create_app
from slmops.serving.middleware import LimitBody
from tests.serving.conftest import wait_until_loaded

LIMIT = 100_000
CHUNK = 64 * 1024
FIVE_MB = 5 * 1024 * 1024


class Body(BaseModel):
    text: str


def body_app() -> FastAPI:
    """An endpoint that reads and parses a JSON body, behind the limit."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"chars": len(body.text)}

    return app


def call(app, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, int, dict]:
    """Send ``body`` in chunks through the ASGI app; the status, the bytes the app
    pulled and the answer."""
    pulled = 0
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        if not chunks:
            return {"type": "http.disconnect"}
        chunk = chunks.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
        "headers": [(b"content-type", b"application/json"), *headers],
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, pulled, json.loads(answer)


def five_mb_json() -> bytes:
    return json.dumps({"text": "x" * FIVE_MB}).encode()


def test_a_chunked_body_is_refused_after_at_most_the_limit_and_one_chunk():
    status, pulled, answer = call(LimitBody(body_app(), LIMIT), five_mb_json(), [])
    assert status == 413 and "the limit is 100000" in answer["detail"]
    assert pulled <= LIMIT + CHUNK, pulled


def test_a_declared_length_that_lies_is_caught_by_the_count():
    small = [(b"content-length", b"10")]
    status, pulled, _ = call(LimitBody(body_app(), LIMIT), five_mb_json(), small)
    assert status == 413 and pulled <= LIMIT + CHUNK


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    declared = [(b"content-length", str(FIVE_MB).encode())]
    status, pulled, _ = call(LimitBody(body_app(), LIMIT), five_mb_json(), declared)
    assert status == 413 and pulled == 0


def test_a_body_within_the_limit_is_read_whole():
    body = json.dumps({"text": "y" * 90_000}).encode()
    status, pulled, answer = call(LimitBody(body_app(), LIMIT), body, [])
    assert (status, pulled, answer) == (200, len(body), {"chars": 90_000})


def test_the_service_refuses_a_chunked_predict_body_and_logs_nothing(make_params):
    params = make_params(max_text_chars=40, max_batch=3)
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        chunks = iter([b'{"text": "', *([b"x" * CHUNK] * 80), b'"}'])  # 5 MB, no length
        r = c.post("/predict", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "request body of more than" in r.json()["detail"]
        assert c.app.state.service.store.counts()["predictions"] == 0
        assert c.post("/predict", json={"text": "my card"}).status_code == 200
