"""Prefect flow ``retrain``: the whole loop from labeled data to a (maybe) new champion.

resolve crash leftovers → import pending labels → validate → split → train →
evaluate → register → promotion gate → export (only when the gate promotes) →
promote. The export runs after the gate has decided and before the ``champion``
alias moves, so the service never loads a champion whose formats are still being
made; a failed export is reported (a warning in its task run, the version's ``format.*`` tags,
the ledger entry, the run summary) and the promotion goes ahead, served in torch
fp32. Parameters show in the Prefect UI; retries happen only on
transient failures (connection errors, a locked database), never on bad data
or a failed training run. A failing step names itself in the run's state
message and the ``notify`` webhook is told (``flows/steps.py``); nothing after
it runs, so the champion stays.

The first step resolves what a killed registration left in the registry (a run
left RUNNING, a version whose registration never completed:
:mod:`slmops.tasks.registry.registration`); registration is idempotent, so a
model registered before returns its version, and one that is the champion
already (retrained on unchanged data) is not judged again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from slmops.flows.parameters import GateOverrides, Trigger, gate_overrides
from slmops.flows.prepare_data import import_pending_task, split_task, validate_task
from slmops.flows.run_artifacts import TrainProgress, metrics_table, publish_evaluation
from slmops.flows.steps import load_params_step, pipeline_flow, step
from slmops.tasks.core import notify
from slmops.tasks.core.config import NotifyEvent, Params
from slmops.tasks.core.redact import redact_uri
from slmops.tasks.data.split import split_versions
from slmops.tasks.pipeline.challenger import (
    data_versions,
    evaluate_challenger,
    register_challenger,
    train_challenger,
)
from slmops.tasks.pipeline.dvc_record import record_run
from slmops.tasks.pipeline.promote import export_formats
from slmops.tasks.pipeline.recipe import RecipeCheck, check_recipe
from slmops.tasks.pipeline.workspace import publish, run_workspace
from slmops.tasks.registry.promotion import CHAMPION, gate, promote
from slmops.tasks.registry.registration import resolve_leftovers
from slmops.tasks.registry.store import Registry, tracking_uri

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


def _resolve(params: Params, who: str) -> dict[str, list[str]]:
    """Resolve what a killed registration left; say in this task run's log what was."""
    found = resolve_leftovers(params, who=who)
    if found:
        get_run_logger().warning(
            "crash leftovers resolved: run(s) marked FAILED %s; version(s) completed %s; "
            "version(s) failed %s",
            found.failed_runs or "none",
            found.completed or "none",
            found.failed_versions or "none",
        )
    return asdict(found)


resolve_task = step(
    _resolve,
    name="resolve-leftovers",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
)


def _train(params: Params, **options: Any):
    """Train the challenger; its progress moves the run's ``train-progress`` artifact
    (``flows/run_artifacts.py``) every ``train.report_every_seconds``."""
    with TrainProgress() as progress_artifact:
        return train_challenger(params, on_progress=progress_artifact, **options)


train_task = step(_train, name="train")
publish_task = step(publish, name="publish-run")
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
recipe_task = step(
    check_recipe,
    name="recipe-check",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
)
# dvc.lock and `dvc exp` told what the run made (tasks/pipeline/dvc_record.py says why
# the flow records its outputs rather than running `dvc repro`); never fails the run.
record_dvc_task = step(record_run, name="record-in-dvc")
promote_task = step(
    promote, name="promote", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient
)


def _flow_run_id() -> str | None:
    """This flow run's id (names the run's folder); None outside a flow run."""
    context = FlowRunContext.get()
    return str(context.flow_run.id)[:8] if context and context.flow_run else None


def _formats_line(formats: dict[str, Any] | None) -> str:
    if formats is None:
        return "not exported (not promoted)"
    if formats.get("skipped"):
        return f"not exported ({formats['skipped']})"
    if formats.get("error"):
        return f"**export failed** ({formats['error']}): served in torch fp32"
    return f"`{formats['chosen']}` chosen"


def _leftovers_line(found: dict[str, list[str]]) -> str:
    parts = [
        f"{what} {', '.join(found[key])}"
        for key, what in (
            ("failed_runs", "run(s) marked FAILED:"),
            ("completed", "version(s) completed:"),
            ("failed_versions", "version(s) failed:"),
        )
        if found.get(key)
    ]
    return "; ".join(parts) or "none"


def _dvc_line(recorded: dict[str, Any]) -> str:
    experiment = recorded.get("experiment")
    saved = f"experiment `{experiment}` (`dvc exp show`)" if experiment else "no experiment"
    committed = ", ".join(recorded.get("committed") or []) or "no stage"
    why = f"; {recorded['skipped']}" if recorded.get("skipped") else ""
    return f"dvc.lock records {committed}; {saved}{why}"


def _unchanged(
    params: Params, checked: RecipeCheck, imports: list, leftovers: dict[str, list[str]]
) -> dict[str, Any]:
    """The result of a retrain skipped because a registered version has its recipe."""
    same = checked.same
    reason = checked.unchanged()
    get_run_logger().info("%s: nothing trained (force=True trains anyway)", reason)
    result = {
        "model": params.registry.model_name,
        "version": same.version,
        "run_id": same.run_id,
        "promoted": False,
        "champion": same.champion,
        "decision": reason,
        "skipped": reason,
        "recipe": checked.recipe.fingerprint,
        "data": checked.recipe.data,
        "imported": [s.source for s in imports],
        "leftovers": leftovers,
        "tracking_uri": redact_uri(tracking_uri(params)),  # never a password
    }
    create_markdown_artifact(
        markdown="\n".join(
            [
                f"# Retrain: nothing to do ({result['model']})",
                "",
                f"**{reason}**: nothing trained, registered or promoted "
                "(run it with `force` to train anyway).",
                "",
                f"- Data: labeled `{result['data']['labeled']}`, test `{result['data']['test']}`",
                f"- Recipe: `{result['recipe']}`",
                f"- Imported label files: {', '.join(result['imported']) or 'none'}",
                f"- Crash leftovers resolved: {_leftovers_line(leftovers)}",
            ]
        ),
        key="retrain-summary",
        description="Retrain run summary",
    )
    return result


