"""Prediction retention: ``feedback.retention_days``.

The service logs every text it answers (``predictions``), for the review queue,
feedback and monitoring. Users' texts are not kept longer than those need: a
prediction that never got feedback is deleted once older than
``feedback.retention_days`` (each ``ingest_feedback`` run, or ``slmops feedback
prune``). Predictions *with* feedback stay: the feedback rows reference them,
ingestion reads their text, and the text is then in the labeled data anyway.
The configuration refuses a monitoring window longer than the retention
(:class:`~slmops.tasks.core.config.Params`), so monitoring always sees every
prediction of its window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from slmops.tasks.core.config import Params
from slmops.tasks.feedback.store import FeedbackStore

log = logging.getLogger(__name__)

# Rows deleted per transaction: a few milliseconds of write lock on SQLite, so
# /predict and /feedback writes wait at most that long behind a big prune.
PRUNE_BATCH_ROWS = 1000


@dataclass(frozen=True)
class RetentionResult:
    """What :func:`apply_retention` did (or, in a dry run, would do)."""

    retention_days: int | None  # None: predictions are kept forever, nothing was looked at
    cutoff: datetime | None  # predictions made before this, without feedback, go
    rows: int  # deleted, or that a dry run would delete
    dry_run: bool


def apply_retention(
    params: Params,
    store: FeedbackStore,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = PRUNE_BATCH_ROWS,
) -> RetentionResult:
    """Delete the predictions older than ``feedback.retention_days`` that never got
    feedback, ``batch`` rows per transaction; ``dry_run`` only counts them."""
    days = params.feedback.retention_days
    if days is None:
        log.info("feedback.retention_days is null: predictions are kept forever")
        return RetentionResult(None, None, 0, dry_run)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    if dry_run:
        rows = store.count_prunable_predictions(cutoff)
        log.info(
            "dry run: %d prediction(s) without feedback older than %d day(s) (before %s) "
            "would be deleted",
            rows,
            days,
            cutoff.isoformat(timespec="seconds"),
        )
    else:
        rows = store.prune_predictions(cutoff, batch)
        log.info(
            "deleted %d prediction(s) without feedback older than %d day(s) (before %s)",
            rows,
            days,
            cutoff.isoformat(timespec="seconds"),
        )
    return RetentionResult(days, cutoff, rows, dry_run)
