"""Feedback ingestion: users' corrections become a new version of the labeled data.

Exactly once, whatever is killed when. Each feedback row carries its id into
the labeled data (``source_id``), so the order of work is:

1. read the feedback after the watermark;
2. drop ids the labeled data (or its quarantine) already holds, from a run
   that was killed before it advanced the watermark;
3. merge the rest like any label import (majority per text, conflicting
   corrections quarantined, the same validation gate), ``dvc add`` + push;
4. commit ``data/labeled.dvc`` to git with a message that says what came in;
5. only then advance the watermark.

A crash before 5 re-reads the same feedback next time and step 2 finds it;
nothing is lost and nothing is added twice.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.core.lock import project_lock
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.data.dataset import LabeledPaths, read_labeled, read_table
from slmops.tasks.data.versioning import data_hash, track
from slmops.tasks.feedback.store import FeedbackItem, FeedbackStore
from slmops.tasks.labels.importer import ImportSummary, merge_votes
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

    @property
    def new_labels(self) -> int:
        """Rows added or corrected by this ingestion."""
        return (self.summary.added + self.summary.corrected) if self.summary else 0


def feedback_frame(items: list[FeedbackItem]) -> pd.DataFrame:
    """Feedback items (as the store returns them) as a frame of :data:`FEEDBACK_COLUMNS`."""
    df = pd.DataFrame(
        [
            (i.id, i.prediction_id, i.text, i.label, i.predicted_label, i.model_version, i.user)
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
    """One vote per feedback row; anonymous feedback votes once per prediction.

    Texts lose surrounding whitespace as all labeled texts do; ``task`` moves the label
    with them (entity offsets).
    """
    annotator = feedback["user"].where(
        feedback["user"].notna() & (feedback["user"].astype(str).str.strip() != ""),
        "prediction:" + feedback["prediction_id"].astype(str),
    )
    stripped = [
        task.strip(str(t), str(c)) for t, c in zip(feedback["text"], feedback["label"], strict=True)
    ]
    votes = pd.DataFrame(
        {
            "text": [t for t, _ in stripped],
            "label": [c for _, c in stripped],
            "annotator": annotator.astype(str),
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


def _message(first: int, last: int, summary: ImportSummary | None, live: dict) -> str:
    if summary is None:
        head = f"data: feedback {first}-{last} (recorded after an interrupted ingestion)"
    else:
        head = (
            f"data: feedback {first}-{last}: {summary.added} added, "
            f"{summary.corrected} corrected, {summary.quarantined} quarantined"
        )
    lines = [head, ""]
    lines += [
        f"model version {v}: live accuracy {m['accuracy']:.4f} on {m['n']} feedback rows"
        for v, m in live.items()
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
    """Merge the feedback after the watermark into the labeled data (see module doc)."""
    with project_lock(params, "ingest feedback"):
        return _ingest_feedback(params, store, task, now=now, limit=limit)


def _ingest_feedback(
    params: Params,
    store: FeedbackStore,
    task: TaskType,
    *,
    now: datetime | None = None,
    limit: int | None = None,
) -> IngestResult:
    now = now or datetime.now(UTC)
    before = watermark(store)
    feedback = feedback_frame(
        store.feedback_since(before, limit=limit, settle_seconds=params.feedback.settle_seconds)
    )
    if feedback.empty:
        return IngestResult(0, 0, None, {}, before, before)
    first, last = before + 1, int(feedback["feedback_id"].max())
    live = live_accuracy(feedback)

    seen = ingested_ids(params)
    done = feedback["feedback_id"].astype(str).isin(seen)
    todo = feedback.loc[~done]
    summary = None
    if len(todo):
        summary = merge_votes(
            votes_from_feedback(todo, task),
            params,
            task,
            source=f"feedback {first}-{last}",
            batch_id=f"feedback-{first}-{last}",
            kind=FEEDBACK_KIND,
            now=now,
            version=False,
            quarantine_unknown_labels=True,
        )
    notes = []
    if done.any():
        notes.append(f"{int(done.sum())} feedback row(s) were already in the data")
    paths = LabeledPaths(params)
    # Also after an interrupted run whose data was written but not yet recorded.
    if (summary is not None and summary.changed) or done.any():
        track([paths.dir], params.root, push=params.dvc.push)
    version = data_hash(paths.dir) if paths.dir.with_suffix(".dvc").exists() else None
    commit = None
    if params.feedback.git_commit:
        commit = commit_data_version(params, _message(first, last, summary, live))
    store.set_watermark(WATERMARK, last)
    log.info(
        "feedback %d-%d: %s; watermark %d → %d",
        first,
        last,
        "nothing new"
        if summary is None
        else f"{summary.added} added, {summary.corrected} "
        f"corrected, {summary.quarantined} quarantined",
        before,
        last,
    )
    return IngestResult(
        read=len(feedback),
        already_in_data=int(done.sum()),
        summary=summary,
        live=live,
        watermark_before=before,
        watermark_after=last,
        commit=commit,
        version=version,
        notes=notes,
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
