"""Feedback ingestion: users' corrections become a new version of the labeled data.

Exactly once, whatever is killed when, in bounded chunks. Each feedback row
carries its id into the labeled data (``source_id``), so the order of work for
each chunk (``feedback.ingest_chunk_rows`` rows, then as many as the run has
read so far, so that a backlog of n rows takes O(log n) chunks) is:

1. read the feedback after the watermark;
2. drop ids the labeled data (or its quarantine) already holds, from a run
   that was killed before it advanced the watermark, and ids already set aside
   or revoked;
3. apply the feedback policy (:mod:`.policy`): a reviewer's corrections past the
   daily cap, and corrections of curated labels fewer than
   ``feedback.reviewers_to_override`` reviewers agree on, wait in the conflicts
   queue; waiting conflicts are counted again with the new votes;
4. merge the rest like any label import (majority per text, conflicting
   corrections quarantined, the same validation gate); rows that would make a
   check of the whole data set fail go to the dead-letter queue with the reason
   instead of stopping the batch; ``dvc add`` + push;
5. commit ``data/labeled.dvc`` to git with a message that says what came in;
6. only then advance the watermark.

A crash before 6 re-reads the same feedback next time and step 2 finds it;
nothing is lost and nothing is added twice. Revoked feedback is undone first
(:mod:`.revocation`).
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from slmops.tasks.core import notify
from slmops.tasks.core.config import NotifyEvent, Params
from slmops.tasks.core.lock import project_lock
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.data.dataset import LabeledPaths, read_corrections, read_labeled, read_table
from slmops.tasks.data.versioning import data_hash, track
from slmops.tasks.feedback.policy import decide, reviewer
from slmops.tasks.feedback.revocation import Undone, undo_revoked
from slmops.tasks.feedback.store import FeedbackItem, FeedbackStore, Held
from slmops.tasks.labels.importer import DeadLetter, ImportSummary, merge_votes
from slmops.tasks.labels.sources import VoteTable

log = logging.getLogger(__name__)

WATERMARK = "labeled"  # feedback ids up to this one are in the labeled data
RETRAIN_MARK = "retrain"  # feedback ids up to this one were in the data of a triggered retrain
FEEDBACK_KIND = "feedback"

FEEDBACK_COLUMNS = (
    "feedback_id",
    "prediction_id",
    "text",
    "label",
    "predicted_label",
    "model_version",
    "user",
    "kind",
    "created_at",
)


@dataclass(frozen=True)
class IngestResult:
    """What one ingestion did."""

    read: int  # feedback rows after the watermark
    already_in_data: int  # of those, found in the data (an interrupted earlier run)
    summary: ImportSummary | None  # the merge, when there was something to merge
    live: dict[str, dict[str, float]]  # model version -> {"n", "accuracy"} on this feedback
    watermark_before: int
    watermark_after: int
    commit: str | None = None  # git commit of data/labeled.dvc
    version: str | None = None  # DVC hash of data/labeled afterwards
    notes: list[str] = field(default_factory=list)
    conflicts: int = 0  # rows newly put in the conflicts queue
    dead_letters: list[DeadLetter] = field(default_factory=list)  # texts set aside for good
    skipped: int = 0  # rows already set aside or revoked (not merged)
    undone: Undone | None = None  # what undoing revoked feedback changed first

    @property
    def new_labels(self) -> int:
        """Rows added or corrected by this ingestion."""
        return (self.summary.added + self.summary.corrected) if self.summary else 0


def feedback_frame(items: list[FeedbackItem]) -> pd.DataFrame:
    """Feedback items (as the store returns them) as a frame of :data:`FEEDBACK_COLUMNS`."""
    df = pd.DataFrame(
        [
            (
                i.id,
                i.prediction_id,
                i.text,
                i.label,
                i.predicted_label,
                i.model_version,
                i.user,
                i.kind,
                i.created_at,
            )
            for i in items
        ],
        columns=list(FEEDBACK_COLUMNS),
    )
    df["feedback_id"] = df["feedback_id"].astype("int64")
    return df


def watermark(store: FeedbackStore, name: str = WATERMARK) -> int:
    """The last feedback id consumer ``name`` has ingested (0: none yet)."""
    mark = store.get_watermark(name)
    return mark.last_feedback_id if mark else 0


def ingested_ids(params: Params) -> set[str]:
    """Feedback ids already in the labeled data or its quarantine."""
    paths = LabeledPaths(params)
    frames = [read_labeled(params)]
    if paths.quarantine.exists():
        frames.append(read_table(paths.quarantine, required=("source", "source_id")))
    ids: set[str] = set()
    for df in frames:
        mine = df.loc[df["source"] == FEEDBACK_KIND, "source_id"].dropna().astype(str)
        for joined in mine:
            ids.update(joined.split(","))  # several votes for one text share a row
    return ids


def live_accuracy(feedback: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per model version: how often the served answer was the label users gave."""
    out: dict[str, dict[str, float]] = {}
    for version, g in feedback.groupby(feedback["model_version"].astype(str), sort=True):
        out[version] = {
            "n": len(g),
            "accuracy": round(float((g["label"] == g["predicted_label"]).mean()), 4),
        }
    return out


