"""tasks/monitoring/report.py: the report's JSON form (``latest.json``) and alert payload."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from slmops.tasks.monitoring.report import alert_payload, jsonable
from tests.tasks.monitoring.streams import (
    VERSION,
    log_stream,
    make_params,
    monitor,
    reference_frame,
    shifted_stream,
)


def test_jsonable_turns_datetimes_paths_numpy_and_nan_into_json():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = {1: [when, Path("a/b"), np.int64(3), np.float32(0.5), math.nan, (math.inf,)]}
    assert jsonable(value) == {"1": ["2026-01-02T03:04:05+00:00", "a/b", 3, 0.5, None, [None]]}
    json.dumps(jsonable(value), allow_nan=False)


def test_the_json_and_the_alert_payload_name_the_fired_checks(tmp_path):
    params = make_params(tmp_path)
    log_stream(params, shifted_stream())
    report = monitor(params, reference_frame(), alert=False)
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["fired"] == [c.name for c in report.fired] and data["status"] == "alert"
    assert all(c["fired"] == (c["status"] == "fired") for c in data["checks"])
    assert data["html_path"] == str(report.html_path)
    payload = alert_payload(report)
    assert payload["model"] == report.model_name and payload["version"] == VERSION
    assert [f["check"] for f in payload["fired"]] == data["fired"]
    assert payload["report"] == str(report.html_path)
    assert payload["window_end"] == report.window_end.isoformat()
