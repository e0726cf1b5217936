"""Build the working labeled data and the frozen test split from the seed.

The build is deterministic (no timestamps on seed rows, fixed order), so the
``.dvc`` hashes committed in git are reproduced on any fresh clone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.core.errors import DataError
from slmops.tasks.data.dataset import (
    CORRECTION_COLUMNS,
    LABELED_COLUMNS,
    QUARANTINE_COLUMNS,
    QUARANTINE_FILE,
    LabeledPaths,
    empty_frame,
    read_label_file,
    read_table,
    write_csv_atomic,
    write_json_atomic,
)
from slmops.tasks.data.versioning import restore, track
from slmops.tasks.task_types import task_type
from slmops.tasks.validation.gate import ValidationResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitSummary:
    """What ``init_data`` did."""

    action: str  # "present" | "restored" | "built"
    labeled_rows: int
    test_rows: int
    quarantined_rows: int


def _read_seed(params: Params, rels: str | list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of the seed file(s) (``text``, ``label``, provenance) and the items that
    could not become rows (kept aside with the reason, never dropped)."""
    task = task_type(params)
    rows, rejected = [], []
    for rel in [rels] if isinstance(rels, str) else rels:
        table = task.read_seed(params, rel)
        rows.append(table.votes[["text", "label", "source_id"]].assign(source_file=rel))
        rejected.append(table.rejected.assign(source_file=rel, check="seed_format"))
    return pd.concat(rows, ignore_index=True), pd.concat(rejected, ignore_index=True)


def build_from_seed(params: Params) -> InitSummary:
    """Write ``data/labeled`` and ``data/test`` from the seed files (no DVC involved).

    Seed training rows that fail the gate (e.g. texts also in the test split)
    go to ``quarantine.csv`` with the reason, so the labeled data passes the gate.
    """
    paths = LabeledPaths(params)
    label_set = read_label_file(params.path(params.labels.label_set))
    test, test_rejected = _read_seed(params, params.data.seed_test)
    train, train_rejected = _read_seed(params, params.data.seed_train)
    train = train.assign(
        source="seed", batch_id="seed", imported_at=None, annotator_count=None, agreement=None
    ).reindex(columns=LABELED_COLUMNS)

    # The test split passes the same gate (without the leakage check); its
    # failing rows are kept aside too, beside it.
    test_result = _gate(
        params, test[["text", "label", "source_file", "source_id"]], label_set, None
    )
    test = test_result.clean
    result = _gate(params, train, label_set, test["text"])

    write_csv_atomic(result.clean, paths.labeled)
    write_json_atomic(label_set, paths.labels)
    write_csv_atomic(_aside(result, train_rejected), paths.quarantine)
    write_csv_atomic(empty_frame(CORRECTION_COLUMNS), paths.corrections)
    write_csv_atomic(test[["text", "label"]], paths.test)
    write_csv_atomic(_aside(test_result, test_rejected), paths.test_dir / QUARANTINE_FILE)
    for name, res in (("train", result), ("test", test_result)):
        for line in res.problems():
            log.info("seed %s rows set aside: %s", name, line)
    aside = len(result.quarantined) + len(train_rejected)
    return InitSummary("built", len(result.clean), len(test), aside)


def _gate(params: Params, df: pd.DataFrame, label_set: list[str], test_texts) -> ValidationResult:
    result = task_type(params).validate_frame(df, params, label_set, test_texts, dataset="seed")
    if any(c.blocking and not c.rows for c in result.checks):
        raise DataError("seed data fails the gate: " + "; ".join(result.problems()))
    return result


def _aside(result: ValidationResult, unread: pd.DataFrame) -> pd.DataFrame:
    # No timestamp, so the seed build is byte-for-byte reproducible.
    aside = pd.concat([unread, result.quarantined], ignore_index=True)
    return aside.assign(quarantined_at=None).reindex(columns=QUARANTINE_COLUMNS)


def init_data(params: Params, *, rebuild: bool = False) -> InitSummary:
    """Make sure the labeled data and test split are in the workspace.

    Order: already present → restore the version in the ``.dvc`` files from
    the DVC cache or remote → build from the seed and ``dvc add`` it.
    """
    paths = LabeledPaths(params)
    targets = [paths.dir, paths.test_dir]
    if not rebuild:
        if paths.labeled.exists() and paths.test.exists():
            return _summary("present", paths)
        if restore(targets, params.root):
            return _summary("restored", paths)
    summary = build_from_seed(params)
    track(targets, params.root, push=params.dvc.push)
    return summary


def _summary(action: str, paths: LabeledPaths) -> InitSummary:
    labeled = read_table(paths.labeled)
    quarantine = read_table(paths.quarantine, ()) if paths.quarantine.exists() else labeled[:0]
    return InitSummary(action, len(labeled), len(read_table(paths.test)), len(quarantine))
