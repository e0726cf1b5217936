"""One monitoring run: is the champion still seeing the world its test set showed it?

Reads the live window and the reference (:mod:`.sources`), runs the checks
(:mod:`.checks`), writes the report (:mod:`.render`) and, when a check fires,
POSTs ``drift_detected`` to the ``notify`` webhook. The Prefect event for
automations is the flow's to emit (``flows/monitor.py``): nothing under
``tasks/`` talks to Prefect.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from slmops.tasks.core import notify
from slmops.tasks.core.config import MonitoringConfig, NotifyEvent, Params
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.monitoring.checks import Check, compare
from slmops.tasks.monitoring.render import write_report
from slmops.tasks.monitoring.report import (
    MonitoringReport,
    ReportStatus,
    alert_payload,
    save_json,
)
from slmops.tasks.monitoring.sources import (
    LiveWindow,
    MonitoringError,
    Reference,
    load_reference,
    read_live,
)
from slmops.tasks.monitoring.statistics import (
    LabelsOf,
    bucket_counts,
    count_labels,
    histogram,
    label_table,
    single_label,
    word_counts,
)
from slmops.tasks.registry.champion_reference import champion_version

log = logging.getLogger(__name__)

__all__ = ["MonitoringError", "MonitoringReport", "run_monitoring", "send_webhook"]


def run_monitoring(
    params: Params,
    *,
    labels_of: LabelsOf = single_label,
    version: str | None = None,
    reference: Reference | None = None,
    now: datetime | None = None,
    alert: bool = True,
) -> MonitoringReport:
    """Compare the champion's recent live predictions with its test-set predictions.

    ``version`` defaults to the ``champion`` alias, ``reference`` to
    :func:`load_reference`; ``labels_of`` maps a stored label cell to the labels
    it counts as (the task type's own; default: the cell itself). Writes the
    report under ``monitoring.report_dir``; when a check fires and ``alert``,
    sends the webhook. Raises :class:`MonitoringError` when there is no
    champion or no reference.
    """
    cfg = params.monitoring
    name = params.registry.model_name
    now = (now or datetime.now(UTC)).astimezone(UTC)
    version = _version(params, version)
    if reference is None:
        reference = load_reference(params, version)
    with FeedbackStore.from_params(params) as store:
        live = read_live(
            store,
            name,
            version,
            now=now,
            window_hours=cfg.window_hours,
            limit=cfg.max_predictions,
        )
    report = _report(params, version, now, live, reference, labels_of)
    write_report(report, params.path(cfg.report_dir))
    log.info("monitoring %s version %s: %s (%s)", name, version, report.status, report.html_path)
    if report.fired and alert:
        send_webhook(params, report)
        save_json(report)  # with the alert's outcome
    return report


def send_webhook(params: Params, report: MonitoringReport) -> None:
    """POST ``drift_detected`` with :func:`alert_payload` to the notify webhook."""
    # notify.send never raises, checks notify.events and never logs the URL.
    report.webhook_sent = notify.send(params, NotifyEvent.drift_detected, alert_payload(report))


def _version(params: Params, version: str | None) -> str:
    """``version`` as a string, else the champion's; :class:`MonitoringError` if none."""
    if version is None:
        version = champion_version(params)
        if version is None:
            raise MonitoringError(
                f"{params.registry.model_name} has no champion version in the registry: "
                "nothing is served, so nothing to monitor (`slmops models` lists the versions)"
            )
    return str(version)


def _verdict(
    live: LiveWindow,
    reference: Reference,
    cfg: MonitoringConfig,
    labels_of: LabelsOf,
    version: str,
) -> tuple[ReportStatus, list[Check], str]:
    """The checks (none below ``min_predictions``), the report's status and its message."""
    n = len(live.predictions)
    if n < cfg.min_predictions:
        message = (
            f"Not enough live predictions: {n} of version {version} in the window, "
            f"{cfg.min_predictions} needed (monitoring.min_predictions). No check ran; "
            "nothing was alerted."
        )
        return "insufficient", [], message
    checks = compare(live.predictions, reference.frame, live.feedback, cfg, labels_of)
    fired = [c for c in checks if c.fired]
    message = (
        f"{len(fired)} check(s) fired: {', '.join(c.title for c in fired)}."
        if fired
        else f"No check fired on {n} live predictions."
    )
    return ("alert" if fired else "ok"), checks, message


def _report(
    params: Params,
    version: str,
    now: datetime,
    live: LiveWindow,
    reference: Reference,
    labels_of: LabelsOf,
) -> MonitoringReport:
    """The report of the live window against the reference (not yet written)."""
    cfg = params.monitoring
    preds, ref = live.predictions, reference.frame
    n = len(preds)
    status, checks, message = _verdict(live, reference, cfg, labels_of, version)
    ref_counts = count_labels(ref["cell"], labels_of)
    live_counts = count_labels(preds["cell"], labels_of)
    return MonitoringReport(
        created_at=now,
        model_name=params.registry.model_name,
        model_version=version,
        status=status,
        message=message,
        window_start=live.start,
        window_end=live.end,
        window_hours=cfg.window_hours,
        max_predictions=cfg.max_predictions,
        live_predictions=n,
        feedback_rows=len(live.feedback),
        first_prediction_at=_utc_or_none(preds["created_at"].min()) if n else None,
        last_prediction_at=_utc_or_none(preds["created_at"].max()) if n else None,
        reference_rows=len(ref),
        reference_source=reference.source,
        reference_note=reference.note,
        checks=checks,
        labels=label_table(ref_counts, live_counts, cfg.psi_epsilon) if n else [],
        confidence_histogram={
            "reference": histogram(ref["confidence"].to_numpy(float)),
            "live": histogram(preds["confidence"].to_numpy(float)) if n else [],
        },
        length_buckets={
            "reference": bucket_counts(word_counts(ref["text"]), cfg.length_buckets),
            "live": bucket_counts(word_counts(preds["text"]), cfg.length_buckets) if n else {},
        },
    )


def _utc_or_none(value: Any) -> datetime | None:
    if value is None or pd.isna(value):
        return None
    value = pd.Timestamp(value).to_pydatetime()
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
