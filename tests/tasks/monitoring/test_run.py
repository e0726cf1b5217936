"""tasks/monitoring/run.py: one run from the feedback store to the report and the webhook.

A shifted stream (one label from 2% to 30%, lower confidence, longer texts, poor
feedback) fires the matching checks and POSTs the webhook once; a stream drawn
from the reference's own distribution fires nothing; too few predictions alert
nobody. (The Prefect event is the flow's: tests/flows/test_monitor.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tasks.monitoring.streams import (
    LIVE_ROWS,
    VERSION,
    give_feedback,
    log_stream,
    make_params,
    monitor,
    ner_labels_of,
    ner_stream,
    reference_frame,
    shifted_stream,
    stream,
)
from tests.webhook import Webhook

ALL_CHECKS = {"label_shift", "label_spike", "confidence_drop", "text_length", "live_accuracy"}


def test_a_shifted_stream_fires_the_matching_checks_and_alerts_once(tmp_path, monkeypatch):
    params = make_params(tmp_path)
    live = shifted_stream()
    ids = log_stream(params, live)
    give_feedback(params, ids, list(live["cell"]), confirmed=20, total=40)
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = monitor(params, reference_frame())

    fired = {c.name for c in report.fired}
    assert fired == ALL_CHECKS
    assert report.status == "alert" and report.live_predictions == LIVE_ROWS
    accuracy = next(c for c in report.checks if c.name == "live_accuracy")
    # The feedback read from the store: 20 of 40 rows confirm.
    assert accuracy.value == pytest.approx(0.5) and accuracy.details["feedback_rows"] == 40

    # One webhook POST, carrying the fired checks and the report; no Prefect event here.
    assert len(hook.posts) == 1
    body = hook.posts[0]["json"]
    assert body["event"] == "drift_detected" and body["version"] == VERSION
    assert {f["check"] for f in body["fired"]} == fired
    assert body["report"] == str(report.html_path)
    assert report.webhook_sent and report.event_id is None

    out = tmp_path / "reports" / "monitoring"
    assert report.html_path.parent == out and report.html_path.name.startswith("report-")
    latest = json.loads((out / "latest.json").read_text())
    assert latest["status"] == "alert" and set(latest["fired"]) == fired
    assert latest["webhook_sent"] is True and latest["event_id"] is None
    assert (out / "latest.html").read_text() == report.html_path.read_text()


def test_an_unshifted_stream_fires_nothing(tmp_path, monkeypatch):
    params = make_params(tmp_path)
    # Same distribution as the reference, another sample (another seed).
    live = stream(np.random.default_rng(3), LIVE_ROWS)
    ids = log_stream(params, live)
    give_feedback(params, ids, list(live["cell"]), confirmed=38, total=40)
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = monitor(params, reference_frame())
    assert report.status == "ok", [c.explanation for c in report.fired]
    assert [c.status for c in report.checks] == ["ok"] * 5
    assert hook.posts == [] and not report.webhook_sent
    shift = next(c for c in report.checks if c.name == "label_shift")
    assert shift.details["pvalue"] > 0.01


def test_alert_off_writes_the_report_and_posts_nothing(tmp_path, monkeypatch):
    params = make_params(tmp_path)
    log_stream(params, shifted_stream())
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = monitor(params, reference_frame(), alert=False)
    assert report.status == "alert" and report.fired
    assert hook.posts == [] and not report.webhook_sent and report.html_path.is_file()


def test_too_few_predictions_report_so_and_alert_nobody(tmp_path, monkeypatch):
    params = make_params(tmp_path)  # min_predictions: 200
    log_stream(params, stream(np.random.default_rng(6), 50, spike_share=0.9))
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = monitor(params, reference_frame())
    assert report.status == "insufficient" and report.checks == [] and report.fired == []
    assert "Not enough live predictions: 50" in report.message
    assert "monitoring.min_predictions" in report.message
    assert hook.posts == []
    assert "NOT ENOUGH DATA" in report.html_path.read_text()


def test_an_empty_store_is_not_an_error(tmp_path):
    report = monitor(make_params(tmp_path), reference_frame())
    assert report.status == "insufficient" and report.live_predictions == 0
    assert report.labels == [] and report.html_path.is_file()


def test_ner_label_cells_count_entity_types_through_labels_of(tmp_path):
    params = make_params(tmp_path)
    reference = ner_stream(np.random.default_rng(7), 2000, org_share=0.02)

    log_stream(params, ner_stream(np.random.default_rng(8), 600, org_share=0.02))
    calm = monitor(params, reference, labels_of=ner_labels_of)
    assert calm.status == "ok", [c.explanation for c in calm.fired]
    assert {r["label"] for r in calm.labels} == {"PER", "LOC", "ORG", "(no entity)"}

    log_stream(params, ner_stream(np.random.default_rng(9), 1200, org_share=0.9))
    surge = monitor(params, reference, labels_of=ner_labels_of)
    spike = next(c for c in surge.checks if c.name == "label_spike")
    assert spike.fired and [s["label"] for s in spike.details["spikes"]] == ["ORG"]
    assert {c.name for c in surge.fired} == {"label_shift", "label_spike"}
