"""The monitoring report: what one run found, as ``latest.json`` and the alert carry it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slmops.tasks.data.dataset import write_json_atomic
from slmops.tasks.monitoring.checks import Check

ReportStatus = Literal["alert", "ok", "insufficient"]


@dataclass
class MonitoringReport:
    """What one monitoring run found, and where it wrote it."""

    created_at: datetime
    model_name: str
    model_version: str
    status: ReportStatus
    message: str
    window_start: datetime | None
    window_end: datetime
    window_hours: float | None
    max_predictions: int
    live_predictions: int
    feedback_rows: int
    first_prediction_at: datetime | None
    last_prediction_at: datetime | None
    reference_rows: int
    reference_source: str
    reference_note: str | None
    checks: list[Check]
    labels: list[dict[str, Any]]
    confidence_histogram: dict[str, list[float]]
    length_buckets: dict[str, dict[str, int]]
    html_path: Path | None = None
    json_path: Path | None = None
    webhook_sent: bool = False
    event_id: str | None = None

    @property
    def fired(self) -> list[Check]:
        """The checks that fired."""
        return [c for c in self.checks if c.fired]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``latest.json`` holds."""
        out = asdict(self)
        out["checks"] = [asdict(c) | {"fired": c.fired} for c in self.checks]
        out["fired"] = [c.name for c in self.fired]
        for key in ("html_path", "json_path"):
            out[key] = str(out[key]) if out[key] is not None else None
        return jsonable(out)


def jsonable(value: Any) -> Any:
    """``value`` with datetimes, paths and numpy scalars as JSON types; NaN and inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_json(report: MonitoringReport) -> None:
    """(Re)write ``report.json_path`` (set when the report was written), e.g. after an
    alert went out, so that ``latest.json`` records its outcome."""
    if report.json_path is None:
        raise ValueError("the report has not been written yet (no json_path)")
    write_json_atomic(report.to_dict(), report.json_path)


def alert_payload(report: MonitoringReport) -> dict[str, Any]:
    """What the webhook and the Prefect event carry: the model, the window, the fired checks."""
    return jsonable(
        {
            "model": report.model_name,
            "version": report.model_version,
            "window_start": report.window_start,
            "window_end": report.window_end,
            "live_predictions": report.live_predictions,
            "fired": [
                {
                    "check": c.name,
                    "value": c.value,
                    "threshold": c.threshold,
                    "explanation": c.explanation,
                }
                for c in report.fired
            ],
            "report": str(report.html_path) if report.html_path else None,
        }
    )