def votes_from_feedback(feedback: pd.DataFrame, task: TaskType) -> VoteTable:
    """One vote per feedback row, cast by its reviewer (:func:`.policy.reviewer`: feedback
    without a principal is one reviewer, ``anonymous``, however many predictions it names).

    Texts lose surrounding whitespace as all labeled texts do; ``task`` moves the label
    with them (entity offsets).
    """
    stripped = [
        task.strip(str(t), str(c)) for t, c in zip(feedback["text"], feedback["label"], strict=True)
    ]
    votes = pd.DataFrame(
        {
            "text": [t for t, _ in stripped],
            "label": [c for _, c in stripped],
            "annotator": feedback["user"].map(reviewer).astype(str),
            "source_id": feedback["feedback_id"].astype(str),
        }
    )
    rejected = pd.DataFrame(columns=["text", "label", "source_id", "reason"], dtype=str)
    return VoteTable(votes=votes, rejected=rejected, fmt=FEEDBACK_KIND)


def commit_data_version(params: Params, message: str) -> str | None:
    """Commit ``data/labeled.dvc`` (only that file) to git; its sha, or None if unchanged.

    Outside a git repository this is skipped with a warning: the DVC version
    is still recorded and pushed.
    """
    root = params.root
    dvc_file = LabeledPaths(params).dir.with_suffix(".dvc")

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        log.warning("%s is not a git repository: %s not committed", root, dvc_file.name)
        return None
    rel = str(dvc_file.relative_to(root))
    if git("status", "--porcelain", "--", rel).stdout.strip() == "":
        return None
    added = git("add", "--", rel)
    done = git("commit", "-q", "-m", message, "--", rel) if added.returncode == 0 else added
    if done.returncode != 0:
        raise RuntimeError(
            f"git commit of {rel} failed: {done.stderr.strip() or done.stdout.strip()} "
            "(the data version is recorded and pushed; fix git, e.g. user.name/user.email, and "
            "re-run to commit it, or set feedback.git_commit: false)"
        )
    return git("rev-parse", "HEAD").stdout.strip()


def _message(first: int, last: int, result: IngestResult) -> str:
    summary = result.summary
    if summary is None:
        head = f"data: feedback {first}-{last} (recorded after an interrupted ingestion)"
    else:
        head = (
            f"data: feedback {first}-{last}: {summary.added} added, "
            f"{summary.corrected} corrected, {summary.quarantined} quarantined"
        )
    lines = [head, ""]
    if result.conflicts or result.dead_letters:
        lines.append(
            f"set aside: {result.conflicts} in the conflicts queue, "
            f"{len(result.dead_letters)} text(s) dead-lettered"
        )
    lines += [
        f"model version {v}: live accuracy {m['accuracy']:.4f} on {m['n']} feedback rows"
        for v, m in result.live.items()
    ]
    return "\n".join(lines)


