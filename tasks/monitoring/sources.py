"""Monitoring's two inputs: the champion's live window and its reference predictions.

The **live window** is the champion's recent predictions from the feedback store
(the last ``monitoring.window_hours``, at most ``monitoring.max_predictions``,
most recent first) with the feedback given on them. The **reference** is the
champion's own predictions on the frozen test split, as evaluation wrote them
(``eval/predictions.csv`` in the version's MLflow run, fetched through
:mod:`slmops.tasks.registry.champion_reference`): what the model said when it
was judged good enough to serve.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from slmops.tasks.core.config import Params
from slmops.tasks.feedback.store import FeedbackStore, feedback_table, predictions_table
from slmops.tasks.registry.champion_reference import (
    REFERENCE_ARTIFACT,
    ReferenceUnavailable,
    download_reference,
)

log = logging.getLogger(__name__)


class MonitoringError(ValueError):
    """Monitoring cannot run: no champion, no reference predictions, a malformed file."""


@dataclass(frozen=True)
class Reference:
    """The champion's predictions on the test split: ``text``, ``cell``, ``confidence``."""

    frame: pd.DataFrame
    source: str  # where it was read, for the report
    note: str | None = None  # a warning: a fallback was used


@dataclass(frozen=True)
class LiveWindow:
    """The champion's recent predictions and the feedback on them."""

    predictions: pd.DataFrame  # id, text, cell, confidence, created_at; most recent first
    feedback: pd.DataFrame  # prediction_id, label, kind
    start: datetime | None  # the window's start (None: no time limit)
    end: datetime


def read_reference_csv(path: Path) -> pd.DataFrame:
    """A predictions CSV as evaluation writes it → ``text``, ``cell`` (the ``pred`` column),
    ``confidence``. Raises :class:`MonitoringError` naming the file and what is wrong."""
    try:
        # keep_default_na off: a label "None" or an empty span list stays a string.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise MonitoringError(f"{path}: reference predictions not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MonitoringError(f"{path}: cannot read the reference predictions ({exc})") from None
    missing = [c for c in ("text", "pred", "confidence") if c not in raw.columns]
    if missing:
        raise MonitoringError(
            f"{path}: reference predictions lack the column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, raw.columns)) or 'none'}); expected the "
            "predictions.csv that evaluation writes (text, label, pred, confidence, correct)"
        )
    if raw.empty:
        raise MonitoringError(f"{path}: the reference predictions are empty")
    confidence = pd.to_numeric(raw["confidence"], errors="coerce")
    bad = confidence.isna() | (confidence < 0) | (confidence > 1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header is line 1
        raise MonitoringError(
            f"{path}: line {row}: confidence {raw['confidence'].iloc[row - 2]!r} is not a "
            "number between 0 and 1"
        )
    return pd.DataFrame(
        {"text": raw["text"], "cell": raw["pred"], "confidence": confidence.astype(float)}
    )


def load_reference(params: Params, version: str) -> Reference:
    """The reference predictions of ``version``.

    ``monitoring.reference_file`` when set; else the version's
    ``eval/predictions.csv`` from its MLflow run; else (with a note in the
    report) the local ``<evaluate.output_dir>/predictions.csv``, which is the
    last evaluation made here and may be another version's. Neither: a
    :class:`MonitoringError` naming both places.
    """
    cfg = params.monitoring
    if cfg.reference_file:
        path = params.path(cfg.reference_file)
        return Reference(read_reference_csv(path), f"{path} (monitoring.reference_file)")
    name = params.registry.model_name
    why = _registry_reference(params, version)
    if isinstance(why, Reference):
        return why
    local = params.path(params.evaluate.output_dir) / "predictions.csv"
    if not local.is_file():
        raise MonitoringError(
            f"no reference predictions for {name} version {version}: {why}; and no local "
            f"{local}. Set monitoring.reference_file, or evaluate the version "
            "(`slmops evaluate`) to write it"
        )
    note = (
        f"The champion's own test-set predictions were not found ({why}); using the local "
        f"{local}, the last evaluation made on this machine, which may be another version's."
    )
    log.warning("%s", note)
    return Reference(read_reference_csv(local), str(local), note)


def _registry_reference(params: Params, version: str) -> Reference | str:
    """The version's reference from its registry run, or why it could not be read."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            artifact = download_reference(params, version, Path(tmp))
        except ReferenceUnavailable as exc:
            return f"its run has no {REFERENCE_ARTIFACT} ({exc})"
        try:
            frame = read_reference_csv(artifact.path)
        except MonitoringError as exc:
            return f"its run's {REFERENCE_ARTIFACT} is unusable: {exc}"
    return Reference(frame, artifact.source)


def read_live(
    store: FeedbackStore,
    model_name: str,
    model_version: str,
    *,
    now: datetime,
    window_hours: float | None,
    limit: int,
) -> LiveWindow:
    """The most recent ``limit`` predictions of the version (within ``window_hours``
    before ``now``) and the feedback given on them."""
    p, f = predictions_table, feedback_table
    start = now - timedelta(hours=window_hours) if window_hours is not None else None
    where = [p.c.model_name == model_name, p.c.model_version == str(model_version)]
    if start is not None:
        where.append(p.c.created_at >= start.astimezone(UTC))
    where.append(p.c.created_at <= now.astimezone(UTC))

    def recent(*cols: Any) -> Any:
        return sa.select(*cols).where(*where).order_by(p.c.created_at.desc(), p.c.id).limit(limit)

    window = recent(p.c.id).subquery()
    with store.engine.connect() as conn:
        rows = conn.execute(recent(p.c.id, p.c.text, p.c.label, p.c.confidence, p.c.created_at))
        predictions = pd.DataFrame(
            rows.all(), columns=["id", "text", "cell", "confidence", "created_at"]
        )
        fb = conn.execute(
            sa.select(f.c.prediction_id, f.c.label, f.c.kind).join(
                window, window.c.id == f.c.prediction_id
            )
        )
        feedback = pd.DataFrame(fb.all(), columns=["prediction_id", "label", "kind"])
    predictions["confidence"] = predictions["confidence"].astype(float)
    return LiveWindow(predictions, feedback, start, now)
