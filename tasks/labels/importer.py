"""Label import: an annotation export becomes a new version of the labeled data.

Parse (:mod:`.sources`) → vote → check labels → merge with the labeled data
→ gate → write → ``dvc add``. Everything is checked before anything is
written, so a rejected export leaves the labeled data as it was.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.lock import project_lock
from slmops.tasks.core.task_type import LabelError, TaskType
from slmops.tasks.data.dataset import (
    CORRECTION_COLUMNS,
    LABELED_COLUMNS,
    QUARANTINE_COLUMNS,
    LabeledPaths,
    append_rows,
    load_label_set,
    normalise,
    read_labeled,
    read_test,
    write_csv_atomic,
    write_json_atomic,
)
from slmops.tasks.data.versioning import data_hash, track
from slmops.tasks.labels.sources import LabelFormat, VoteTable, read_votes, resolve_votes
from slmops.tasks.validation.gate import ValidationResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """An incoming row set aside because merging it would make the whole data set fail a
    check (e.g. drain a class below ``min_examples_per_class``)."""

    text: str
    label: str
    source_id: str  # the row's source ids, joined with ","
    check: str
    reason: str


@dataclass(frozen=True)
class ImportSummary:
    """What an import did to the labeled data."""

    source: str
    fmt: str
    batch_id: str
    votes: int
    added: int
    corrected: int
    unchanged: int
    quarantined: int
    new_labels: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    version: str | None = None  # DVC hash of data/labeled after the import
    dead_letters: list[DeadLetter] = field(default_factory=list)  # with ``dead_letter`` only

    @property
    def changed(self) -> bool:
        """True when a new dataset version was written."""
        return bool(self.added or self.corrected or self.quarantined or self.new_labels)


def display_path(path: Path, root: Path) -> str:
    """``path`` as provenance records it: relative to the project ``root`` when under it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return path.name


def _batch_id(path: Path, now: datetime) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return f"import-{now:%Y%m%dT%H%M%SZ}-{digest}"


def _unknown_classes(resolved: pd.DataFrame, label_set: list[str], task: TaskType) -> pd.Series:
    """Per row, the classes its label names that are not in the set (empty: none).

    A label cell the task cannot read names nothing here: the gate sets it
    aside with the reason.
    """
    known = set(label_set)

    def unknown(cell: str) -> list[str]:
        try:
            return [c for c in task.classes(cell) if c not in known]
        except LabelError:
            return []

    return resolved["label"].map(unknown)


def _check_labels(
    resolved: pd.DataFrame, label_set: list[str], source: str, allow_new: bool, task: TaskType
) -> list[str]:
    """Labels not in the set: an error listing them, or new classes when allowed."""
    unknown = _unknown_classes(resolved, label_set, task)
    if not unknown.map(bool).any():
        return []
    by_label = unknown.explode().dropna()
    new = sorted(by_label.unique())
    if allow_new:
        return new
    listed = "; ".join(
        f"{label!r} ({len(g)} row(s): "
        f"{', '.join(resolved.loc[g.index, 'source_id'].astype(str).head(3))})"
        for label, g in by_label.groupby(by_label, sort=True)
    )
    raise DataError(
        f"{source}: {len(new)} label(s) not in the label set: {listed}. Fix the export, "
        "or set labels.allow_new: true in params.yaml to accept them as new classes."
    )


def import_labels(
    path: str | Path,
    params: Params,
    task: TaskType,
    formats: Sequence[LabelFormat],
    *,
    fmt: str | None = None,
    now: datetime | None = None,
    version: bool = True,
    source: str | None = None,
) -> ImportSummary:
    """Import a Label Studio export (full JSON or JSON-MIN) or a CSV of labels.

    Several annotators of one text are reduced to the majority label with an
    agreement score; ties and low agreement are quarantined. A label for a
    text already in the data (same text after normalising case and
    whitespace) replaces the old one and is recorded in ``corrections.csv``.
    With ``version`` the result is recorded as a new DVC version; ``source``
    overrides the file name recorded as provenance. ``formats`` is the registry of
    export formats the file may be in; ``task`` checks its labels.
    """
    path = Path(path)
    now = now or datetime.now(UTC)
    table = read_votes(path, params.label_import, formats, fmt)
    return merge_votes(
        table,
        params,
        task,
        source=source or display_path(path, params.root),
        batch_id=_batch_id(path, now),
        now=now,
        version=version,
    )


