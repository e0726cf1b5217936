"""The feedback policy: which feedback rows become votes on the labeled data.

Feedback comes from principals (the API key a reviewer sent it with), so one
principal is one reviewer however many predictions of a text they correct.
Before anything is merged:

- **Daily cap.** A reviewer's corrections beyond
  ``feedback.max_corrections_per_reviewer_per_day`` in a UTC day wait in the
  conflicts queue for a person: a flood from one key cannot swamp the data or
  push the live accuracy under its floor.
- **Curated labels need k reviewers.** A text whose label came from curated
  labels (the seed, or an annotator import, now or before a later correction)
  keeps that label until ``feedback.reviewers_to_override`` distinct reviewers
  agree on the same other label. Until then the contradicting rows wait in the
  conflicts queue; every later ingestion counts them again with the new votes,
  so two reviewers a week apart still make two. A conflict a person settled (an
  annotator import labeled the text after it was queued, e.g. from
  ``slmops export-review --conflicts``) leaves the queue.
- Everything else (new texts, texts that came from feedback) is voted on as
  any label import is: majority per text, ties and low agreement quarantined.

Predictions alone are never votes: only feedback rows are. Feedback stored
without a principal (before keys existed) counts as one reviewer, "anonymous".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import pandas as pd

from slmops.tasks.core.config import FeedbackConfig
from slmops.tasks.data.dataset import normalise
from slmops.tasks.feedback.store import Held, HeldItem

ANONYMOUS = "anonymous"
CURATED_SOURCES = ("seed", "import")
# ``check`` names of held rows: what set them aside.
CHECK_CURATED = "curated_label"
CHECK_DAILY_CAP = "daily_cap"

# corrections_by(user, day_start, day_end, before_id) -> corrections already sent that day
CountCorrections = Callable[[str | None, datetime, datetime, int], int]


@dataclass(frozen=True)
class Decision:
    """What the policy made of a batch of feedback."""

    votes: pd.DataFrame  # feedback rows to merge (the batch's and accepted conflicts')
    hold: list[Held] = field(default_factory=list)  # rows for the conflicts queue
    accepted_conflicts: list[int] = field(default_factory=list)  # waiting ids now votes
    # Waiting ids a person settled since: an annotator import labeled the text after.
    settled_conflicts: list[int] = field(default_factory=list)


def reviewer(user: object) -> str:
    """The reviewer a feedback row counts for: its principal, else :data:`ANONYMOUS`."""
    if user is None or (isinstance(user, float) and pd.isna(user)) or not str(user).strip():
        return ANONYMOUS
    return str(user)


def curated_texts(labeled: pd.DataFrame, corrections: pd.DataFrame) -> dict[str, str]:
    """Normalised text -> the curated source its label came from, for every text whose
    label is curated now or was before feedback corrected it."""
    out: dict[str, str] = {}
    for text, old_source in zip(corrections["text"], corrections["old_source"], strict=True):
        source = str(old_source).split(":", 1)[0]
        if source in CURATED_SOURCES and isinstance(text, str):
            out[normalise(text)] = source
    mine = labeled["source"].isin(CURATED_SOURCES)
    for text, source in zip(labeled.loc[mine, "text"], labeled.loc[mine, "source"], strict=True):
        out[normalise(str(text))] = str(source)
    return out


def _over_cap(batch: pd.DataFrame, cap: int, count: CountCorrections) -> pd.Series:
    """Per batch row: True for a correction past its reviewer's cap for its UTC day."""
    over = pd.Series(False, index=batch.index)
    if batch.empty:
        return over
    first_id = int(batch["feedback_id"].min())
    corrections = batch[batch["kind"] == "correction"].sort_values("feedback_id")
    sent: dict[tuple[object, object], int] = {}
    for idx, user, created in zip(
        corrections.index, corrections["user"], corrections["created_at"], strict=True
    ):
        day = pd.Timestamp(created).tz_convert("UTC").date()
        key = (None if reviewer(user) == ANONYMOUS else user, day)
        if key not in sent:
            start = datetime.combine(day, time(), tzinfo=UTC)
            sent[key] = count(key[0], start, start + timedelta(days=1), first_id)
        sent[key] += 1
        over[idx] = sent[key] > cap
    return over


def _held_frame(items: Iterable[HeldItem]) -> pd.DataFrame:
    rows = [
        (
            h.item.id,
            h.item.prediction_id,
            h.item.text,
            h.item.label,
            h.item.kind,
            h.item.user,
            h.held_at,
        )
        for h in items
    ]
    columns = ["feedback_id", "prediction_id", "text", "label", "kind", "user", "held_at"]
    return pd.DataFrame(rows, columns=columns)


