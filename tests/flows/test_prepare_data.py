"""The prepare-data flow end to end on a tiny project (Prefect's ephemeral API)."""

import pandas as pd
import pytest

from tests.conftest import copy_fixture, dvc_project

pytestmark = pytest.mark.slow


def test_flow_imports_pending_exports_validates_and_splits(tiny_project, monkeypatch):
    from slmops.flows.prepare_data import prepare_data
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import LabeledPaths

    dvc_project(tiny_project)
    params = load_params(tiny_project / "params.yaml")
    pending = params.path(params.data.pending_dir)
    copy_fixture("label_studio/export_full.json", pending)
    before = len(pd.read_csv(LabeledPaths(params).labeled))

    monkeypatch.chdir(tiny_project)
    result = prepare_data(params_path=str(tiny_project / "params.yaml"))

    assert result["imported"] == ["data/imports/done/export_full.json"]
    assert not list(pending.glob("*.json"))  # moved to done/
    assert (params.path(params.data.imported_dir) / "export_full.json").exists()
    after = pd.read_csv(LabeledPaths(params).labeled)
    assert len(after) > before
    assert result["train_rows"] + result["val_rows"] == len(after)
    assert (tiny_project / "data" / "labeled.dvc").exists()  # a DVC version was recorded
