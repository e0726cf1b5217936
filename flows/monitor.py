"""Prefect flow ``monitor``: the champion's live predictions against its test-set predictions.

One step, ``monitor`` (``tasks/monitoring/``): read the live window from the
feedback store and the champion's reference predictions from the registry, run the
checks (label shift, label spike, confidence drop, text length, live accuracy),
write the HTML and JSON report under ``monitoring.report_dir``, and when a
check fires POST ``drift_detected`` to the ``notify`` webhook. The flow then
emits the Prefect event ``slmops.monitoring.alert`` (what an automation reacts
to) from the report the step returns: ``tasks/`` never talks to Prefect.
A run with too few live predictions completes and says so; no champion or no
reference fails the run naming the step (``flows/steps.py``).

Scheduled by the deployment ``monitor/scheduled`` (``flows/deployments.py``,
``monitoring.schedule_every_seconds`` or ``monitoring.schedule_cron``).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from slmops.flows.events import Emitter, emit_prefect_event
from slmops.flows.steps import load_params_step, pipeline_flow, step
from slmops.tasks.core.config import Params
from slmops.tasks.core.events import DRIFT_ALERT, model_resource
from slmops.tasks.monitoring.report import MonitoringReport, alert_payload, save_json
from slmops.tasks.monitoring.run import run_monitoring
from slmops.tasks.task_types import task_type

# Named, not __name__: a worker loads this file as module `monitor`, and the run log
# takes the project's loggers (slmops.*; flows/steps.py).
log = logging.getLogger("slmops.flows.monitor")

EVENT_NAME = DRIFT_ALERT  # an automation may start `retrain` on it (monitoring.retrain_on_drift)


def announce(
    report: MonitoringReport,
    *,
    alert: bool = True,
    emit: Emitter = emit_prefect_event,
    run: dict[str, Any] | None = None,
) -> str | None:
    """Emit :data:`EVENT_NAME` when a check fired and ``alert``, carrying what the webhook
    carried and ``run`` (the run's ``params_path`` and ``profile``: what a retrain started
    by an automation reads); its id goes into the report and its ``latest.json``. None
    when not emitted."""
    if not (alert and report.fired):
        return None
    resource = model_resource(report.model_name, str(report.model_version))
    report.event_id = emit(EVENT_NAME, resource, {**alert_payload(report), **(run or {})})
    save_json(report)
    return report.event_id


@step(name="monitor")
def monitor_task(params: Params, alert: bool) -> MonitoringReport:
    """Run the checks and write the report; POST the webhook when one fires."""
    # What a label cell counts as depends on the task type (a class, or entity spans):
    # its own function, chosen here since a flow parameter cannot carry a function.
    return run_monitoring(params, labels_of=task_type(params).observed, alert=alert)


def _summary(report: MonitoringReport) -> str:
    verdict = {"alert": "ALERT", "ok": "OK", "insufficient": "not enough live predictions"}
    lines = [
        f"# Monitoring: {report.model_name} version {report.model_version}",
        "",
        f"**{verdict[report.status]}** — {report.message}",
        "",
        f"- Live predictions: {report.live_predictions} (window: "
        + (f"last {report.window_hours:g} h" if report.window_hours is not None else "no limit")
        + f", at most {report.max_predictions}); feedback rows: {report.feedback_rows}",
        f"- Reference: {report.reference_rows} test-set predictions from {report.reference_source}",
    ]
    if report.reference_note:
        lines.append(f"- Note: {report.reference_note}")
    if report.checks:
        lines += ["", "| check | result | value | threshold | why |", "|---|---|---|---|---|"]
        for c in report.checks:
            value = "-" if c.value is None else f"{c.value:.4g}"
            result = "**FIRED**" if c.fired else c.status
            why = c.explanation.replace("|", "\\|")
            lines.append(f"| {c.title} | {result} | {value} | {c.threshold:g} | {why} |")
    lines += [
        "",
        f"- Report (HTML, opens offline): `{report.html_path}`",
        f"- Machine-readable: `{report.json_path}`",
    ]
    if report.fired:
        lines.append(
            f"- Alert: webhook {'sent' if report.webhook_sent else 'not sent'}; Prefect event "
            f"{report.event_id or 'not emitted'}"
        )
    return "\n".join(lines)


@pipeline_flow(name="monitor", log_prints=True)
def monitor(
    params_path: str = "params.yaml",
    profile: str | None = None,
    window_hours: float | None = None,
    alert: bool = True,
) -> dict[str, Any]:
    """Compare the champion's recent predictions with its test-set predictions; alert on drift.

    Args:
        params_path: the project's params file (relative: to the flow's working directory)
        profile: overrides of ``profiles.<name>`` in the params file (none: the file as it is)
        window_hours: the live window for this run instead of ``monitoring.window_hours``
        alert: false writes the report without the webhook or the Prefect event
    """
    logger = get_run_logger()
    overrides = {"monitoring": {"window_hours": window_hours}} if window_hours is not None else {}
    params = load_params_step(params_path, profile, overrides)
    report = monitor_task(params, alert=alert)
    announce(report, alert=alert, run={"params_path": params_path, "profile": profile})
    for check in report.fired:
        logger.warning("%s fired: %s", check.title, check.explanation)
    logger.info("%s; report: %s", report.message, report.html_path)
    create_markdown_artifact(
        markdown=_summary(report), key="monitoring-summary", description="Monitoring summary"
    )
    return {
        "model": report.model_name,
        "version": report.model_version,
        "status": report.status,
        "message": report.message,
        "fired": [c.name for c in report.fired],
        "checks": {c.name: {"status": c.status, "value": c.value} for c in report.checks},
        "live_predictions": report.live_predictions,
        "report": str(report.html_path),
        "json": str(report.json_path),
        "webhook_sent": report.webhook_sent,
        "event_id": report.event_id,
    }
