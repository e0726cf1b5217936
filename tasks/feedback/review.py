"""Export the review queue for annotators: Label Studio tasks or a CSV to fill in.

The least confident unreviewed predictions (:meth:`FeedbackStore.review_queue`)
go out with the model's answer attached. In Label Studio the answer is a
*prediction* (a pre-annotation the annotator accepts or changes), never an
annotation, so an export of the project read back by ``slmops import-labels``
counts only what people chose. In the CSV the ``label`` column is left empty
for the reviewer; rows still empty at import are kept aside as "empty label".
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.data.dataset import write_csv_atomic, write_json_atomic
from slmops.tasks.feedback.store import FeedbackStore, PredictionRecord

ExportFormat = Literal["label-studio", "csv"]
# The choices control of the usual Label Studio text-classification config, used
# when label_import.label_studio.from_name does not name one.
DEFAULT_FROM_NAME = "label"


def label_studio_task(p: PredictionRecord, text_field: str, from_name: str) -> dict[str, Any]:
    """One Label Studio task: the text, with the model's answer as a pre-annotation."""
    return {
        "data": {text_field: p.text, "prediction_id": p.id},
        "predictions": [
            {
                "model_version": f"{p.model_name}/{p.model_version}",
                "score": p.confidence,
                "result": [
                    {
                        "from_name": from_name,
                        "to_name": text_field,
                        "type": "choices",
                        "value": {"choices": [p.label]},
                    }
                ],
            }
        ],
    }


def export_review(
    params: Params,
    out: Path,
    *,
    limit: int | None = None,
    fmt: ExportFormat = "label-studio",
    since: datetime | None = None,
) -> int:
    """Write the review queue to ``out`` (atomically); return how many items it holds.

    ``limit`` defaults to ``serve.review_limit``; ``since`` keeps only
    predictions made at or after that time.
    """
    with FeedbackStore.from_params(params) as store:
        queue = store.review_queue(limit or params.serve.review_limit, since=since)
    out = params.path(out)
    if fmt == "label-studio":
        ls = params.label_import.label_studio
        tasks = [
            label_studio_task(p, ls.text_field, ls.from_name or DEFAULT_FROM_NAME) for p in queue
        ]
        write_json_atomic(tasks, out)
    elif fmt == "csv":
        cfg = params.label_import.csv
        frame = pd.DataFrame(
            {
                "prediction_id": [p.id for p in queue],
                cfg.text_column: [p.text for p in queue],
                "predicted_label": [p.label for p in queue],
                "confidence": [round(p.confidence, 4) for p in queue],
                "model_version": [p.model_version for p in queue],
                cfg.label_column: [""] * len(queue),
            }
        )
        write_csv_atomic(frame, out)
    else:
        raise ValueError(f"format {fmt!r}: expected 'label-studio' or 'csv'")
    return len(queue)
