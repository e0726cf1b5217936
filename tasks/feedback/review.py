"""Export the review queue for annotators: Label Studio tasks or a CSV to fill in.

The least confident unreviewed predictions (:meth:`FeedbackStore.review_queue`)
go out with the model's answer attached. In Label Studio the answer is a
*prediction* (a pre-annotation the annotator accepts or changes), never an
annotation, so an export of the project read back by ``slmops import-labels``
counts only what people chose. In the CSV the ``label`` column is left empty
for the reviewer; rows still empty at import are kept aside as "empty label".
Its cells are escaped for spreadsheets (a text starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return gets a leading ``'``, so that a text sent to
``/predict`` never runs as a formula on the reviewer's machine); the
``formula_escape`` column marks the rows, and the label import gives the texts
back exactly as they were.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from slmops.tasks.core.config import Params, TaskName
from slmops.tasks.data.dataset import escape_formulas, write_csv_atomic, write_json_atomic
from slmops.tasks.feedback.store import FeedbackStore, HeldItem, PredictionRecord

ExportFormat = Literal["label-studio", "csv"]
Control = Literal["choices", "labels"]
# The choices control of the usual Label Studio text-classification config, used
# when label_import.label_studio.from_name does not name one.
DEFAULT_FROM_NAME = "label"


def _result(
    control: Control, label: str, text: str, from_name: str, to_name: str
) -> list[dict[str, Any]]:
    """The result of a pre-annotation: one choice, or for ``labels`` (token
    classification: ``label`` is canonical span JSON ``[[start, end, type], ...]``) one
    region per span; a label that is not span JSON gives no region."""
    base = {"from_name": from_name, "to_name": to_name, "type": control}
    if control == "choices":
        return [{**base, "value": {"choices": [label]}}]
    try:
        spans = json.loads(label)
    except (TypeError, json.JSONDecodeError):
        return []
    regions = []
    for span in spans if isinstance(spans, list) else []:
        if not (isinstance(span, list) and len(span) == 3):
            continue
        start, end, kind = span
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            continue
        value = {"start": start, "end": end, "text": text[start:end], "labels": [str(kind)]}
        regions.append({**base, "value": value})
    return regions


def label_studio_task(
    data: dict[str, Any],
    proposals: list[tuple[str, float | None, str]],
    text_field: str,
    from_name: str,
    control: Control = "choices",
) -> dict[str, Any]:
    """One Label Studio task: ``data`` with each (source, score, label) proposal as a
    pre-annotation (a prediction, never an annotation) of a ``choices`` control
    (sequence classification) or a ``labels`` span control (token classification)."""
    predictions = []
    text = str(data.get(text_field, ""))
    for source, score, label in proposals:
        prediction: dict[str, Any] = {
            "model_version": source,
            "result": _result(control, label, text, from_name, text_field),
        }
        if score is not None:
            prediction["score"] = score
        predictions.append(prediction)
    return {"data": data, "predictions": predictions}


def control_of(params: Params) -> Control:
    """The Label Studio control that labels this project's task: ``labels`` (spans over
    the text) for token classification, ``choices`` otherwise."""
    return "labels" if params.task == TaskName.token_classification else "choices"


def review_key(data: dict[str, Any], text_field: str) -> str | None:
    """What identifies a review task across pushes: its prediction id, or for a conflict
    its text (one task per conflicting text); None for a task this module did not make."""
    if data.get("prediction_id") not in (None, ""):
        return f"prediction:{data['prediction_id']}"
    if data.get("feedback_ids") not in (None, ""):
        return f"conflict:{str(data.get(text_field, '')).strip()}"
    return None


# What an export holds per item: the Label Studio task's data, its proposals
# (source, score, label), and the row of the CSV to fill in.
Item = tuple[dict[str, Any], list[tuple[str, float | None, str]], dict[str, Any]]


def _prediction_items(queue: list[PredictionRecord], params: Params) -> list[Item]:
    text_field, csv = params.label_import.label_studio.text_field, params.label_import.csv
    return [
        (
            {text_field: p.text, "prediction_id": p.id},
            [(f"{p.model_name}/{p.model_version}", p.confidence, p.label)],
            {
                "prediction_id": p.id,
                csv.text_column: p.text,
                "predicted_label": p.label,
                "confidence": round(p.confidence, 4),
                "model_version": p.model_version,
                csv.label_column: "",
            },
        )
        for p in queue
    ]


def _conflict_items(held: list[HeldItem], params: Params) -> list[Item]:
    """The conflicts queue per text: the labels reviewers proposed, by whom, and why
    they wait."""
    texts: dict[str, tuple[list[str], dict[str, list[str]], str]] = {}
    for h in held:
        ids, proposals, _ = texts.setdefault(h.item.text, ([], {}, h.reason))
        ids.append(str(h.item.id))
        proposals.setdefault(h.item.label, []).append(h.item.user or "anonymous")
    text_field, csv = params.label_import.label_studio.text_field, params.label_import.csv
    items: list[Item] = []
    for text, (ids, proposals, reason) in texts.items():
        feedback_ids = ",".join(ids)
        items.append(
            (
                {text_field: text, "feedback_ids": feedback_ids, "reason": reason},
                [(f"feedback/{','.join(w)}", None, label) for label, w in proposals.items()],
                {
                    "feedback_ids": feedback_ids,
                    csv.text_column: text,
                    "proposed": "; ".join(f"{c} ({', '.join(w)})" for c, w in proposals.items()),
                    "reason": reason,
                    csv.label_column: "",
                },
            )
        )
    return items


def review_items(
    params: Params,
    store: FeedbackStore,
    *,
    limit: int,
    since: datetime | None = None,
    conflicts: bool = False,
    skip: Collection[str] = (),
) -> list[Item]:
    """Up to ``limit`` items of the review queue (or of the conflicts queue), leaving out
    those whose :func:`review_key` is in ``skip`` (already sent)."""
    text_field = params.label_import.label_studio.text_field
    if conflicts:
        items = _conflict_items(store.held("conflict"), params)
    else:
        # Ask for more than the limit: the items already sent come first in the queue.
        queue = store.review_queue(limit + len(skip), since=since)
        items = _prediction_items(queue, params)
    kept = [item for item in items if review_key(item[0], text_field) not in skip]
    return kept[:limit]


def review_tasks(params: Params, items: list[Item]) -> list[dict[str, Any]]:
    """The Label Studio tasks of review items, with the model's (or reviewers') answers
    as predictions of the control the project's task needs."""
    ls = params.label_import.label_studio
    from_name = ls.from_name or DEFAULT_FROM_NAME
    control = control_of(params)
    return [label_studio_task(d, p, ls.text_field, from_name, control) for d, p, _ in items]


