"""The ``monitor`` flow and ``slmops monitor`` against a temp project: a champion in MLflow
with its evaluation's predictions, live predictions in the feedback store; the Prefect
event the flow emits from the report when a check fires."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from slmops.flows.monitor import EVENT_NAME, announce, monitor
from slmops.tasks.core.config import load_params
from slmops.tasks.monitoring.run import run_monitoring
from slmops.tasks.monitoring.sources import MonitoringError
from tests.slmops.run_cli import cli
from tests.tasks.monitoring import streams
from tests.tasks.monitoring.streams import (
    LIVE_ROWS,
    NAME,
    VERSION,
    champion_registry,
    give_feedback,
    log_stream,
    make_params,
    reference_frame,
    shifted_stream,
    stream,
)
from tests.webhook import Webhook


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """An MLflow store (built once: it takes seconds) whose model has version 1 as champion."""
    return champion_registry(tmp_path_factory.mktemp("registry"))


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


class Recorder:
    """Stands in for the Prefect event emitter."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict, dict]] = []

    def __call__(self, event: str, resource: dict, payload: dict) -> str:
        self.events.append((event, resource, payload))
        return "event-1"


def test_the_event_carries_the_webhook_payload_and_is_recorded(tmp_path, monkeypatch):
    params = make_params(tmp_path)
    live = shifted_stream()
    ids = log_stream(params, live)
    give_feedback(params, ids, list(live["cell"]), confirmed=20, total=40)
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = streams.monitor(params, reference_frame())
    emit = Recorder()
    assert announce(report, emit=emit) == "event-1" == report.event_id

    # One Prefect event, carrying what the one webhook POST carried.
    ((event, resource, payload),) = emit.events
    assert event == EVENT_NAME == "slmops.monitoring.alert"
    assert resource["prefect.resource.id"] == f"slmops.model.{NAME}"
    assert resource["slmops.model.version"] == VERSION
    (post,) = hook.posts
    assert payload["fired"] == post["json"]["fired"] and payload["report"] == str(report.html_path)
    latest = json.loads(report.json_path.read_text())
    assert latest["webhook_sent"] is True and latest["event_id"] == "event-1"


def test_no_event_when_nothing_fired_too_few_predictions_or_alert_off(tmp_path):
    emit = Recorder()
    calm_project = make_params(tmp_path / "calm")
    log_stream(calm_project, stream(np.random.default_rng(3), LIVE_ROWS))
    calm = streams.monitor(calm_project, reference_frame())
    assert calm.status == "ok" and announce(calm, emit=emit) is None

    few_project = make_params(tmp_path / "few")  # min_predictions: 200
    log_stream(few_project, stream(np.random.default_rng(6), 50, spike_share=0.9))
    few = streams.monitor(few_project, reference_frame())
    assert few.status == "insufficient" and announce(few, emit=emit) is None

    shifted_project = make_params(tmp_path / "shifted")
    log_stream(shifted_project, shifted_stream())
    quiet = streams.monitor(shifted_project, reference_frame(), alert=False)
    assert quiet.fired and announce(quiet, alert=False, emit=emit) is None
    assert emit.events == [] and quiet.event_id is None
    assert json.loads(quiet.json_path.read_text())["event_id"] is None