def merge_votes(
    table: VoteTable,
    params: Params,
    task: TaskType,
    *,
    source: str,
    batch_id: str,
    kind: str = "import",
    now: datetime | None = None,
    version: bool = True,
    quarantine_unknown_labels: bool = False,
    dead_letter: bool = False,
) -> ImportSummary:
    """Resolve votes and merge them into the labeled data as one batch.

    ``kind`` is the provenance ``source`` of the new rows (``import`` or
    ``feedback``). Unknown labels stop the batch with an error listing them,
    unless ``labels.allow_new`` makes them classes or
    ``quarantine_unknown_labels`` sets those rows aside instead. The merged data
    must pass the gate before anything is written: a batch that would make a check
    of the whole data set fail is refused, or with ``dead_letter`` the rows that
    make it fail are set aside (:attr:`ImportSummary.dead_letters`, not written
    anywhere: the caller keeps them) and the rest is merged.
    """
    with project_lock(params, "merge labels"):
        now = now or datetime.now(UTC)
        stamp = now.isoformat(timespec="seconds")
        paths = LabeledPaths(params)

        resolved, vote_quarantine = resolve_votes(table.votes, params.label_import.min_agreement)
        label_set = load_label_set(params)
        unknown_quarantine = resolved.iloc[0:0].assign(reason="")
        if quarantine_unknown_labels and not params.labels.allow_new:
            names = _unknown_classes(resolved, label_set, task)
            unknown = names.map(bool)
            unknown_quarantine = resolved.loc[unknown].assign(
                reason=names[unknown].map(
                    lambda n: (
                        f"label {n[0]!r} is not in the label set"
                        if len(n) == 1
                        else f"labels {n} are not in the label set"
                    )
                )
            )
            resolved = resolved.loc[~unknown]
        new_labels = _check_labels(resolved, label_set, source, params.labels.allow_new, task)
        label_set = label_set + new_labels

        provenance = {
            "source": kind,
            "source_file": source,
            "batch_id": batch_id,
            "imported_at": stamp,
        }
        # The labeled data is all text on disk; numbers are written as read back.
        incoming = resolved.assign(
            annotator_count=resolved["annotator_count"].astype(str),
            agreement=resolved["agreement"].map("{:g}".format),
            **provenance,
        ).reindex(columns=[*LABELED_COLUMNS, "annotators"])

        existing = read_labeled(params)
        test_texts = read_test(params)["text"]

        def check(frame: pd.DataFrame) -> ValidationResult:
            return task.validate_frame(
                frame,
                params,
                label_set,
                test_texts,
                dataset=f"labeled + {source}",
                required=LABELED_COLUMNS,
            )

        merged, corrections, unchanged = _merge(existing, incoming, stamp)
        result = check(merged)
        failing = dataset_failures(result)
        dead_letters: list[DeadLetter] = []
        if failing and dead_letter:
            # Checks the data failed before this batch are not the batch's doing.
            before = set(dataset_failures(check(existing)))
            incoming, dead_letters = _set_aside_offending(existing, incoming, stamp, check, before)
            merged, corrections, unchanged = _merge(existing, incoming, stamp)
            result = check(merged)
            failing = {c: m for c, m in dataset_failures(result).items() if c not in before}
        if failing:
            raise DataError(
                f"{source}: importing it would make the labeled data fail the gate: "
                + "; ".join(f"{c}: {m}" for c, m in failing.items())
            )
        fresh = set(merged["text"].iloc[len(existing) :])
        clean = result.clean
        corrections = corrections.loc[corrections["text"].isin(clean["text"])]
        set_aside = pd.concat(
            [
                table.rejected.assign(check="parse", **provenance),
                vote_quarantine.assign(check="vote", **provenance),
                unknown_quarantine.assign(check="label_in_set", **provenance),
                result.quarantined,
            ],
            ignore_index=True,
        ).assign(quarantined_at=stamp)

        summary = ImportSummary(
            source=source,
            fmt=table.fmt,
            batch_id=batch_id,
            votes=len(table.votes),
            added=int(clean["text"].isin(fresh).sum()),
            corrected=len(corrections),
            unchanged=unchanged,
            quarantined=len(set_aside),
            new_labels=new_labels,
            problems=result.problems(),
            dead_letters=dead_letters,
        )
        if not summary.changed:
            log.info("%s: nothing new (%d label(s) already in the data)", source, unchanged)
            return summary

        write_csv_atomic(clean.reindex(columns=LABELED_COLUMNS), paths.labeled)
        if len(set_aside):
            append_rows(paths.quarantine, set_aside, QUARANTINE_COLUMNS)
        if len(corrections):
            append_rows(paths.corrections, corrections, CORRECTION_COLUMNS)
        if new_labels:
            write_json_atomic(label_set, paths.labels)
        if not version:
            return summary
        track([paths.dir], params.root, push=params.dvc.push)
        return ImportSummary(**{**summary.__dict__, "version": data_hash(paths.dir)})


def dataset_failures(result: ValidationResult) -> dict[str, str]:
    """The blocking checks of the whole data set (not of single rows) that failed:
    check name -> message."""
    return {c.check: c.message for c in result.checks if c.blocking and not c.rows}