def _summary(result: dict[str, Any]) -> str:
    m = result["metrics"]
    verdict = "promoted to champion" if result["promoted"] else "refused"
    lines = [
        f"# Retrain: {result['model']} version {result['version']}",
        "",
        f"**Gate: {verdict}** — {result['decision']}",
        "",
        *metrics_table(m),
        "",
        f"- Training: {result['epochs_run']} epoch(s), best epoch {result['best_epoch']}, "
        f"{result['train_examples']} examples, "
        f"{result['train_seconds']:.0f} s on {result['device']}",
        f"- Data: labeled `{result['data']['labeled']}`, test `{result['data']['test']}`",
        f"- Serving formats: {_formats_line(result['formats'])}",
        f"- Imported label files: {', '.join(result['imported']) or 'none'}",
        f"- Crash leftovers resolved: {_leftovers_line(result['leftovers'])}",
        f"- DVC: {_dvc_line(result['dvc'])}",
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
    gate_rules: GateOverrides | None = None,
    trigger: Trigger = Trigger.manual,
    force: bool = False,
) -> dict[str, Any]:
    """Import labels, validate, train, evaluate, register, and promote if the gate agrees
    (exporting the serving formats first).

    When a registered version was made from the same data, params and code (its
    ``slmops.recipe`` tag), nothing is trained and the result says which version
    (``skipped``); ``force`` trains all the same.

    Args:
        params_path: the project's params file (relative: to the flow's working directory)
        profile: overrides of ``profiles.<name>`` in the params file (none: the file as it is)
        base_model: instead of ``train.base_model``
        epochs: instead of ``train.epochs``
        data_fraction: instead of ``train.data_fraction`` (a quick run on part of the data)
        gate_rules: instead of the params file's ``gate.*`` rules, for this run (a dict of
            them works too, e.g. ``{"min_macro_f1_gain": 0.01}``)
        trigger: what started the run (recorded on the MLflow run and the ledger): a
            schedule sets schedule, an automation feedback or drift, the Run button manual
        force: train even when a registered version has the same data, params and code
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
    overrides = {"train": train_over, "gate": gate_overrides(gate_rules)}
    params = load_params_step(params_path, profile, overrides)

    leftovers = resolve_task(params, who=f"prefect:retrain:{trigger}")
    imports = import_pending_task(params)
    checked = recipe_task(params)
    if checked.same is not None and not force:
        # As `dvc repro` skips a stage whose deps and params did not change.
        return _unchanged(params, checked, imports, leftovers)
    # The run's own folder for validation, split, checkpoints, model and evaluation: a
    # second run at once cannot overwrite them; published once the version is registered.
    with run_workspace(params, _flow_run_id()) as run:
        validate_task(run.params)
        split_task(run.params)
        trained = train_task(run.params, progress=False, trigger=f"flow:{trigger}")
        evaluated = evaluate_task(run.params)
        registered = register_task(run.params, trigger=f"flow:{trigger}")
        data = split_versions(run.params) or data_versions(run.params)  # trained on
        publish_task(run)
    who = f"prefect:retrain:{trigger}"
    name = params.registry.model_name
    if registered.reused and Registry.of(params).alias(name, CHAMPION) == registered.version:
        # The same model as the one serving (nothing changed since it was trained):
        # nothing to judge, nothing to export or move.
        summary = (
            f"refuse: version {registered.version} is the champion already "
            "(the same model was trained again)"
        )
        publish_evaluation(params, registered.version, evaluated, decision=summary)
        formats, promoted = None, False
    else:
        verdict = gate_task(params, registered.version, who=who)
        publish_evaluation(params, registered.version, evaluated, verdict)
        formats = export_task(params, verdict.version) if verdict.promoted else None
        promoted = promote_task(params, verdict, who=who, formats=formats)
        summary = verdict.decision.summary
    recorded = record_dvc_task(
        params,
        params_path,
        code=checked.recipe.code,
        version=registered.version,
        run_id=registered.run_id,
        promoted=promoted,
        decision=summary,
        reused=registered.reused,
    )

    result = {
        "model": params.registry.model_name,
        "version": registered.version,
        "run_id": registered.run_id,
        "promoted": promoted,
        "decision": summary,
        "formats": formats,
        "metrics": evaluated.metrics,
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "train_examples": trained.train_examples,
        "train_seconds": trained.seconds,
        "device": trained.device,
        "data": data,
        "imported": [s.source for s in imports],
        "leftovers": leftovers,  # what a killed registration had left, now resolved
        "tracking_uri": redact_uri(tracking_uri(params)),  # never a password
        "recipe": checked.recipe.fingerprint,
        "dvc": asdict(recorded),
    }
    create_markdown_artifact(
        markdown=_summary(result), key="retrain-summary", description="Retrain run summary"
    )
    logger.info(summary)
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
