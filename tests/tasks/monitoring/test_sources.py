"""tasks/monitoring/sources.py: the live window (only the version's predictions, within the
window, at most max_predictions) and the reference predictions (problems name the file)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.monitoring.sources import (
    MonitoringError,
    load_reference,
    read_live,
    read_reference_csv,
)
from tests.tasks.monitoring.streams import (
    NAME,
    REFERENCE_ROWS,
    VERSION,
    give_feedback,
    log_stream,
    make_params,
    monitor,
    reference_frame,
    stream,
)


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


def test_the_live_window_holds_the_feedback_on_its_predictions(tmp_path):
    params = make_params(tmp_path)
    older = stream(np.random.default_rng(11), 20)
    older_ids = log_stream(params, older)
    give_feedback(params, older_ids, list(older["cell"]), confirmed=3, total=5)
    recent_ids = log_stream(params, stream(np.random.default_rng(12), 10))
    now = datetime.now(UTC)
    with FeedbackStore.from_params(params) as store:
        window = read_live(store, NAME, VERSION, now=now, window_hours=None, limit=10)
    assert window.start is None and window.end == now
    assert list(window.predictions.columns) == ["id", "text", "cell", "confidence", "created_at"]
    assert set(window.predictions["id"]) == set(recent_ids)  # the 10 most recent
    assert window.feedback.empty  # the feedback was on older predictions
    with FeedbackStore.from_params(params) as store:
        window = read_live(store, NAME, VERSION, now=now, window_hours=1, limit=30)
    assert len(window.predictions) == 30 and window.start == now - timedelta(hours=1)
    assert sorted(window.feedback["kind"]) == ["confirmation"] * 3 + ["correction"] * 2
    assert set(window.feedback["prediction_id"]) == set(older_ids[:5])


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