def _imported_at(labeled: pd.DataFrame) -> dict[str, pd.Timestamp]:
    """Normalised text -> when an annotator import last set its label."""
    mine = labeled[(labeled["source"] == "import") & labeled["imported_at"].notna()]
    return {
        normalise(str(t)): pd.Timestamp(a)
        for t, a in zip(mine["text"], mine["imported_at"], strict=True)
    }


def decide(
    batch: pd.DataFrame,
    pending: list[HeldItem],
    labeled: pd.DataFrame,
    corrections: pd.DataFrame,
    config: FeedbackConfig,
    count_corrections: CountCorrections,
    strip: Callable[[str, str], tuple[str, str]],
) -> Decision:
    """Apply the policy (module doc) to a batch of feedback rows.

    ``batch`` has the ingestion's feedback columns plus ``kind`` and ``created_at``;
    ``pending`` are the conflicts still waiting (looked at again here); ``labeled`` and
    ``corrections`` are the labeled data and its correction history;
    ``count_corrections`` counts a reviewer's corrections before the batch (the daily
    cap); ``strip`` gives a text and its label as the labeled data holds them.
    """
    k = config.reviewers_to_override
    cap = config.max_corrections_per_reviewer_per_day
    over = _over_cap(batch, cap, count_corrections)
    hold = [
        Held(
            int(fid),
            "conflict",
            CHECK_DAILY_CAP,
            f"reviewer {reviewer(user)!r} sent more than {cap} corrections on "
            f"{pd.Timestamp(created).tz_convert('UTC').date()} "
            "(feedback.max_corrections_per_reviewer_per_day)",
        )
        for fid, user, created in zip(
            batch.loc[over, "feedback_id"],
            batch.loc[over, "user"],
            batch.loc[over, "created_at"],
            strict=True,
        )
    ]
    recount = [h for h in pending if h.check == CHECK_CURATED]
    rows = pd.concat(
        [batch.loc[~over].assign(pending=False), _held_frame(recount).assign(pending=True)],
        ignore_index=True,
    )
    if rows.empty:
        return Decision(votes=rows, hold=hold)
    keys = [
        normalise(strip(str(t), str(c))[0])
        for t, c in zip(rows["text"], rows["label"], strict=True)
    ]
    rows = rows.assign(_key=keys, _reviewer=rows["user"].map(reviewer))

    curated = curated_texts(labeled, corrections)
    current = dict(
        zip(labeled["text"].map(lambda t: normalise(str(t))), labeled["label"], strict=True)
    )
    imported = _imported_at(labeled)
    keep = pd.Series(True, index=rows.index)
    settled: list[int] = []
    for key, g in rows.groupby("_key", sort=False):
        if key not in curated or key not in current:
            continue
        if key in imported:
            # The conflicts export went to annotators and their label came back: a
            # person decided, so what waited before it no longer counts.
            # (imported_at is kept to the second: compare at that precision)
            held_at = pd.to_datetime(g["held_at"], utc=True).dt.floor("s")
            done = g["pending"] & (held_at <= imported[key])
            settled += [int(i) for i in g.loc[done, "feedback_id"]]
            keep[g.index[done]] = False
            g = g[~done]
        label = str(current[key])
        latest = g.sort_values("feedback_id").groupby("_reviewer")["label"].last()
        against = Counter(str(c) for c in latest if str(c) != label)
        if not against:
            continue  # every reviewer agrees with the curated label
        n = max(against.values())
        tied = sum(1 for c in against.values() if c == n) > 1
        if n >= k and not tied:
            continue
        contra = g[g["label"].astype(str) != label]
        keep[contra.index] = False
        tally = ", ".join(f"{c!r}: {m}" for c, m in against.most_common())
        hold += [
            Held(
                int(fid),
                "conflict",
                CHECK_CURATED,
                f"contradicts the curated label {label!r} ({curated[key]}); "
                f"{k} distinct reviewers must agree to change it (reviewers so far: {tally})",
            )
            for fid in contra.loc[~contra["pending"], "feedback_id"]
        ]
    votes = rows.loc[keep]
    # A waiting conflict that is a vote now (enough reviewers, or the label moved to it)
    # leaves the queue.
    accepted = [int(i) for i in votes.loc[votes["pending"], "feedback_id"]]
    votes = votes.drop(columns=["pending", "_key", "_reviewer"]).reset_index(drop=True)
    return Decision(votes=votes, hold=hold, accepted_conflicts=accepted, settled_conflicts=settled)