def export_review(
    params: Params,
    out: Path,
    *,
    limit: int | None = None,
    fmt: ExportFormat = "label-studio",
    since: datetime | None = None,
    conflicts: bool = False,
) -> int:
    """Write the review queue to ``out`` (atomically); return how many items it holds.

    ``limit`` defaults to ``serve.review_limit``; ``since`` keeps only
    predictions made at or after that time. With ``conflicts`` the items are the
    texts of the feedback conflicts queue instead, each with the labels reviewers
    proposed (a person's label for them, imported back, is curated and settles it).
    """
    if fmt not in ("label-studio", "csv"):
        raise ValueError(f"format {fmt!r}: expected 'label-studio' or 'csv'")
    limit = limit or params.serve.review_limit
    with FeedbackStore.from_params(params) as store:
        items = review_items(params, store, limit=limit, since=since, conflicts=conflicts)
    if conflicts:
        extra = ("feedback_ids", "proposed", "reason")
    else:
        extra = ("prediction_id", "predicted_label", "confidence", "model_version")
    out = params.path(out)
    if fmt == "label-studio":
        write_json_atomic(review_tasks(params, items), out)
    else:
        csv = params.label_import.csv
        # Named columns: an empty queue still writes the header the import expects.
        columns = [extra[0], csv.text_column, *extra[1:], csv.label_column]
        frame = pd.DataFrame([row for _, _, row in items], columns=columns)
        write_csv_atomic(escape_formulas(frame, mark=True), out)
    return len(items)
