"""What a ``retrain`` flow run shows in the Prefect UI beside its log: artifacts.

- ``train-progress`` (a progress artifact of the train step): 0 % when the step
  starts, moved by every progress report of the training loop (every
  ``train.report_every_seconds``, and at each epoch's end) over the steps of all
  epochs, its description the report's line (epoch, step, loss, examples/s);
  100 % once training has ended (early stopping included).
- ``evaluation`` (markdown): the test metrics beside the champion's, the gate's
  decision and checks, the weakest classes, and where the version is in MLflow;
  published as soon as the gate has decided, so a refused run has it too.

Both show on the flow run's Artifacts tab (and the train task run's), and under
their keys on the Artifacts page, one entry per run. Publishing an artifact never
fails a run: the API unreachable is a warning in the step's log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from slmops.tasks.core.config import Params
from slmops.tasks.core.redact import redact_uri
from slmops.tasks.model.evaluate import EvalResult
from slmops.tasks.registry.promotion import Verdict
from slmops.tasks.registry.store import tracking_uri

log = logging.getLogger("slmops.flows.run_artifacts")

PROGRESS_KEY = "train-progress"
EVALUATION_KEY = "evaluation"
WEAKEST = 5  # classes listed in the evaluation artifact


def progress_line(report: Mapping[str, Any]) -> str:
    """``epoch 2/3, step 140/210 (67%): loss 0.4123, 85.2 examples/s`` of a training
    loop's progress report (:func:`slmops.tasks.model.train.train_model`)."""
    return (
        f"epoch {report['epoch']}/{report['epochs']}, step {report['step']}/{report['steps']} "
        f"({report['percent']:.0f}%): loss {report['loss']:.4f}, "
        f"{report['examples_per_s']:.1f} examples/s"
    )


class TrainProgress:
    """The train step's progress artifact. Call it with each progress report; use it as
    a context manager around training: created at 0 %, 100 % when training ends
    (an early stop ends before the last step), its last report kept on a failure."""

    def __init__(self, key: str = PROGRESS_KEY) -> None:
        self.key = key
        self.id: UUID | None = None
        self.percent = 0.0
        self._warned = False

    def _publish(self, percent: float, description: str) -> None:
        try:
            if self.id is None:
                self.id = create_progress_artifact(
                    progress=percent, key=self.key, description=description
                )
            else:
                update_progress_artifact(self.id, percent, description=description)
        except Exception as exc:  # the run goes on without its progress bar
            if not self._warned:
                log.warning("training progress not published to Prefect: %s", exc)
                self._warned = True

    def __enter__(self) -> TrainProgress:
        self._publish(0.0, "training: loading the model and tokenizing")
        return self

    def __call__(self, report: Mapping[str, Any]) -> None:
        """Publish a progress report (``percent`` of all steps, and its line)."""
        self.percent = min(100.0, float(report["percent"]))
        self._publish(self.percent, progress_line(report))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._publish(100.0, "training done")


# ------------------------------------------------------------------- evaluation


