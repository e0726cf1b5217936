"""Prefect flow ``ingest_feedback``: corrections from the service → labeled data → retrain.

When ``label_studio.url`` is set (and ``label_studio.pull_on_ingest``), first pulls the
Label Studio project's new annotations into the labeled data (``slmops review pull``);
a server that cannot be reached, or refuses, is a warning and the feedback is still
ingested. Then reads the feedback after the watermark, merges it into the labeled data as a
new DVC version (gate, conflicts, provenance; see ``tasks/feedback/ingest.py``),
records the champion's live accuracy, deletes the predictions older than
``feedback.retention_days`` that never got feedback, and, when a threshold is crossed,
emits the Prefect event ``slmops.feedback.retrain-due`` (``flows/events.py``): on a
server set up with ``make deploy`` the automation of the ``retrain`` deployment starts
the run; without one (ephemeral mode) ``retrain`` runs here as a subflow.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.events.schemas.events import Resource
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, State

from slmops.flows.events import emit_prefect_event
from slmops.flows.parameters import Trigger
from slmops.flows.retrain import retrain
from slmops.flows.steps import load_params_step, pipeline_flow, step
from slmops.tasks.core.config import load_params
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.events import RETRAIN_DUE, model_resource
from slmops.tasks.feedback.ingest import (
    RETRAIN_MARK,
    IngestResult,
    labels_since_retrain,
    retrain_reason,
    watermark,
)
from slmops.tasks.feedback.retention import RetentionResult, apply_retention
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.labels.label_studio import LabelStudioError
from slmops.tasks.pipeline.prepare import ingest_feedback
from slmops.tasks.pipeline.review import pull as pull_label_studio
from slmops.tasks.registry.tracking import record_live_accuracy


@step(name="pull-label-studio")
def label_studio_task(params) -> dict[str, Any]:
    """Pull the Label Studio project's new annotations (a new DVC version when any).
    A server that cannot be reached or refuses, or labels the import refuses, are a
    warning: the feedback ingestion that follows does not depend on them."""
    logger = get_run_logger()
    try:
        r = pull_label_studio(params)
    except (LabelStudioError, DataError) as exc:
        logger.warning("Label Studio pull skipped: %s", exc)
        return {"error": str(exc)}
    s = r.summary
    logger.info(
        "Label Studio project %s at %s: %d task(s) with new annotations%s",
        r.project_id,
        r.url,
        r.new_tasks,
        f", {s.added} added, {s.corrected} corrected, {s.quarantined} quarantined" if s else "",
    )
    return {
        "project_id": r.project_id,
        "new_tasks": r.new_tasks,
        "added": s.added if s else 0,
        "corrected": s.corrected if s else 0,
        "quarantined": s.quarantined if s else 0,
        "version": s.version if s else None,
        "export": str(r.export) if r.export else None,
    }


@step(name="ingest-feedback")
def ingest_task(params, limit: int | None) -> IngestResult:
    """Merge new feedback into the labeled data (a new DVC version, committed)."""
    with FeedbackStore.from_params(params) as store:
        return ingest_feedback(params, store, limit=limit)


@step(name="record-live-accuracy")
def live_task(params, live: dict[str, dict[str, float]]) -> None:
    """Tag each served model version with its accuracy on this feedback."""
    record_live_accuracy(params, live)


@step(name="prune-predictions")
def prune_task(params) -> RetentionResult:
    """Delete the predictions older than ``feedback.retention_days`` that never got feedback."""
    with FeedbackStore.from_params(params) as store:
        return apply_retention(params, store)


def _retrain_route(name: str, resource: dict[str, str]) -> str:
    """How a due retrain starts: ``automation`` when the Prefect API has deployment
    ``name`` with an enabled automation on :data:`RETRAIN_DUE` for this model (``make
    deploy``), ``deployment`` when it has the deployment without one (registered some
    other way), ``subflow`` when it has no such deployment (ephemeral mode)."""
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return "subflow"
        owned = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
    for automation in owned:
        trigger = automation.trigger
        if (
            automation.enabled
            and RETRAIN_DUE in getattr(trigger, "expect", ())
            and trigger.match.matches(Resource(root=resource))
        ):
            return "automation"
    return "deployment"


@step(name="trigger-retrain")
def trigger_task(
    params_path: str, profile: str | None, reason: str, pending: int, live: dict[str, Any]
) -> dict[str, Any]:
    """Ask for a retrain: emit :data:`RETRAIN_DUE`, whose automation on the ``retrain``
    deployment starts the run (``make deploy``: exactly one run, the flow starts none
    itself); a deployment without that automation gets a run started here; without the
    deployment (no server, or none set up) the flow runs as a subflow."""
    logger = get_run_logger()
    params = load_params(params_path, profile)
    name = params.feedback.retrain_deployment
    resource = model_resource(params.registry.model_name)
    route = _retrain_route(name, resource)
    event_id = emit_prefect_event(
        RETRAIN_DUE,
        resource,
        {
            "reason": reason,
            "pending_labels": pending,
            "live_accuracy": live,
            "params_path": params_path,
            "profile": profile,
            "trigger": Trigger.feedback.value,
        },
    )
    if route == "automation" and event_id is not None:
        logger.info(
            "event %s (%s) emitted: the automation of deployment %s starts the retrain: %s",
            RETRAIN_DUE,
            event_id,
            name,
            reason,
        )
        return {"mode": "automation", "event_id": event_id, "deployment": name}
    if route != "subflow":
        run = run_deployment(
            name=name,
            parameters={"params_path": params_path, "profile": profile, "trigger": "feedback"},
            timeout=0,  # start it and go on; the run shows in the UI
            as_subflow=False,
        )
        logger.info("started a run of deployment %s (%s): %s", name, run.id, reason)
        return {"mode": "deployment", "flow_run_id": str(run.id), "event_id": event_id}
    logger.info("no deployment %s on this Prefect API: retraining as a subflow", name)
    result = retrain(params_path=params_path, profile=profile, trigger=Trigger.feedback)
    return {
        "mode": "subflow",
        "event_id": event_id,
        **{k: result[k] for k in ("version", "promoted", "decision")},
    }


def _set_aside_lines(result: IngestResult) -> list[str]:
    """What the feedback policy and the data set's checks kept out of the data."""
    lines = []
    if result.undone is not None and result.undone.changed:
        u = result.undone
        lines.append(
            f"- Revoked feedback undone: {u.relabeled} label(s) changed, {u.removed} text(s) "
            f"removed, {u.revised} revised"
        )
    if result.conflicts:
        lines.append(
            f"- Conflicts queue: {result.conflicts} row(s) wait for more reviewers or a person "
            "(`slmops feedback conflicts`)"
        )
    if result.dead_letters:
        lines.append(f"- Dead-lettered: {len(result.dead_letters)} text(s), never retried:")
        lines += [f"  - feedback {d.source_id}: {d.reason}" for d in result.dead_letters[:20]]
    return lines


