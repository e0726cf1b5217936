"""tasks/registry/champion_reference.py: the champion's version and its test-set predictions,
fetched from MLflow for monitoring."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from slmops.tasks.core.config import parse_params
from slmops.tasks.registry import champion_reference
from slmops.tasks.registry.champion_reference import (
    REFERENCE_ARTIFACT,
    ReferenceUnavailable,
    champion_version,
    download_reference,
)
from tests.tasks.monitoring.streams import NAME, REFERENCE_ROWS, champion_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """An MLflow store whose model has version 1 (with its predictions) as champion."""
    return champion_registry(tmp_path_factory.mktemp("registry"))


def params_on(registry: str, tmp_path, model_name: str = NAME):
    raw = {"registry": {"tracking_uri": registry, "model_name": model_name}}
    return parse_params(raw, tmp_path / "params.yaml", root=tmp_path)


def test_the_champion_and_its_predictions_are_fetched(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = params_on(registry, tmp_path)
    assert champion_version(params) == "1"
    artifact = download_reference(params, "1", tmp_path)
    assert REFERENCE_ARTIFACT == "eval/predictions.csv"
    assert artifact.path.is_relative_to(tmp_path) and artifact.path.name == "predictions.csv"
    assert len(pd.read_csv(artifact.path)) == REFERENCE_ROWS
    assert artifact.source == f"models:/{NAME}/1 (run {artifact.run_id}, eval/predictions.csv)"


def test_no_champion_is_none_and_a_missing_file_says_why(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert champion_version(params_on(registry, tmp_path, "never-registered")) is None
    params = params_on(registry, tmp_path)
    with pytest.raises(ReferenceUnavailable) as info:
        download_reference(params, "2", tmp_path)  # a run without evaluation files
    assert str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ReferenceUnavailable):
        download_reference(params, "99", tmp_path)  # no such version


def test_the_reason_is_one_line_without_the_password(tmp_path, monkeypatch):
    class Unreachable:
        def get_model_version(self, name, version):
            raise MlflowException("cannot reach http://bob:s3cret@mlflow.internal:5000/\nretry")

    monkeypatch.setattr(champion_reference, "client", lambda params: Unreachable())
    with pytest.raises(ReferenceUnavailable) as info:
        download_reference(params_on("sqlite:///unused.db", tmp_path), "1", tmp_path)
    assert str(info.value) == "cannot reach http://bob:***@mlflow.internal:5000/"