def ingest_feedback(
    params: Params,
    store: FeedbackStore,
    task: TaskType,
    *,
    now: datetime | None = None,
    limit: int | None = None,
) -> IngestResult:
    """Merge the feedback after the watermark into the labeled data (see module doc);
    at most ``limit`` rows (None: all), in chunks of ``feedback.ingest_chunk_rows`` rows
    that then double."""
    with project_lock(params, "ingest feedback"):
        now = now or datetime.now(UTC)
        before = watermark(store)
        undone = undo_revoked(params, store, now.isoformat(timespec="seconds"))
        if undone.changed:
            _record(params, f"data: revoked feedback undone: {_undone(undone)}")
        parts: list[IngestResult] = []
        left = limit
        while left is None or left > 0:
            # Every chunk rewrites and re-hashes the whole labeled data set: chunks that
            # grow with what this run has read keep a large backlog linear, not quadratic.
            chunk = max(params.feedback.ingest_chunk_rows, sum(p.read for p in parts))
            size = chunk if left is None else min(chunk, left)
            part = _ingest_chunk(params, store, task, now, size)
            if part is None:
                break
            parts.append(part)
            left = None if left is None else left - part.read
            if part.read < size:
                break  # fewer than asked: nothing more has settled yet
        result = replace(combine(parts, before), undone=undone)
    if result.dead_letters:
        # notify.send never raises and never logs the URL.
        notify.send(params, NotifyEvent.feedback_dead_lettered, dead_letter_payload(result))
    return result


def dead_letter_payload(result: IngestResult, shown: int = 20) -> dict[str, Any]:
    """The webhook body for dead-lettered feedback: how many, and the first few reasons."""
    return {
        "feedback_ids": f"{result.watermark_before + 1}-{result.watermark_after}",
        "dead_lettered": len(result.dead_letters),
        "rows": [
            {"feedback_ids": d.source_id, "check": d.check, "reason": d.reason}
            for d in result.dead_letters[:shown]
        ],
    }


def _undone(u: Undone) -> str:
    return f"{u.relabeled} label(s) changed, {u.removed} text(s) removed, {u.revised} revised"


def _record(params: Params, message: str) -> str | None:
    """``dvc add`` (+ push) the labeled data and commit its .dvc file with ``message``."""
    track([LabeledPaths(params).dir], params.root, push=params.dvc.push)
    return commit_data_version(params, message) if params.feedback.git_commit else None


def _ingest_chunk(
    params: Params, store: FeedbackStore, task: TaskType, now: datetime, size: int
) -> IngestResult | None:
    """One chunk of :func:`ingest_feedback`: up to ``size`` rows after the watermark,
    merged, versioned, committed and watermarked; None when there is nothing to read."""
    before = watermark(store)
    feedback = feedback_frame(
        store.feedback_since(before, limit=size, settle_seconds=params.feedback.settle_seconds)
    )
    if feedback.empty:
        return None
    first, last = before + 1, int(feedback["feedback_id"].max())

    seen = ingested_ids(params)
    revoked = store.revoked_ids()
    set_aside = store.held_ids() | revoked
    ids = feedback["feedback_id"]
    done = ids.astype(str).isin(seen)
    skipped = ~done & ids.isin(set_aside)
    todo = feedback.loc[~done & ~skipped]
    summary, conflicts, dead, waits = None, 0, [], set()
    if len(todo):
        # A waiting conflict already in the data was accepted by a run killed before
        # it could say so: it is resolved below with the others.
        waiting = [h for h in store.held("conflict") if h.item.id not in revoked]
        in_data = [h.item.id for h in waiting if str(h.item.id) in seen]
        decision = decide(
            todo,
            [h for h in waiting if h.item.id not in in_data],
            read_labeled(params),
            read_corrections(params),
            params.feedback,
            store.corrections_by,
            task.strip,
        )
        conflicts = store.hold(decision.hold)
        waits = {h.feedback_id for h in decision.hold}
        if len(decision.votes):
            summary = merge_votes(
                votes_from_feedback(decision.votes, task),
                params,
                task,
                source=f"feedback {first}-{last}",
                batch_id=f"feedback-{first}-{last}",
                kind=FEEDBACK_KIND,
                now=now,
                version=False,
                quarantine_unknown_labels=True,
                dead_letter=True,
            )
            dead = summary.dead_letters
            store.hold(
                [
                    Held(int(i), "dead_letter", d.check, d.reason)
                    for d in dead
                    for i in d.source_id.split(",")
                ]
            )
        store.resolve_held([*decision.accepted_conflicts, *in_data], "accepted")
        store.resolve_held(decision.settled_conflicts, "settled")
    # Live accuracy counts what the policy let through: a flood of corrections from one
    # key, waiting in the conflicts queue, must not force a retrain.
    live = live_accuracy(feedback.loc[~skipped & ~ids.isin(waits)])
    notes = []
    if done.any():
        notes.append(f"{int(done.sum())} feedback row(s) were already in the data")
    paths = LabeledPaths(params)
    # Also after an interrupted run whose data was written but not yet recorded.
    if (summary is not None and summary.changed) or done.any():
        track([paths.dir], params.root, push=params.dvc.push)
    version = data_hash(paths.dir) if paths.dir.with_suffix(".dvc").exists() else None
    result = IngestResult(
        read=len(feedback),
        already_in_data=int(done.sum()),
        summary=summary,
        live=live,
        watermark_before=before,
        watermark_after=last,
        version=version,
        notes=notes,
        conflicts=conflicts,
        dead_letters=dead,
        skipped=int(skipped.sum()),
    )
    commit = None
    if params.feedback.git_commit:
        commit = commit_data_version(params, _message(first, last, result))
    store.set_watermark(WATERMARK, last)
    log.info(
        "feedback %d-%d: %s; %d to the conflicts queue, %d dead-lettered; watermark %d → %d",
        first,
        last,
        "nothing merged"
        if summary is None
        else f"{summary.added} added, {summary.corrected} "
        f"corrected, {summary.quarantined} quarantined",
        conflicts,
        len(dead),
        before,
        last,
    )
    for d in dead:
        log.warning("dead-lettered feedback %s (%r): %s", d.source_id, d.text[:80], d.reason)
    return replace(result, commit=commit)


