"""A throwaway MLflow registry with three versions of a tiny model, built once per session.

Versions 1 and 2 are the same tiny BERT logged twice (the transformers flavour,
as ``slmops register`` logs it); version 3's weights are overwritten with junk
in the artifact store, the way a corrupted upload would look. Each test gets
its own project root (feedback database, model cache) with the champion back
on version 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from fastapi.testclient import TestClient

from slmops.tasks.core.config import Params, parse_params
from slmops.tasks.task_types import task_type
from tests.conftest import TINY_LABELS
from tests.tasks.tiny_model import make_tiny_model

TOKEN = "test-token-0123456789"
NAME = "slmops-intent"
# The services under test bind loopback by default, so they answer only Host headers
# that name it (serve.allowed_hosts); TestClient's own default, "testserver", is not one.
LOOPBACK_URL = "http://127.0.0.1"


@pytest.fixture(autouse=True)
def _loopback_test_client(monkeypatch):
    """Every TestClient here talks to ``http://127.0.0.1`` unless a test says otherwise."""
    init = TestClient.__init__

    def loopback_init(self, app, base_url: str = LOOPBACK_URL, *args, **kwargs) -> None:
        init(self, app, base_url, *args, **kwargs)

    monkeypatch.setattr(TestClient, "__init__", loopback_init)


@dataclass(frozen=True)
class Registry:
    """Where the session's registry is and which version is which."""

    uri: str
    name: str
    good: tuple[str, str]
    broken: str


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[Registry]:
    """Register versions 1 and 2 (working) and 3 (broken weights) of a tiny model."""
    import mlflow

    from slmops.tasks.registry.promotion import CHAMPION, client
    from slmops.tasks.registry.tracking import log_model

    task = task_type("sequence_classification")
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = parse_params({}, root / "params.yaml", root=root)
        model_dir = make_tiny_model(root / "tiny", labels=TINY_LABELS)
        mc = client(params)  # configures MLflow on this store
        versions = []
        for _ in range(3):
            with mlflow.start_run():
                info = log_model(model_dir, input_example=["my card has not arrived"], task=task)
            versions.append(str(mlflow.register_model(info.model_uri, NAME).version))
        broken = mlflow.get_logged_model(info.model_id).artifact_location
        weights = Path(unquote(urlparse(broken).path)) / "model" / "model.safetensors"
        weights.write_bytes(b"not a safetensors file")
        mc.set_registered_model_alias(NAME, CHAMPION, versions[0])
        uri = f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"
        assert (root / "mlflow" / "mlflow.db").is_file()
        yield Registry(uri, NAME, (versions[0], versions[1]), versions[2])


def set_champion(params: Params, version: str) -> None:
    """Move the champion alias (what `slmops promote` does, without the gate)."""
    from mlflow import MlflowClient

    from slmops.tasks.registry.promotion import CHAMPION
    from slmops.tasks.registry.tracking import tracking_uri

    uri = tracking_uri(params)
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        params.registry.model_name, CHAMPION, version
    )


@pytest.fixture
def decoy_tracking_uri(tmp_path) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at an empty store while a test runs.

    The service must reach the registry through the params alone; code that
    leaned on the global URI (left behind by the session fixture) would pass
    here and fail in production.
    """
    import mlflow

    before = mlflow.get_tracking_uri()
    decoy = tmp_path / "decoy.db"
    mlflow.set_tracking_uri(f"sqlite:///{decoy}")
    yield
    mlflow.set_tracking_uri(before)
    assert not decoy.exists(), "something reached MLflow through its process-wide URI"


@pytest.fixture
def make_params(registry, tmp_path, monkeypatch, decoy_tracking_uri):
    """Params for a project in ``tmp_path`` on the session registry; champion reset to 1."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SLMOPS_API_TOKEN", TOKEN)

    def make(**serve) -> Params:
        raw = {
            "registry": {"tracking_uri": registry.uri, "model_name": registry.name},
            "serve": {"poll_seconds": 0, **serve},
        }
        return parse_params(raw, tmp_path / "params.yaml", root=tmp_path)

    set_champion(make(), registry.good[0])
    return make


@pytest.fixture
def params(make_params) -> Params:
    """Default serving params on the session registry (no polling)."""
    return make_params()


def wait_until_loaded(client: TestClient, timeout: float = 60.0) -> dict:
    """Poll /health until a model is served; return the health body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/health")
        if response.status_code == 200:
            return response.json()
        time.sleep(0.05)
    raise AssertionError(f"no model loaded within {timeout} s: {response.json()}")


def auth(token: str = TOKEN) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}
