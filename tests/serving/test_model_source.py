"""Resolving, downloading, caching and loading registry versions; the reload holder."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import mlflow
import pytest

from slmops.serving.holder import ModelHolder
from slmops.serving.model_source import (
    MARKER,
    ModelRef,
    ModelSourceError,
    NoChampion,
    RegistrySource,
    fetch_version,
    load_champion,
)
from slmops.tasks.core.config import with_overrides
from tests.conftest import TINY_LABELS
from tests.serving.conftest import set_champion


def cache_dir(params, registry):
    return params.path(params.serve.model_cache_dir) / registry.name


def test_champion_is_downloaded_once_into_a_loadable_folder(params, registry, monkeypatch):
    loaded = load_champion(params)
    assert (loaded.name, loaded.version, loaded.labels) == (registry.name, "1", TINY_LABELS)
    assert loaded.source == f"models:/{registry.name}/1"
    assert loaded.predictor.predict(["my card has not arrived"])[0] in TINY_LABELS
    folder = cache_dir(params, registry) / "1"
    assert loaded.path == folder / "model"
    # The transformers-flavour layout, with the tokenizer copied beside the weights.
    assert (folder / "MLmodel").is_file()
    assert (folder / "components" / "tokenizer" / "tokenizer.json").is_file()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / "model" / name).is_file(), name
    marker = json.loads((folder / MARKER).read_text())
    assert marker["run_id"] == loaded.run_id and marker["version"] == "1"
    assert [p.name for p in folder.parent.iterdir()] == ["1"]  # no temporary left

    def no_download(**kwargs):
        raise AssertionError("downloaded a cached version again")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    ref = RegistrySource(params).champion()
    assert fetch_version(params, ref) == folder / "model"


def test_a_failed_download_leaves_nothing_behind(params, registry, monkeypatch):
    def half_then_fail(*, dst_path: str, **kwargs):
        (Path(dst_path) / "MLmodel").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", half_then_fail)
    ref = RegistrySource(params).champion()
    with pytest.raises(ModelSourceError, match="download failed: disk full"):
        fetch_version(params, ref)
    assert list(cache_dir(params, registry).iterdir()) == []


def test_a_cached_folder_from_another_run_is_replaced(params, registry):
    ref = RegistrySource(params).champion()
    folder = fetch_version(params, ref).parent
    marker = folder / MARKER
    # As if the registry had been rebuilt and version 1 now named another run.
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "run_id": "other"}))
    assert fetch_version(params, ref) == folder / "model"
    assert json.loads(marker.read_text())["run_id"] == ref.run_id
    assert [p.name for p in folder.parent.iterdir()] == ["1"]


def test_broken_weights_and_missing_champion_are_clear_errors(params, registry, monkeypatch):
    source = RegistrySource(params)
    run_id = source.registry.version(registry.name, registry.broken).run_id
    ref = ModelRef(registry.name, registry.broken, run_id)
    with pytest.raises(ModelSourceError, match=f"{ref.uri}: cannot load model"):
        source.load(ref)
    other = with_overrides(params, {"registry": {"model_name": "no-such-model"}})
    with pytest.raises(NoChampion, match="no-such-model has no 'champion' version yet"):
        RegistrySource(other).champion()
    # A registry server that is down is an error, not "no champion" (fail fast here).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    unreachable = with_overrides(params, {"registry": {"tracking_uri": "http://127.0.0.1:9"}})
    with pytest.raises(ModelSourceError) as info:
        RegistrySource(unreachable).champion()
    assert not isinstance(info.value, NoChampion)


def test_with_polling_off_a_failed_first_load_is_retried_until_served(params, registry):
    from slmops.tasks.registry.promotion import CHAMPION

    source = RegistrySource(params)
    source.registry.delete_alias(registry.name, CHAMPION)
    holder = ModelHolder(source, registry.name)
    stop = threading.Event()
    poller = threading.Thread(target=holder.poll, args=(stop, 0))
    poller.start()
    try:
        deadline = time.monotonic() + 30
        while holder.last_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert holder.status == "degraded" and "no 'champion'" in holder.last_error
        set_champion(params, registry.good[0])  # promoted after the service started
        while holder.current is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.current.version == "1" and holder.status == "ok"
    finally:
        stop.set()
        poller.join(timeout=10)
    assert not poller.is_alive()  # with a model served, the retry loop has ended


def test_errors_mask_a_password_in_a_quoted_uri():
    from slmops.serving.model_source import ModelSourceError, NoChampion

    for cls in (ModelSourceError, NoChampion):
        err = cls("registry unreachable: postgresql://mlflow:hunter2@db:5432/mlflow refused")
        assert "hunter2" not in str(err) and "mlflow:***@db:5432" in str(err)