def fmt(value: Any) -> str:
    """A metric's cell: floats to 4 decimals, the rest as they are."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return "n/a" if value is None else str(value)


def metrics_table(
    metrics: Mapping[str, Any],
    champion: Mapping[str, Any] | None = None,
    champion_name: str = "champion",
) -> list[str]:
    """The markdown lines of a metric table: ``| metric | value |``, with a column of
    the champion's values when ``champion`` is given. Nested values (per-class
    tables) are left out."""
    flat = {k: v for k, v in metrics.items() if not isinstance(v, Mapping | list)}
    if champion is None:
        return [
            "| metric | value |",
            "|---|---|",
            *(f"| {k} | {fmt(v)} |" for k, v in flat.items()),
        ]
    return [
        f"| metric | this version | {champion_name} |",
        "|---|---|---|",
        *(f"| {k} | {fmt(v)} | {fmt(champion.get(k))} |" for k, v in flat.items()),
    ]


def weakest_table(per_class: Mapping[str, Mapping[str, Any]], n: int = WEAKEST) -> list[str]:
    """The ``n`` classes with the lowest test F1 among those in the test split."""
    rows = sorted(
        (float(row["f1"]), label, row)
        for label, row in per_class.items()
        if row.get("f1") is not None and int(row.get("support") or 0) > 0
    )[:n]
    if not rows:
        return []
    return [
        "| class | F1 | precision | recall | support |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {fmt(row.get('f1'))} | {fmt(row.get('precision'))} | "
            f"{fmt(row.get('recall'))} | {row.get('support')} |"
            for _, label, row in rows
        ),
    ]


def mlflow_link(tracking_uri: str, model: str, version: str) -> str:
    """Where a person finds the version: its page in the MLflow UI when the tracking URI
    is an MLflow server, else the command that serves the UI over the store."""
    if tracking_uri.startswith(("http://", "https://")):
        url = f"{tracking_uri.rstrip('/')}/#/models/{quote(model, safe='')}/versions/{version}"
        return f"[{model} version {version}]({url}) in the MLflow UI"
    return (
        f"`mlflow ui --backend-store-uri {tracking_uri}`, then Models → {model} → version {version}"
    )


def _checks_lines(checks: list[Mapping[str, Any]]) -> list[str]:
    if not checks:
        return []
    return [
        "| rule | passed | value | threshold |",
        "|---|---|---|---|",
        *(
            f"| {c.get('rule')} | {'yes' if c.get('passed') else '**no**'} | "
            f"{fmt(c.get('value'))} | {fmt(c.get('threshold'))} |"
            for c in checks
        ),
    ]


def evaluation_markdown(
    *,
    model: str,
    version: str,
    metrics: Mapping[str, Any],
    report: Mapping[str, Any],
    decision: str,
    promoted: bool,
    tracking_uri: str,
    checks: list[Mapping[str, Any]] | None = None,
    champion: str | None = None,
    champion_metrics: Mapping[str, Any] | None = None,
) -> str:
    """The ``evaluation`` artifact: test metrics (beside the champion's it was judged
    against), the gate's decision and checks, the weakest classes, the MLflow link."""
    verdict = "promoted" if promoted else "not promoted"
    against = f" (against version {champion})" if champion else ""
    lines = [
        f"# Evaluation: {model} version {version}",
        "",
        f"**Gate: {verdict}**{against} — {decision}",
        "",
        "## Test metrics",
        "",
        *metrics_table(
            metrics,
            champion_metrics if champion else None,
            f"champion (version {champion})",
        ),
    ]
    if checks:
        lines += ["", "## Gate checks", "", *_checks_lines(checks)]
    weakest = weakest_table(report.get("per_class") or {})
    if weakest:
        lines += ["", f"## Weakest classes (test F1, {len(weakest) - 2} lowest)", "", *weakest]
    lines += ["", f"MLflow: {mlflow_link(tracking_uri, model, version)}"]
    return "\n".join(lines)


def publish_evaluation(
    params: Params,
    version: str,
    evaluated: EvalResult,
    verdict: Verdict | None = None,
    decision: str = "",
) -> UUID | None:
    """Create the run's ``evaluation`` artifact for ``version`` once the gate has judged
    it (``verdict``), or with ``decision`` when it was not judged (the champion trained
    again). None, and a warning in the step's log, when the API cannot take it."""
    model = params.registry.model_name
    markdown = evaluation_markdown(
        model=model,
        version=version,
        metrics=evaluated.metrics,
        report=evaluated.report,
        decision=verdict.decision.summary if verdict else decision,
        promoted=verdict.promoted if verdict else False,
        tracking_uri=redact_uri(tracking_uri(params)),  # never a password
        checks=verdict.decision.checks if verdict else None,
        champion=verdict.champion_before if verdict else None,
        champion_metrics=verdict.metrics.get("champion") if verdict else None,
    )
    try:
        return create_markdown_artifact(
            markdown=markdown,
            key=EVALUATION_KEY,
            description=f"Evaluation of {model} version {version} and the gate's decision",
        )
    except Exception as exc:
        log.warning("evaluation artifact not published to Prefect: %s", exc)
        return None
