"""tasks/monitoring/render.py: the report is one self-contained HTML page."""

from __future__ import annotations

import re

import numpy as np

from tests.tasks.monitoring.streams import (
    LIVE_ROWS,
    SPIKE,
    VERSION,
    log_stream,
    make_params,
    monitor,
    reference_frame,
    stream,
)


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
