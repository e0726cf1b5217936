"""The ``monitor`` flow and ``slmops monitor`` against a temp project: a champion in MLflow
with its evaluation's predictions, live predictions in the feedback store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from slmops.flows.monitor import monitor
from slmops.tasks.core.config import load_params
from slmops.tasks.monitoring.report import MonitoringError, run_monitoring
from tests.slmops.run_cli import cli
from tests.tasks.monitoring.test_report import (
    LIVE_ROWS,
    VERSION,
    log_stream,
    reference_frame,
    stream,
)
from tests.webhook import Webhook

NAME = "slmops-intent"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """An MLflow store (built once: it takes seconds) whose model has version 1 as champion,
    its run holding ``eval/predictions.csv`` as registration logs it (no weights needed)."""
    import mlflow

    from slmops.tasks.core.config import parse_params
    from slmops.tasks.registry.promotion import CHAMPION, client

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = parse_params({"registry": {"tracking_uri": uri}}, root / "params.yaml", root=root)
        ref = reference_frame().rename(columns={"cell": "pred"})
        ref.insert(1, "label", ref["pred"])
        (root / "eval").mkdir()
        ref.assign(correct=True).to_csv(root / "eval" / "predictions.csv", index=False)
        mc = client(params)  # configures MLflow on this store
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(root / "eval"), artifact_path="eval")
        mc.create_registered_model(NAME)
        source = f"{run.info.artifact_uri}/eval"
        mv = mc.create_model_version(NAME, source=source, run_id=run.info.run_id)
        mc.set_registered_model_alias(NAME, CHAMPION, mv.version)
        with mlflow.start_run() as bare:  # version 2: a run without evaluation files
            pass
        mc.create_model_version(NAME, source=bare.info.artifact_uri, run_id=bare.info.run_id)
    return uri


def write_project(root: Path, uri: str, model_name: str = NAME) -> Path:
    """params.yaml of a project on the shared registry; returns its path."""
    path = root / "params.yaml"
    raw = {
        "registry": {"tracking_uri": uri, "model_name": model_name},
        "monitoring": {"min_predictions": 100},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def champion_project(registry, tmp_path: Path, monkeypatch) -> Path:
    """A project (its own feedback store and reports) on the shared registry."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SLMOPS_NOTIFY_URL", raising=False)
    write_project(tmp_path, registry)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_flow_reads_the_champion_reference_alerts_and_reports(champion_project, monkeypatch):
    params = load_params(champion_project / "params.yaml")
    shifted = stream(np.random.default_rng(2), LIVE_ROWS, spike_share=0.30, words=40.0)
    log_stream(params, shifted, version="1")
    log_stream(params, stream(np.random.default_rng(3), 50), version=VERSION)  # not the champion
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        result = monitor(params_path=str(champion_project / "params.yaml"))

    assert result["version"] == "1" and result["status"] == "alert"
    assert result["live_predictions"] == LIVE_ROWS
    assert {"label_shift", "label_spike", "text_length"} <= set(result["fired"])
    assert "confidence_drop" not in result["fired"]  # same confidences as the reference
    assert result["checks"]["live_accuracy"]["status"] == "skipped"  # no feedback given
    assert len(hook.posts) == 1 and hook.posts[0]["json"]["event"] == "drift_detected"
    assert result["webhook_sent"] and result["event_id"]  # the Prefect event was emitted
    report = Path(result["report"])
    assert report.is_file() and report.parent == champion_project / "reports" / "monitoring"
    latest = json.loads((report.parent / "latest.json").read_text())
    assert latest["reference_source"].startswith(f"models:/{NAME}/1 (run ")
    assert latest["reference_note"] is None


def test_the_cli_exits_3_on_an_alert_and_0_otherwise(champion_project, monkeypatch, capsys):
    code, output = cli(monkeypatch, capsys, "monitor", "--help")
    assert code == 0 and "Exit code" in output and "--window-hours" in output

    code, output = cli(monkeypatch, capsys, "monitor")
    assert code == 0, output
    assert "Not enough live predictions: 0" in output and "report:" in output

    params = load_params(champion_project / "params.yaml")
    log_stream(params, stream(np.random.default_rng(4), 300, spike_share=0.5), version="1")
    code, output = cli(monkeypatch, capsys, "monitor", "--no-alert")
    assert code == 3, output
    assert "ALERT" in output and "FIRED label_spike" in output


def test_no_champion_fails_the_monitor_step_by_name(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_project(tmp_path, registry, model_name="never-registered")
    state = monitor(params_path=str(path), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("step 'monitor' failed: MonitoringError: ")
    assert "no champion version" in state.message


def test_a_version_without_evaluation_files_falls_back_with_a_note(champion_project):
    params = load_params(champion_project / "params.yaml")
    with pytest.raises(MonitoringError) as info:
        run_monitoring(params, version="2", alert=False)
    message = str(info.value)
    assert f"no reference predictions for {NAME} version 2: its run has no " in message
    assert "reports/eval/predictions.csv" in message and "monitoring.reference_file" in message

    local = champion_project / "reports" / "eval" / "predictions.csv"
    local.parent.mkdir(parents=True)
    reference_frame().rename(columns={"cell": "pred"}).to_csv(local, index=False)
    report = run_monitoring(params, version="2", alert=False)
    assert report.reference_source == str(local) and report.reference_rows == 3000
    assert "may be another version's" in report.reference_note
    assert "may be another version&#x27;s" in report.html_path.read_text()
