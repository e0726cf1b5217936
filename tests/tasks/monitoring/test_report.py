"""tasks/monitoring/report.py: drift checks on crafted live streams against a reference.

A shifted stream (one label from 2% to 30%, lower confidence, longer texts, poor
feedback) fires the matching checks and alerts once; a stream drawn from the
reference's own distribution fires nothing; too few predictions alert nobody.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from slmops.tasks.core.config import ConfigError, parse_params
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction
from slmops.tasks.monitoring.report import (
    EVENT_NAME,
    MonitoringError,
    Reference,
    bucket_counts,
    chi_square_labels,
    count_labels,
    load_reference,
    psi,
    read_reference_csv,
    run_monitoring,
)
from tests.webhook import Webhook

NAME = "slmops-intent"
VERSION = "4"
SPIKE = "compromised_card"
OTHERS = [f"intent_{i}" for i in range(9)]
LABELS = [SPIKE, *OTHERS]
REFERENCE_ROWS = 3000
LIVE_ROWS = 800


def label_probs(spike_share: float) -> np.ndarray:
    return np.array([spike_share] + [(1 - spike_share) / len(OTHERS)] * len(OTHERS))


def stream(
    rng: np.random.Generator,
    n: int,
    *,
    spike_share: float = 0.02,
    confidence: tuple[float, float] = (9.0, 1.2),
    words: float = 11.0,
) -> pd.DataFrame:
    """``n`` predictions: label, confidence (beta), text of Poisson(words) + 1 words."""
    labels = rng.choice(LABELS, size=n, p=label_probs(spike_share))
    conf = rng.beta(*confidence, size=n)
    lengths = rng.poisson(words, size=n) + 1
    texts = [" ".join(["word"] * int(k)) for k in lengths]
    return pd.DataFrame({"text": texts, "cell": labels, "confidence": conf})


def reference_frame(seed: int = 1) -> pd.DataFrame:
    return stream(np.random.default_rng(seed), REFERENCE_ROWS)


def make_params(tmp_path, **monitoring):
    return parse_params(
        {"registry": {"model_name": NAME}, "monitoring": monitoring},
        tmp_path / "params.yaml",
        root=tmp_path,
    )


def log_stream(params, live: pd.DataFrame, *, version: str = VERSION) -> list[str]:
    """Write the stream to the project's feedback store as served predictions; their ids."""
    rows = [
        NewPrediction(
            text=r.text,
            label=r.cell,
            confidence=float(r.confidence),
            top_k=[{"label": r.cell, "score": float(r.confidence)}],
            model_name=NAME,
            model_version=version,
        )
        for r in live.itertuples()
    ]
    with FeedbackStore.from_params(params) as store:
        return store.log_predictions(rows)


def give_feedback(params, ids: list[str], cells: list[str], confirmed: int, total: int) -> None:
    """Feedback on the first ``total`` predictions: ``confirmed`` confirm, the rest correct."""
    with FeedbackStore.from_params(params) as store:
        for i in range(total):
            other = OTHERS[0] if cells[i] != OTHERS[0] else OTHERS[1]
            store.add_feedback(ids[i], cells[i] if i < confirmed else other, LABELS, "rev")


