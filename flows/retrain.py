"""Prefect flow ``retrain``: the whole loop from labeled data to a (maybe) new champion.

import pending labels → validate → split → train → evaluate → register →
promotion gate → export (only when the gate promotes) → promote. The export
runs after the gate has decided and before the ``champion`` alias moves, so the
service never loads a champion whose formats are still being made; a failed
export is reported (a warning in its task run, the version's ``format.*`` tags,
the ledger entry, the run summary) and the promotion goes ahead, served in torch
fp32. Parameters show in the Prefect UI; retries happen only on
transient failures (connection errors, a locked database), never on bad data
or a failed training run. A failing step names itself in the run's state
message and the ``notify`` webhook is told (``flows/steps.py``); nothing after
it runs, so the champion stays.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from slmops.flows.prepare_data import import_pending_task, split_task, validate_task
from slmops.flows.steps import load_params_step, pipeline_flow, step
from slmops.tasks.core import notify
from slmops.tasks.core.config import NotifyEvent, Params
from slmops.tasks.core.redact import redact_uri
from slmops.tasks.pipeline.challenger import (
    data_versions,
    evaluate_challenger,
    register_challenger,
    train_challenger,
)
from slmops.tasks.pipeline.promote import export_formats
from slmops.tasks.registry.promotion import gate, promote
from slmops.tasks.registry.store import tracking_uri

TRANSIENT = (ConnectionError, TimeoutError, sqlite3.OperationalError)


def _transient(task, task_run, state) -> bool:
    """Retry only errors that a second attempt can fix."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception as exc:
        text = str(exc).lower()
        return any(s in text for s in ("database is locked", "connection refused", "timed out"))
    return False


train_task = step(train_challenger, name="train")
evaluate_task = step(evaluate_challenger, name="evaluate")
register_task = step(
    register_challenger,
    name="register",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
)
gate_task = step(
    gate, name="promotion-gate", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient
)


def _export(params: Params, version: str) -> dict[str, Any]:
    """Export the promoted version's serving formats; a failure is a warning in this
    task run's log, never an exception (the promotion goes ahead)."""
    formats = export_formats(params, version)
    if formats.get("error"):
        get_run_logger().warning(
            "version %s: serving formats not exported (%s); promoted all the same, "
            "served in torch fp32",
            version,
            formats["error"],
        )
    return formats


export_task = step(_export, name="export")
promote_task = step(
    promote, name="promote", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient
)


def _formats_line(formats: dict[str, Any] | None) -> str:
    if formats is None:
        return "not exported (not promoted)"
    if formats.get("skipped"):
        return f"not exported ({formats['skipped']})"
    if formats.get("error"):
        return f"**export failed** ({formats['error']}): served in torch fp32"
    return f"`{formats['chosen']}` chosen"


def _summary(result: dict[str, Any]) -> str:
    m = result["metrics"]
    verdict = "promoted to champion" if result["promoted"] else "refused"
    lines = [
        f"# Retrain: {result['model']} version {result['version']}",
        "",
        f"**Gate: {verdict}** — {result['decision']}",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in m.items()),
        "",
        f"- Training: {result['epochs_run']} epoch(s), best epoch {result['best_epoch']}, "
        f"{result['train_examples']} examples, "
        f"{result['train_seconds']:.0f} s on {result['device']}",
        f"- Data: labeled `{result['data']['labeled']}`, test `{result['data']['test']}`",
        f"- Serving formats: {_formats_line(result['formats'])}",
        f"- Imported label files: {', '.join(result['imported']) or 'none'}",
        f"- MLflow: run `{result['run_id']}` in {result['tracking_uri']} "
        f"(`mlflow ui --backend-store-uri {result['tracking_uri']}` → Models → {result['model']})",
    ]
    return "\n".join(lines)


@pipeline_flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml",
    profile: str | None = None,
    base_model: str | None = None,
    epochs: int | None = None,
    data_fraction: float | None = None,
    gate_rules: dict[str, Any] | None = None,
    trigger: str = "manual",
) -> dict[str, Any]:
    """Import labels, validate, train, evaluate, register, and promote if the gate agrees
    (exporting the serving formats first).

    ``base_model``, ``epochs`` and ``data_fraction`` override ``train.*``;
    ``gate_rules`` overrides keys of ``gate.*`` (e.g. ``{"min_macro_f1_gain": 0.01}``).
    """
    logger = get_run_logger()
    train_over = {
        k: v
        for k, v in {
            "base_model": base_model,
            "epochs": epochs,
            "data_fraction": data_fraction,
        }.items()
        if v is not None
    }
    params = load_params_step(params_path, profile, {"train": train_over, "gate": gate_rules or {}})

    imports = import_pending_task(params)
    validate_task(params)
    split_task(params)
    trained = train_task(params, progress=False)
    evaluated = evaluate_task(params)
    registered = register_task(params, trigger=f"flow:{trigger}")
    who = f"prefect:retrain:{trigger}"
    verdict = gate_task(params, registered.version, who=who)
    formats = export_task(params, verdict.version) if verdict.promoted else None
    promoted = promote_task(params, verdict, who=who, formats=formats)
    decision = verdict.decision

    result = {
        "model": params.registry.model_name,
        "version": registered.version,
        "run_id": registered.run_id,
        "promoted": promoted,
        "decision": decision.summary,
        "formats": formats,
        "metrics": evaluated.metrics,
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "train_examples": trained.train_examples,
        "train_seconds": trained.seconds,
        "device": trained.device,
        "data": data_versions(params),
        "imported": [s.source for s in imports],
        "tracking_uri": redact_uri(tracking_uri(params)),  # never a password
    }
    create_markdown_artifact(
        markdown=_summary(result), key="retrain-summary", description="Retrain run summary"
    )
    logger.info(decision.summary)
    context = FlowRunContext.get()
    notify.send(
        params,
        NotifyEvent.challenger_promoted if promoted else NotifyEvent.challenger_refused,
        {
            "flow": "retrain",
            "flow_run_id": str(context.flow_run.id) if context and context.flow_run else None,
            **{k: result[k] for k in ("model", "version", "promoted", "decision", "metrics")},
            "trigger": trigger,
        },
    )
    return result
