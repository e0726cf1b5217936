"""Serving formats end to end: a version exported as at promotion is served in the
configured format; a version without it falls back to torch fp32, visibly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from slmops.serving.app import create_app
from slmops.serving.model_source import ModelRef, RegistrySource, fetch_format, fetch_version
from slmops.tasks.core.config import parse_params
from slmops.tasks.model.export import FORMATS_DIR, FORMATS_FILE
from tests.conftest import TINY_LABELS
from tests.serving.conftest import auth, set_champion, wait_until_loaded
from tests.tasks.tiny_model import make_tiny_model, tiny_frames

TEXTS = [
    "my card has not arrived yet",
    "what exchange rate do you use for euros?",
    "I think someone stole my card",
    "top up failed again",
]


@pytest.fixture(scope="module")
def exported(registry, tmp_path_factory) -> str:
    """A new version of the tiny model with its formats exported, as promotion does."""
    import mlflow

    from slmops.tasks.pipeline.promote import export_version
    from slmops.tasks.registry.promotion import client
    from slmops.tasks.registry.tracking import log_model
    from slmops.tasks.task_types import task_type

    root = tmp_path_factory.mktemp("export-project")
    _, val = tiny_frames()
    (root / "data" / "test").mkdir(parents=True)
    val.to_csv(root / "data" / "test" / "test.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        raw = {
            "registry": {"tracking_uri": registry.uri, "model_name": registry.name},
            "export": {"measure": False},
        }
        params = parse_params(raw, root / "params.yaml", root=root)
        client(params)  # configures MLflow on this store
        model_dir = make_tiny_model(root / "tiny", labels=TINY_LABELS)
        task = task_type(params)
        with mlflow.start_run():
            info = log_model(model_dir, input_example=["my card has not arrived"], task=task)
        version = str(mlflow.register_model(info.model_uri, registry.name).version)
        export_version(params, version, task)
    return version


def served(client: TestClient) -> tuple[dict, dict]:
    wait_until_loaded(client)
    return client.get("/model").json(), client.get("/health").json()


def confidences(client: TestClient) -> np.ndarray:
    response = client.post("/predict", json={"texts": TEXTS})
    assert response.status_code == 200, response.text
    return np.array([p["confidence"] for p in response.json()["predictions"]])


def test_the_service_serves_onnx_end_to_end(make_params, registry, exported):
    params = make_params(format="onnx")
    with TestClient(create_app(params)) as c:  # champion: version 1, never exported
        model, health = served(c)
        assert (model["format"], model["requested_format"]) == ("torch", "onnx")
        assert "no serving formats were exported" in model["format_warning"]
        assert health["model_format"] == "torch" and health["format_warning"]
        torch_answers = confidences(c)

        set_champion(params, exported)
        assert c.post("/admin/reload", headers=auth()).json()["version"] == exported
        model, health = served(c)
        assert (model["version"], model["format"], model["format_warning"]) == (
            exported,
            "onnx",
            None,
        )
        assert health["model_format"] == "onnx" and health["format_warning"] is None
        # The same tiny model (seeded) in ONNX Runtime: the same answers.
        np.testing.assert_allclose(confidences(c), torch_answers, atol=1e-4)
    cached = params.path(params.serve.model_cache_dir) / registry.name / exported / FORMATS_DIR
    assert (cached / "onnx" / "model.onnx").is_file()
    assert not (cached / "onnx-int8").exists()  # only the served format is downloaded


def test_auto_serves_the_format_chosen_at_export(make_params, registry, exported):
    params = make_params()  # serve.format: auto
    set_champion(params, exported)
    with TestClient(create_app(params)) as c:
        model, _ = served(c)
    cached = params.path(params.serve.model_cache_dir) / registry.name / exported / FORMATS_DIR
    manifest = json.loads((cached / FORMATS_FILE).read_text())
    assert model["requested_format"] == "auto"
    assert model["format"] == manifest["chosen"]
    assert model["format_warning"] is None


def test_torch_formats_need_no_files(params, make_params, registry):
    source = RegistrySource(make_params(format="torch-int8"))
    loaded = source.load(source.champion())
    assert (loaded.format, loaded.format_warning) == ("torch-int8", None)
    assert loaded.predictor.predict(TEXTS[:1])[0] in TINY_LABELS


def test_a_missing_format_falls_back_to_torch_with_a_warning(
    make_params, registry, exported, caplog, monkeypatch
):
    params = make_params()
    source = RegistrySource(params)
    ref = _ref(source, registry, exported)
    folder = fetch_version(params, ref, source.registry)
    assert fetch_format(params, ref, folder, "onnx-int8")["format"] == "onnx-int8"
    assert fetch_format(params, ref, folder, "torch-bf16")["format"] == "torch-bf16"
    # The registry is unreachable now: the cached manifest is used, and it lacks onnx.
    manifest_path = folder.parent / FORMATS_DIR / FORMATS_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["formats"]["onnx"]
    manifest_path.write_text(json.dumps(manifest))

    def unreachable(*args, **kwargs):
        raise OSError("registry down")

    monkeypatch.setattr("slmops.serving.model_source._download_run_artifact", unreachable)
    with caplog.at_level("WARNING", logger="serving.model_source"):
        chosen = fetch_format(params, ref, folder, "onnx")
    assert chosen == {"format": "torch", "onnx_path": None, "warning": chosen["warning"]}
    assert "format onnx was not exported" in chosen["warning"]
    assert "serving torch fp32 instead of onnx" in caplog.text
    # Without any manifest at all, even `auto` says so.
    manifest_path.unlink()
    chosen = fetch_format(params, ref, folder, "auto")
    assert chosen["format"] == "torch"
    assert "no serving formats were exported for it (OSError: registry down)" in chosen["warning"]


@pytest.mark.parametrize("relative", ["../../../outside.onnx", "/etc/passwd", "onnx/../../x"])
def test_a_manifest_path_outside_formats_is_refused(
    make_params, registry, exported, monkeypatch, tmp_path, relative
):
    params = make_params()
    source = RegistrySource(params)
    ref = _ref(source, registry, exported)
    folder = fetch_version(params, ref, source.registry)
    fetch_format(params, ref, folder, "onnx")  # the manifest, cached
    manifest_path = folder.parent / FORMATS_DIR / FORMATS_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["formats"]["onnx"]["file"] = relative
    manifest_path.write_text(json.dumps(manifest))
    fetched = []

    def download(params, run_id, path, dest):  # the registry serves the edited manifest
        fetched.append(path)
        if path.endswith(FORMATS_FILE):
            return
        raise AssertionError(f"downloaded {path} to {dest}")

    monkeypatch.setattr("slmops.serving.model_source._download_run_artifact", download)
    chosen = fetch_format(params, ref, folder, "onnx")
    assert chosen["format"] == "torch" and chosen["onnx_path"] is None
    assert f"file {relative!r} is outside formats/" in chosen["warning"]
    assert fetched == [f"{FORMATS_DIR}/{FORMATS_FILE}"]


def test_an_unloadable_onnx_file_falls_back_to_torch(make_params, registry, exported):
    source = RegistrySource(make_params(format="onnx-int8"))
    loaded = source.load(_ref(source, registry, exported))
    assert loaded.format == "onnx-int8"
    onnx_file = loaded.path.parent / FORMATS_DIR / "onnx-int8" / "model.onnx"
    onnx_file.write_bytes(b"not an onnx graph")  # the cached copy is reused, corrupt
    loaded = source.load(_ref(source, registry, exported))
    assert loaded.format == "torch"
    assert "format onnx-int8 failed to load" in loaded.format_warning
    assert loaded.predictor.predict(TEXTS[:1])[0] in TINY_LABELS


def _ref(source: RegistrySource, registry, version: str) -> ModelRef:
    mv = source.registry.version(registry.name, version)
    return ModelRef(registry.name, version, mv.run_id)
