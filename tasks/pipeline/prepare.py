"""The data steps as the flows, the CLI and the dvc stages run them: each picks the
project's task type once (from ``params.task``) and passes it to the engines."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from slmops.tasks.core.config import Params
from slmops.tasks.data import split
from slmops.tasks.data.dataset import REQUIRED_COLUMNS
from slmops.tasks.feedback import ingest
from slmops.tasks.feedback.store import FeedbackStore
from slmops.tasks.labels import importer
from slmops.tasks.task_types import LABEL_FORMATS, task_type
from slmops.tasks.validation import gate


def validate_file(
    path: Path,
    params: Params,
    *,
    leakage: bool = True,
    required: tuple[str, ...] = REQUIRED_COLUMNS,
    out_dir: Path | None = None,
) -> tuple[gate.ValidationResult, Path]:
    """Validate one CSV file with the project's checks (:func:`gate.validate_file`)."""
    return gate.validate_file(
        path, params, task_type(params), leakage=leakage, required=required, out_dir=out_dir
    )


def run_gate(params: Params) -> list[tuple[gate.ValidationResult, Path]]:
    """Validate the labeled data and the test split (:func:`gate.run_gate`)."""
    return gate.run_gate(params, task_type(params))


def write_splits(params: Params) -> split.SplitSummary:
    """Write the train/validation split of the labeled data (:func:`split.write_splits`)."""
    return split.write_splits(params, task_type(params))


def import_labels(
    path: str | Path,
    params: Params,
    *,
    fmt: str | None = None,
    now: datetime | None = None,
    version: bool = True,
    source: str | None = None,
) -> importer.ImportSummary:
    """Import one label export, in any format the task types read
    (:func:`importer.import_labels`)."""
    return importer.import_labels(
        path,
        params,
        task_type(params),
        LABEL_FORMATS,
        fmt=fmt,
        now=now,
        version=version,
        source=source,
    )


def import_pending(params: Params, *, version: bool = True) -> list[importer.ImportSummary]:
    """Import every export waiting in ``data/imports/pending`` (:func:`importer.import_pending`)."""
    return importer.import_pending(params, task_type(params), LABEL_FORMATS, version=version)


def ingest_feedback(
    params: Params,
    store: FeedbackStore,
    *,
    now: datetime | None = None,
    limit: int | None = None,
) -> ingest.IngestResult:
    """Merge the feedback after the watermark into the labeled data
    (:func:`ingest.ingest_feedback`)."""
    return ingest.ingest_feedback(params, store, task_type(params), now=now, limit=limit)
