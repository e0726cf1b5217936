"""The prediction service in a background thread of the calling process: for the
loop demo and the integration tests, which drive it over HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from slmops.serving.app import create_app
from slmops.tasks.core.config import Params


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(
    params: Params, port: int, ready_timeout: float = 120, *, need_model: bool = True
) -> Iterator[str]:
    """Run ``create_app(params)`` under uvicorn on 127.0.0.1:``port`` until the block
    exits; yields the base URL once ``/health`` answers 200 (a model is loaded), or with
    ``need_model`` false once it answers at all (the hooks need no model).

    Raises ``RuntimeError`` when the service exits or is not ready within
    ``ready_timeout`` seconds.
    """
    server = uvicorn.Server(
        uvicorn.Config(create_app(params), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="slmops-service", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                status = health.json().get("status")
                if health.status_code == 200 or not need_model:
                    break
            except (httpx.HTTPError, ValueError):
                status = "not answering"
            if not thread.is_alive():
                raise RuntimeError(f"the prediction service at {url} exited while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the prediction service at {url} was not ready after {ready_timeout:.0f} s"
                    f" (health: {status})"
                )
            time.sleep(0.5)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
