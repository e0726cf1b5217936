"""Registration names the data a model was trained on: the labeled data may move on
while a run trains (an ingestion between its split and its registration)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.core.errors import DataError

pytestmark = pytest.mark.slow


def test_a_model_trained_before_an_ingestion_registers_with_the_data_it_was_trained_on(
    tmp_path: Path, monkeypatch, git_identity
):
    from slmops.tasks.data.dataset import LabeledPaths, read_labeled, write_csv_atomic
    from slmops.tasks.data.split import data_versions
    from slmops.tasks.data.versioning import track
    from slmops.tasks.pipeline.challenger import (
        evaluate_challenger,
        register_challenger,
        train_challenger,
    )
    from slmops.tasks.pipeline.prepare import write_splits
    from slmops.tasks.registry.store import Registry
    from tests.conftest import training_project

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = training_project(tmp_path, train={"epochs": 1}, export={"enabled": False})
    monkeypatch.chdir(root)
    params = load_params(root / "params.yaml")
    write_splits(params)
    trained_on = data_versions(params)
    train_challenger(params, progress=False)
    evaluate_challenger(params)

    # An ingestion lands: one more labeled row, a new DVC version.
    paths = LabeledPaths(params)
    df = read_labeled(params)
    extra = df.head(1).assign(text="a brand new text from feedback", source="feedback")
    write_csv_atomic(pd.concat([df, extra], ignore_index=True), paths.labeled)
    track([paths.dir], root, False)
    assert data_versions(params)["labeled"] != trained_on["labeled"]

    registered = register_challenger(params)  # (was: DataError, "retrain before registering")
    tags = Registry.configured(params).version(params.registry.model_name, registered.version).tags
    assert tags["data.labeled_hash"] == trained_on["labeled"]
    assert tags["data.test_hash"] == trained_on["test"]

    # A split carved again after training: the model is not of it.
    write_splits(params)
    with pytest.raises(DataError, match="retrain before registering"):
        register_challenger(params)