def _set_aside_offending(
    existing: pd.DataFrame,
    incoming: pd.DataFrame,
    stamp: str,
    check: Callable[[pd.DataFrame], ValidationResult],
    allowed: set[str],
) -> tuple[pd.DataFrame, list[DeadLetter]]:
    """Split ``incoming`` into the rows that can be merged and the rows that make a check
    of the whole data set fail (checks in ``allowed`` failed before and are ignored).

    Rows are taken in order; a bisection finds the first row whose addition makes a
    check fail, sets it aside and goes on with the rest: O(log n) validations per row
    set aside, one when nothing is.
    """

    def failures(positions: list[int]) -> dict[str, str]:
        merged, _, _ = _merge(existing, incoming.iloc[positions], stamp)
        return {c: m for c, m in dataset_failures(check(merged)).items() if c not in allowed}

    kept: list[int] = []
    dead: list[DeadLetter] = []
    rest = list(range(len(incoming)))
    while rest and failures(kept + rest):
        lo, hi = 0, len(rest)  # kept + rest[:lo] passes, kept + rest[:hi] fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if failures(kept + rest[:mid]):
                hi = mid
            else:
                lo = mid
        failed = failures(kept + rest[:hi])
        row = incoming.iloc[rest[lo]]
        dead.append(
            DeadLetter(
                text=str(row["text"]),
                label=str(row["label"]),
                source_id=str(row["source_id"]),
                check=", ".join(failed),
                reason="merging it would make the labeled data fail "
                + "; ".join(f"{c}: {m}" for c, m in failed.items()),
            )
        )
        kept += rest[:lo]
        rest = rest[hi:]
    return incoming.iloc[kept + rest], dead


def _merge(
    existing: pd.DataFrame, incoming: pd.DataFrame, stamp: str
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Merge incoming labels into the data by normalised text.

    Returns the merged frame, the corrections made and the number of incoming
    labels that were already there.
    """
    key = [normalise(t) if isinstance(t, str) else t for t in existing["text"]]
    position = {k: i for i, k in enumerate(key)}
    # Rows are read from plain arrays and replaced all at once at the end: pandas'
    # row-by-row ``iloc`` reads and writes took about 5 ms per corrected row.
    columns = {c: existing[c].to_numpy(dtype=object) for c in existing.columns}
    replaced: dict[int, dict[str, object]] = {}  # row position -> its new values

    def old(i: int, column: str) -> object:
        if i in replaced:
            value = replaced[i].get(column)
            return np.nan if value is None else value  # what the frame would hold
        return columns[column][i]

    corrections: list[dict[str, object]] = []
    unchanged = 0
    fresh = []
    for row in incoming.itertuples(index=False):
        i = position.get(normalise(row.text))
        if i is None:
            fresh.append(row._asdict())
            continue
        if old(i, "label") == row.label:
            unchanged += 1
            continue
        corrections.append(
            {
                "text": row.text,
                "old_label": old(i, "label"),
                "new_label": row.label,
                "old_source": f"{old(i, 'source')}:{old(i, 'source_file')}:{old(i, 'source_id')}",
                "new_source_file": row.source_file,
                "new_source_id": row.source_id,
                "batch_id": row.batch_id,
                "corrected_at": stamp,
                "new_annotators": row.annotators,
            }
        )
        replaced[i] = row._asdict()
    merged = existing.copy()
    if replaced:
        rows = list(replaced)
        for j, column in enumerate(merged.columns):
            merged.iloc[rows, j] = [replaced[i].get(column) for i in rows]
    merged = pd.concat([merged, pd.DataFrame(fresh, columns=incoming.columns)], ignore_index=True)
    return merged, pd.DataFrame(corrections, columns=CORRECTION_COLUMNS), unchanged


IMPORT_SUFFIXES = (".json", ".csv", ".tsv")


def import_pending(
    params: Params, task: TaskType, formats: Sequence[LabelFormat], *, version: bool = True
) -> list[ImportSummary]:
    """Import every export waiting in ``data/imports/pending``, oldest name first.

    Each imported file moves to ``data/imports/done``. A file that is rejected
    stays where it is, the others are still imported, and the error is raised
    at the end naming every rejected file.
    """
    pending = params.path(params.data.pending_dir)
    done = params.path(params.data.imported_dir)
    files = sorted(p for p in pending.glob("*") if p.suffix.lower() in IMPORT_SUFFIXES)
    summaries, errors = [], []
    for f in files:
        try:
            # Provenance names the file where it will stay, in done/.
            where = display_path(done / f.name, params.root)
            summaries.append(import_labels(f, params, task, formats, version=version, source=where))
        except DataError as exc:
            errors.append(str(exc))
            continue
        done.mkdir(parents=True, exist_ok=True)
        f.replace(done / f.name)
    if errors:
        raise DataError(
            f"{len(errors)} of {len(files)} pending export(s) rejected (left in {pending}):\n"
            + "\n".join(errors)
        )
    return summaries