def _summary(
    result: IngestResult,
    reason: str | None,
    triggered: dict | None,
    pruned: RetentionResult,
    pulled: dict[str, Any] | None = None,
) -> str:
    s = result.summary
    lines = [
        f"# Feedback ingestion: ids {result.watermark_before + 1}-{result.watermark_after}"
        if result.read
        else "# Feedback ingestion: nothing new",
        "",
        f"- Feedback rows read: {result.read} (already in the data: {result.already_in_data})",
    ]
    if s is not None:
        lines.append(
            f"- Labeled data: {s.added} added, {s.corrected} corrected, {s.unchanged} unchanged, "
            f"{s.quarantined} quarantined"
        )
    if pulled is not None:
        lines.append(
            f"- Label Studio: pull skipped ({pulled['error']})"
            if "error" in pulled
            else f"- Label Studio project {pulled['project_id']}: {pulled['new_tasks']} task(s) "
            f"with new annotations, {pulled['added']} added, {pulled['corrected']} corrected, "
            f"{pulled['quarantined']} quarantined"
        )
    lines += _set_aside_lines(result)
    if result.version:
        lines.append(f"- Data version: `{result.version}`; git commit `{result.commit or '-'}`")
    for version, m in result.live.items():
        lines.append(f"- Live accuracy of version {version}: {m['accuracy']:.4f} on {m['n']} rows")
    if pruned.retention_days is not None:
        lines.append(
            f"- Retention: {pruned.rows} prediction(s) without feedback older than "
            f"{pruned.retention_days} day(s) deleted"
        )
    lines.append(f"- Retrain: {reason or 'no threshold crossed'}")
    if triggered:
        lines.append(f"- Triggered: {triggered}")
    return "\n".join(lines)


@pipeline_flow(name="ingest_feedback", log_prints=True)
def ingest_feedback_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    trigger_retrain: bool = True,
    limit: int | None = None,
) -> dict[str, Any] | State:
    """Ingest new feedback into the labeled data; retrain when a threshold is crossed.

    When feedback was dead-lettered the run ends Completed with a message saying so
    (calling the flow still returns the dict).

    Args:
        params_path: the project's params file (relative: to the flow's working directory)
        profile: overrides of ``profiles.<name>`` in the params file (none: the file as it is)
        trigger_retrain: false only reports whether a retrain is due (no event, no run)
        limit: take at most this many feedback rows in this run
    """
    logger = get_run_logger()
    params = load_params_step(params_path, profile)
    pulled = None
    if params.label_studio.url and params.label_studio.pull_on_ingest:
        pulled = label_studio_task(params)
    result = ingest_task(params, limit)
    if result.live:
        live_task(params, result.live)
    pruned = prune_task(params)
    with FeedbackStore.from_params(params) as store:
        pending = labels_since_retrain(params, store)
        reason = retrain_reason(params, pending, result.live)
        triggered = None
        if reason and trigger_retrain:
            triggered = trigger_task(params_path, profile, reason, pending, result.live)
            # Whatever the retrain's outcome, these labels were in its data.
            store.set_watermark(RETRAIN_MARK, watermark(store))
    logger.info(
        "feedback read %d, new labels %d, pending for retrain %d: %s",
        result.read,
        result.new_labels,
        pending,
        reason or "no retrain due",
    )
    create_markdown_artifact(
        markdown=_summary(result, reason, triggered, pruned, pulled),
        key="ingest-feedback-summary",
        description="Feedback ingestion summary",
    )
    outcome = {
        "read": result.read,
        "already_in_data": result.already_in_data,
        "added": result.summary.added if result.summary else 0,
        "corrected": result.summary.corrected if result.summary else 0,
        "quarantined": result.summary.quarantined if result.summary else 0,
        "watermark": result.watermark_after,
        "version": result.version,
        "commit": result.commit,
        "live": result.live,
        "pending_labels": pending,
        "retrain_reason": reason,
        "retrain": triggered,
        "pruned_predictions": pruned.rows,
        "conflicts": result.conflicts,
        "dead_lettered": len(result.dead_letters),
        "skipped": result.skipped,
        "label_studio": pulled,
    }
    if result.dead_letters:
        # The run succeeded, but its state says what it set aside (the UI shows it).
        message = f"{len(result.dead_letters)} feedback text(s) dead-lettered; see the summary"
        logger.warning(message)
        return Completed(message=message, data=outcome)
    return outcome
