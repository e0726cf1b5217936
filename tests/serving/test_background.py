"""The service in a background thread: ready once a model is served, stopped after."""

import httpx
import pytest

from slmops.serving.background import free_port, serve_in_thread
from tests.serving.conftest import set_champion


def test_yields_once_the_champion_is_served_and_stops_after(params, registry):
    port = free_port()
    with serve_in_thread(params, port) as url:
        assert url == f"http://127.0.0.1:{port}"
        model = httpx.get(f"{url}/model", timeout=10).json()
        assert model["version"] == registry.good[0]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_a_service_that_never_loads_a_model_is_an_error(params, registry):
    set_champion(params, registry.broken)  # the weights do not load: no model, 503
    with (
        pytest.raises(RuntimeError, match=r"not ready after 3 s \(health: degraded\)"),
        serve_in_thread(params, free_port(), ready_timeout=3),
    ):
        pass
