"""The registry adapter on a real (embedded) store: plain values in and out, absence as
None, a failing store as an error."""

from pathlib import Path

import mlflow
import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.registry.store import ModelVersion, Registry, RegistryError

NAME = "store-test"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch) -> tuple[Registry, str]:
    """A registry holding version 1 of NAME, made from a run with one artifact."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params({}, tmp_path / "params.yaml", root=tmp_path)
    registry = Registry.configured(params)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text("{}")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "eval"), artifact_path="eval")
    registry.client.create_registered_model(NAME)
    registry.client.create_model_version(
        NAME, source=f"runs:/{run.info.run_id}/eval", run_id=run.info.run_id, tags={"a": "1"}
    )
    return registry, run.info.run_id


def test_versions_aliases_and_tags_are_plain_values(registry):
    registry, run_id = registry
    v1 = registry.version(NAME, "1")
    assert isinstance(v1, ModelVersion)
    assert (v1.name, v1.version, v1.run_id, v1.tags) == (NAME, "1", run_id, {"a": "1"})
    assert v1.uri == f"models:/{NAME}/1" and v1.created_ms > 0
    assert registry.version(NAME, "2") is None
    assert registry.alias(NAME, "champion") is None
    assert registry.version_by_alias(NAME, "champion") is None
    assert registry.version_by_alias("no-such-model", "champion") is None
    assert registry.aliases(NAME) == {} and registry.aliases("no-such-model") is None

    registry.set_alias(NAME, "champion", "1")
    registry.set_tags(NAME, "1", {"b": "2", "c": "3"})
    assert registry.alias(NAME, "champion") == "1"
    assert registry.version_by_alias(NAME, "champion").tags == {"a": "1", "b": "2", "c": "3"}
    assert registry.aliases(NAME) == {"champion": "1"}
    assert [v.version for v in registry.versions(NAME)] == ["1"]
    registry.delete_alias(NAME, "champion")
    assert registry.alias(NAME, "champion") is None


def test_run_artifacts_go_both_ways(registry, tmp_path):
    registry, run_id = registry
    (tmp_path / "formats").mkdir()
    (tmp_path / "formats" / "formats.json").write_text('{"chosen": "onnx"}')
    registry.log_artifacts(run_id, tmp_path / "formats", "formats")
    registry.log_metric(run_id, "live_accuracy", 0.5)
    local = registry.download_run_artifacts(run_id, "formats/formats.json", tmp_path / "dl")
    assert local.read_text() == '{"chosen": "onnx"}'
    folder = registry.download_version(NAME, "1", tmp_path / "version")
    assert (folder / "report.json").is_file()
    history = registry.client.get_metric_history(run_id, "live_accuracy")
    assert [m.value for m in history] == [0.5]


def test_a_failing_store_is_an_error_not_an_absence(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(RegistryError):
        Registry("http://127.0.0.1:9").version_by_alias(NAME, "champion")
