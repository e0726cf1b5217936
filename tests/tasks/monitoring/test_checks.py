"""tasks/monitoring/checks.py: each check on a crafted live stream against a reference.

A shifted stream (one label from 2% to 30%, lower confidence, longer texts, poor
feedback) fires every check, each saying why; a stream drawn from the
reference's own distribution fires nothing.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from slmops.tasks.core.config import ConfigError
from slmops.tasks.monitoring.checks import compare
from tests.tasks.monitoring.streams import (
    LIVE_ROWS,
    SPIKE,
    feedback_frame,
    make_params,
    reference_frame,
    shifted_stream,
    stream,
)


def test_a_shifted_stream_fires_every_check_saying_why(tmp_path):
    cfg = make_params(tmp_path).monitoring
    checks = compare(shifted_stream(), reference_frame(), feedback_frame(20, 40), cfg)
    assert [c.name for c in checks if c.fired] == [
        "label_shift",
        "label_spike",
        "confidence_drop",
        "text_length",
        "live_accuracy",
    ]
    spike = next(c for c in checks if c.name == "label_spike")
    assert [s["label"] for s in spike.details["spikes"]] == [SPIKE]
    assert re.search(rf"{SPIKE}: 3\d\.\d% of live predictions vs [12]\.\d%", spike.explanation)
    accuracy = next(c for c in checks if c.name == "live_accuracy")
    assert accuracy.value == pytest.approx(0.5) and accuracy.details["feedback_rows"] == 40
    for check in checks:
        assert check.explanation and check.threshold > 0


def test_an_unshifted_stream_fires_nothing(tmp_path):
    cfg = make_params(tmp_path).monitoring
    # Same distribution as the reference, another sample (another seed).
    live = stream(np.random.default_rng(3), LIVE_ROWS)
    checks = compare(live, reference_frame(), feedback_frame(38, 40), cfg)
    assert [c.status for c in checks] == ["ok"] * 5, [c.explanation for c in checks]
    shift = next(c for c in checks if c.name == "label_shift")
    assert shift.details["pvalue"] > 0.01


def test_live_accuracy_is_skipped_below_min_feedback(tmp_path):
    cfg = make_params(tmp_path).monitoring
    checks = compare(shifted_stream(), reference_frame(), feedback_frame(0, 3), cfg)
    accuracy = next(c for c in checks if c.name == "live_accuracy")
    assert accuracy.status == "skipped" and accuracy.value is None and not accuracy.fired
    assert "monitoring.min_feedback" in accuracy.explanation


def test_bad_config_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"monitoring\.length_buckets"):
        make_params(tmp_path, length_buckets=[10, 5])
    with pytest.raises(ConfigError, match=r"monitoring\.min_predictions"):
        make_params(tmp_path, min_predictions=0)
    with pytest.raises(ConfigError, match=r"monitoring\.window_hourz: unknown key"):
        make_params(tmp_path, window_hourz=3)