def combine(parts: list[IngestResult], before: int) -> IngestResult:
    """One result for the chunks of an ingestion (live accuracy weighted by rows)."""
    if not parts:
        return IngestResult(0, 0, None, {}, before, before)
    summaries = [p.summary for p in parts if p.summary is not None]
    summary = None
    if summaries:
        counts = ("votes", "added", "corrected", "unchanged", "quarantined")
        summary = replace(
            summaries[-1],
            **{c: sum(getattr(x, c) for x in summaries) for c in counts},
            new_labels=sorted({label for x in summaries for label in x.new_labels}),
            problems=[m for x in summaries for m in x.problems],
            dead_letters=[d for x in summaries for d in x.dead_letters],
        )
    live: dict[str, dict[str, float]] = {}
    for part in parts:
        for version, m in part.live.items():
            seen = live.setdefault(version, {"n": 0, "accuracy": 0.0})
            n = seen["n"] + m["n"]
            seen["accuracy"] = (seen["accuracy"] * seen["n"] + m["accuracy"] * m["n"]) / n
            seen["n"] = n
    for m in live.values():
        m["accuracy"] = round(m["accuracy"], 4)
    last = parts[-1]
    return IngestResult(
        read=sum(p.read for p in parts),
        already_in_data=sum(p.already_in_data for p in parts),
        summary=summary,
        live=live,
        watermark_before=before,
        watermark_after=last.watermark_after,
        commit=next((p.commit for p in reversed(parts) if p.commit), None),
        version=last.version,
        notes=[n for p in parts for n in p.notes],
        conflicts=sum(p.conflicts for p in parts),
        dead_letters=[d for p in parts for d in p.dead_letters],
        skipped=sum(p.skipped for p in parts),
    )


def labels_since_retrain(params: Params, store: FeedbackStore) -> int:
    """Feedback rows in the labeled data that no triggered retrain has seen yet."""
    mark = watermark(store, RETRAIN_MARK)
    return sum(1 for i in ingested_ids(params) if i.isdigit() and int(i) > mark)


def retrain_reason(params: Params, pending_labels: int, live: dict) -> str | None:
    """Why to retrain now (the first threshold crossed), or None."""
    cfg = params.feedback
    if pending_labels >= cfg.retrain_after_labels:
        return f"{pending_labels} new feedback labels (threshold {cfg.retrain_after_labels})"
    for version, m in live.items():
        if m["n"] >= cfg.live_accuracy_min_feedback and m["accuracy"] < cfg.live_accuracy_floor:
            return (
                f"live accuracy of version {version} is {m['accuracy']:.4f} on {m['n']} "
                f"feedback rows, below the floor {cfg.live_accuracy_floor}"
            )
    return None
