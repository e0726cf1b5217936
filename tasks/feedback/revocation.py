"""Revoked feedback leaves the labeled data as if it had never come.

``slmops feedback revoke`` marks a principal's feedback revoked in the store
(:meth:`FeedbackStore.revoke`); the next ingestion calls :func:`undo_revoked`
first. For every text whose label feedback shaped (the feedback ids of its row
and of its correction history) and that a revoked id touched, the label is
derived again from what is left:

- a text whose label was curated before feedback changed it (the correction
  history says so) gets the curated label back, unless the remaining reviewers
  still meet the policy (``feedback.reviewers_to_override`` of them agree on
  another label);
- a text that came from feedback keeps the majority of the remaining votes;
  with none left (or a tie) it leaves the labeled data for the quarantine,
  with the reason: nothing is deleted.

Every change is written to ``corrections.csv`` (old and new label, the revoked
ids), revoked rows still waiting in the conflicts queue leave it, and the
change becomes a data version like any ingestion.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.data.dataset import (
    CORRECTION_COLUMNS,
    LABELED_COLUMNS,
    QUARANTINE_COLUMNS,
    LabeledPaths,
    append_rows,
    normalise,
    read_corrections,
    read_labeled,
    write_csv_atomic,
)
from slmops.tasks.feedback.policy import CURATED_SOURCES, reviewer
from slmops.tasks.feedback.store import FeedbackItem, FeedbackStore

log = logging.getLogger(__name__)

FEEDBACK_SOURCE = "feedback"
REVOCATION = "revocation"  # new_source_file of the corrections revocation makes


@dataclass(frozen=True)
class Undone:
    """What :func:`undo_revoked` changed in the labeled data."""

    relabeled: int  # texts whose label changed back or to the remaining majority
    removed: int  # texts that came from revoked feedback alone (now in quarantine)
    revised: int  # texts whose label stands on the remaining feedback (provenance updated)

    @property
    def changed(self) -> bool:
        """True when the labeled data was written."""
        return bool(self.relabeled or self.removed or self.revised)


def _ids(cell: object) -> list[str]:
    return [i for i in str(cell).split(",") if i.isdigit()] if isinstance(cell, str) else []


def _curated_before(history: pd.DataFrame) -> tuple[str, str] | None:
    """(label, "source:file:id") the text had before feedback last replaced a curated
    label, from its correction history (oldest first); None if it never had one."""
    curated = history[history["old_source"].str.split(":", n=1).str[0].isin(CURATED_SOURCES)]
    if curated.empty:
        return None
    last = curated.iloc[-1]
    return str(last["old_label"]), str(last["old_source"])


def _derive(
    votes: list[FeedbackItem], base: tuple[str, str] | None, k: int, min_agreement: float
) -> tuple[str, list[FeedbackItem]] | None:
    """The label the remaining ``votes`` give (and the votes that count), or None when the
    text should fall back to ``base`` (or, without one, leave the data)."""
    latest = {reviewer(v.user): v for v in sorted(votes, key=lambda v: v.id)}
    counts = Counter(v.label for v in latest.values())
    if not counts:
        return None
    top = max(counts.values())
    leaders = [label for label, n in counts.items() if n == top]
    if len(leaders) > 1:
        return None
    (label,) = leaders
    if base is not None and (label == base[0] or top < k):
        return None
    if base is None and top / len(latest) < min_agreement:
        return None
    return label, list(latest.values())


def undo_revoked(params: Params, store: FeedbackStore, stamp: str) -> Undone:
    """Derive again every label revoked feedback shaped (module doc); write the labeled
    data, its corrections and quarantine when anything changed. Idempotent: rows that
    cite no revoked id are left alone."""
    revoked = {str(i) for i in store.revoked_ids()}
    if not revoked:
        return Undone(0, 0, 0)
    waiting = [h.item.id for h in store.held(pending=True) if str(h.item.id) in revoked]
    store.resolve_held(waiting, "revoked")

    paths = LabeledPaths(params)
    data = read_labeled(params)
    touched = (data["source"] == FEEDBACK_SOURCE) & data["source_id"].map(
        lambda c: bool(revoked.intersection(_ids(c)))
    )
    if not touched.any():
        return Undone(0, 0, 0)
    corrections = read_corrections(params)
    corrections_key = corrections["text"].map(normalise)
    batch_id = f"revoke-{stamp}"
    k = params.feedback.reviewers_to_override
    changes: list[dict[str, object]] = []
    removed: list[int] = []
    relabeled = revised = 0
    for i in data.index[touched]:
        row = data.loc[i]
        history = corrections[corrections_key == normalise(str(row["text"]))]
        ever = set(_ids(row["source_id"]))
        for file, ids in zip(history["new_source_file"], history["new_source_id"], strict=True):
            if str(file).startswith(FEEDBACK_SOURCE):
                ever.update(_ids(ids))
        base = _curated_before(history)
        votes = store.feedback_by_ids([int(x) for x in ever - revoked])
        derived = _derive(votes, base, k, params.label_import.min_agreement)
        old = f"{row['source']}:{row['source_file']}:{row['source_id']}"
        gone = ",".join(sorted(revoked.intersection(ever), key=int))
        if derived is not None:
            label, counted = derived
            agree = [v for v in counted if v.label == label]
            new = {
                "label": label,
                "source_id": ",".join(str(v.id) for v in agree),
                "annotator_count": str(len(counted)),
                "agreement": f"{round(len(agree) / len(counted), 4):g}",
            }
            annotators = ",".join(reviewer(v.user) for v in agree)
        elif base is not None:
            source, file, source_id = [*base[1].split(":", 2), "", ""][:3]
            new = {
                "label": base[0],
                "source": source,
                "source_file": file,
                "source_id": source_id,
                "annotator_count": None,
                "agreement": None,
            }
            annotators = ""
        else:
            removed.append(i)
            continue
        if new["label"] != row["label"]:
            relabeled += 1
            changes.append(
                {
                    "text": row["text"],
                    "old_label": row["label"],
                    "new_label": new["label"],
                    "old_source": old,
                    "new_source_file": REVOCATION,
                    "new_source_id": gone,
                    "batch_id": batch_id,
                    "corrected_at": stamp,
                    "new_annotators": annotators,
                }
            )
        else:
            revised += 1
        for column, value in {**new, "batch_id": batch_id, "imported_at": stamp}.items():
            data.loc[i, column] = value

    kept = data.drop(index=removed)
    write_csv_atomic(kept.reindex(columns=LABELED_COLUMNS), paths.labeled)
    if removed:
        out = data.loc[removed].assign(
            check=REVOCATION,
            reason=lambda d: d["source_id"].map(
                lambda c: f"its feedback ({c}) was revoked; the votes left do not settle a label"
            ),
            quarantined_at=stamp,
        )
        append_rows(paths.quarantine, out, QUARANTINE_COLUMNS)
    if changes:
        append_rows(paths.corrections, pd.DataFrame(changes), CORRECTION_COLUMNS)
    done = Undone(relabeled=relabeled, removed=len(removed), revised=revised)
    log.info(
        "revoked feedback undone: %d label(s) changed back, %d text(s) removed, %d revised",
        done.relabeled,
        done.removed,
        done.revised,
    )
    return done