class Recorder:
    """Stands in for the Prefect event emitter."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict, dict]] = []

    def __call__(self, event: str, resource: dict, payload: dict) -> str:
        self.events.append((event, resource, payload))
        return "event-1"


def monitor(params, reference: pd.DataFrame, emit: Recorder | None = None, **kwargs):
    return run_monitoring(
        params,
        version=VERSION,
        reference=Reference(reference, "crafted reference"),
        emit=emit or Recorder(),
        **kwargs,
    )


def test_a_shifted_stream_fires_the_matching_checks_and_alerts_once(tmp_path, monkeypatch):
    params = make_params(tmp_path)
    live = stream(
        np.random.default_rng(2), LIVE_ROWS, spike_share=0.30, confidence=(3.0, 2.0), words=40.0
    )
    ids = log_stream(params, live)
    give_feedback(params, ids, list(live["cell"]), confirmed=20, total=40)
    emit = Recorder()
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = monitor(params, reference_frame(), emit)

    fired = {c.name for c in report.fired}
    assert fired == {
        "label_shift",
        "label_spike",
        "confidence_drop",
        "text_length",
        "live_accuracy",
    }
    assert report.status == "alert" and report.live_predictions == LIVE_ROWS
    spike = next(c for c in report.checks if c.name == "label_spike")
    assert [s["label"] for s in spike.details["spikes"]] == [SPIKE]
    assert re.search(rf"{SPIKE}: 3\d\.\d% of live predictions vs [12]\.\d%", spike.explanation)
    accuracy = next(c for c in report.checks if c.name == "live_accuracy")
    assert accuracy.value == pytest.approx(0.5) and accuracy.details["feedback_rows"] == 40
    for check in report.checks:
        assert check.explanation and check.threshold > 0

    # One webhook POST, carrying the fired checks and the report; one Prefect event.
    assert len(hook.posts) == 1
    body = hook.posts[0]["json"]
    assert body["event"] == "drift_detected" and body["version"] == VERSION
    assert {f["check"] for f in body["fired"]} == fired
    assert body["report"] == str(report.html_path)
    assert report.webhook_sent
    ((event, resource, payload),) = emit.events
    assert event == EVENT_NAME == "slmops.monitoring.alert"
    assert resource["prefect.resource.id"] == f"slmops.model.{NAME}"
    assert payload["fired"] == body["fired"]

    out = tmp_path / "reports" / "monitoring"
    assert report.html_path.parent == out and report.html_path.name.startswith("report-")
    latest = json.loads((out / "latest.json").read_text())
    assert latest["status"] == "alert" and set(latest["fired"]) == fired
    assert latest["webhook_sent"] is True and latest["event_id"] == "event-1"
    assert (out / "latest.html").read_text() == report.html_path.read_text()


def test_an_unshifted_stream_fires_nothing(tmp_path, monkeypatch):
    params = make_params(tmp_path)
    # Same distribution as the reference, another sample (another seed).
    live = stream(np.random.default_rng(3), LIVE_ROWS)
    ids = log_stream(params, live)
    give_feedback(params, ids, list(live["cell"]), confirmed=38, total=40)
    emit = Recorder()
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = monitor(params, reference_frame(), emit)
    assert report.status == "ok", [c.explanation for c in report.fired]
    assert [c.status for c in report.checks] == ["ok"] * 5
    assert hook.posts == [] and emit.events == [] and not report.webhook_sent
    shift = next(c for c in report.checks if c.name == "label_shift")
    assert shift.details["pvalue"] > 0.01


def test_only_the_champion_version_within_the_window_counts(tmp_path):
    params = make_params(tmp_path, window_hours=1, min_predictions=100)
    log_stream(params, stream(np.random.default_rng(4), 300), version="3")  # an older version
    report = monitor(params, reference_frame())
    assert report.status == "insufficient" and report.live_predictions == 0
    log_stream(params, stream(np.random.default_rng(5), 150))
    later = monitor(params, reference_frame(), now=datetime.now(UTC) + timedelta(hours=2))
    assert later.live_predictions == 0  # all older than the 1-hour window by then
    capped = monitor(
        make_params(tmp_path, max_predictions=120, min_predictions=100), reference_frame()
    )
    assert capped.live_predictions == 120 and capped.status == "ok"


def test_too_few_predictions_report_so_and_alert_nobody(tmp_path, monkeypatch):
    params = make_params(tmp_path)  # min_predictions: 200
    log_stream(params, stream(np.random.default_rng(6), 50, spike_share=0.9))
    emit = Recorder()
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        report = monitor(params, reference_frame(), emit)
    assert report.status == "insufficient" and report.checks == [] and report.fired == []
    assert "Not enough live predictions: 50" in report.message
    assert "monitoring.min_predictions" in report.message
    assert hook.posts == [] and emit.events == []
    assert "NOT ENOUGH DATA" in report.html_path.read_text()


def test_an_empty_store_is_not_an_error(tmp_path):
    report = monitor(make_params(tmp_path), reference_frame())
    assert report.status == "insufficient" and report.live_predictions == 0
    assert report.labels == [] and report.html_path.is_file()


def ner_stream(rng: np.random.Generator, n: int, org_share: float) -> pd.DataFrame:
    """NER label cells: span lists; ORG entities in ``org_share`` of the texts."""
    cells = []
    for _ in range(n):
        spans = []
        if rng.random() < 0.5:
            spans.append([0, 4, "PER"])
        if rng.random() < 0.3:
            spans.append([10, 15, "LOC"])
        if rng.random() < org_share:
            spans.append([20, 25, "ORG"])
        cells.append(json.dumps(spans))
    return pd.DataFrame(
        {"text": ["Anna went to Paris to see ACME"] * n, "cell": cells, "confidence": 0.9}
    )


def ner_labels_of(cell: str) -> list[str]:
    return [kind for _, _, kind in json.loads(cell)] or ["(no entity)"]


def test_ner_label_cells_count_entity_types_through_labels_of(tmp_path):
    params = make_params(tmp_path)
    reference = ner_stream(np.random.default_rng(7), 2000, org_share=0.02)
    counts = count_labels(['[[0,4,"PER"],[5,9,"PER"]]', "[]", "not json"], ner_labels_of)
    assert counts == {"PER": 2, "(no entity)": 1, "(unreadable)": 1}

    log_stream(params, ner_stream(np.random.default_rng(8), 600, org_share=0.02))
    calm = monitor(params, reference, labels_of=ner_labels_of)
    assert calm.status == "ok", [c.explanation for c in calm.fired]
    assert {r["label"] for r in calm.labels} == {"PER", "LOC", "ORG", "(no entity)"}

    log_stream(params, ner_stream(np.random.default_rng(9), 1200, org_share=0.9))
    surge = monitor(params, reference, labels_of=ner_labels_of)
    spike = next(c for c in surge.checks if c.name == "label_spike")
    assert spike.fired and [s["label"] for s in spike.details["spikes"]] == ["ORG"]
    assert {c.name for c in surge.fired} == {"label_shift", "label_spike"}


def test_the_report_is_self_contained_html(tmp_path):
    params = make_params(tmp_path)
    live = stream(np.random.default_rng(10), LIVE_ROWS, spike_share=0.30)
    log_stream(params, live.assign(text=live["text"] + " see https://evil.example/x"))
    report = monitor(params, reference_frame(), alert=False)
    page = report.html_path.read_text()
    assert not re.search(r"https?://", page)  # no external resource, no user text
    assert not re.search(r"<(script|link)\b", page)
    assert page.count("<svg") == 2  # confidence and length charts, inline
    for text in ("Label distribution shift", "Label share spike", "Confidence drop"):
        assert text in page
    assert "How to read this report" in page and "badge fired" in page
    assert "last 24 h" in page and f"version {VERSION}" in page
    assert SPIKE in page and "class='spike'" in page


def test_statistics_on_known_values():
    assert psi({"a": 50, "b": 50}, {"a": 50, "b": 50}) == 0.0
    # (0.9 - 0.5) ln(0.9/0.5) + (0.1 - 0.5) ln(0.1/0.5)
    assert psi({"a": 1, "b": 1}, {"a": 9, "b": 1}) == pytest.approx(0.8789, abs=1e-4)
    assert psi({"a": 10}, {"b": 10}, epsilon=1e-4) > 10  # disjoint: large, finite
    assert bucket_counts(np.array([1, 5, 6, 10, 11, 99]), [5, 10]) == {
        "<=5": 2,
        "6-10": 2,
        ">10": 2,
    }
    same = chi_square_labels({"a": 500, "b": 500}, {"a": 100, "b": 100})
    assert same["pvalue"] == pytest.approx(1.0) and same["method"] == "asymptotic"
    sparse = chi_square_labels({k: 40 for k in "abcdefghij"}, {k: 3 for k in "abcdefghij"})
    assert sparse["method"] == "monte-carlo" and sparse["pvalue"] > 0.5


def test_reference_problems_name_the_file(tmp_path):
    bad = tmp_path / "preds.csv"
    bad.write_text("text,label\nhello,a\n")
    with pytest.raises(MonitoringError, match=r"preds\.csv: .*lack the column\(s\) pred, conf"):
        read_reference_csv(bad)
    bad.write_text("text,pred,confidence\nhello,a,0.5\nhi,b,high\n")
    with pytest.raises(MonitoringError, match=r"preds\.csv: line 3: confidence 'high'"):
        read_reference_csv(bad)
    params = make_params(tmp_path, reference_file="missing.csv")
    with pytest.raises(MonitoringError, match=r"missing\.csv: reference predictions not found"):
        load_reference(params, VERSION)
    good = tmp_path / "good.csv"
    reference_frame().rename(columns={"cell": "pred"}).to_csv(good, index=False)
    ref = load_reference(make_params(tmp_path, reference_file="good.csv"), VERSION)
    assert len(ref.frame) == REFERENCE_ROWS and "monitoring.reference_file" in ref.source


def test_bad_config_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"monitoring\.length_buckets"):
        make_params(tmp_path, length_buckets=[10, 5])
    with pytest.raises(ConfigError, match=r"monitoring\.min_predictions"):
        make_params(tmp_path, min_predictions=0)
    with pytest.raises(ConfigError, match=r"monitoring\.window_hourz: unknown key"):
        make_params(tmp_path, window_hourz=3)
