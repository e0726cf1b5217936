"""Label Studio span exports (full JSON and JSON-MIN) to votes, and what is rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slmops.tasks.core.config import ImportConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.labels.sources import detect_format, read_votes, resolve_votes
from slmops.tasks.task_types import LABEL_FORMATS
from slmops.tasks.task_types.token.label_studio import is_span_export, read_label_studio_spans

CFG = ImportConfig()
TEXT = "Barack Obama visited Paris"


def region(start: Any, end: Any, *labels: Any, text: Any = None, **extra: Any) -> dict:
    value: dict[str, Any] = {"start": start, "end": end, "labels": list(labels)}
    if text is not None:
        value["text"] = text
    elif isinstance(start, int) and isinstance(end, int):
        value["text"] = TEXT[start:end]
    return {"from_name": "label", "to_name": "text", "type": "labels", "value": value, **extra}


def annotation(ann_id: int, user: int, *regions: dict, **extra: Any) -> dict:
    return {"id": ann_id, "completed_by": user, "result": list(regions), **extra}


def task(task_id: int, *annotations: dict, text: str = TEXT, **extra: Any) -> dict:
    return {"id": task_id, "data": {"text": text}, "annotations": list(annotations), **extra}


def export(tmp_path: Path, tasks: list, name: str = "export.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


PERSON = region(0, 12, "person")
PLACE = region(21, 26, "location")


def test_each_annotation_is_a_vote_with_canonical_span_json(tmp_path: Path) -> None:
    path = export(
        tmp_path,
        [
            task(
                1,
                annotation(11, 7, PLACE, PERSON),
                annotation(
                    12, 8, {"from_name": "notes", "type": "textarea", "value": {"text": ["?"]}}
                ),
                annotation(13, 9, PERSON, was_cancelled=True),
            ),
            task(2, annotation(21, 7), text="nothing to see"),
        ],
    )
    assert detect_format(path, LABEL_FORMATS) == "label_studio_spans"
    table = read_votes(path, CFG, LABEL_FORMATS)
    assert table.fmt == "label_studio_spans"
    assert table.rejected.empty
    votes = table.votes
    # Annotation 12 marks no span (its text area is another control): a vote for [].
    # Annotation 13 was cancelled: no vote.
    assert votes.to_dict("records") == [
        {
            "text": TEXT,
            "label": '[[0,12,"person"],[21,26,"location"]]',
            "annotator": "7",
            "source_id": "1",
        },
        {"text": TEXT, "label": "[]", "annotator": "8", "source_id": "1"},
        {"text": "nothing to see", "label": "[]", "annotator": "7", "source_id": "2"},
    ]


def test_predictions_are_not_votes(tmp_path: Path) -> None:
    path = export(tmp_path, [task(1, predictions=[{"result": [PERSON]}])])
    table = read_votes(path, CFG, LABEL_FORMATS)
    assert table.fmt == "label_studio_spans"
    assert table.votes.empty
    assert "predictions are model output" in table.rejected["reason"][0]


def test_only_cancelled_annotations_leave_no_vote(tmp_path: Path) -> None:
    path = export(tmp_path, [task(1, annotation(11, 7, PERSON, was_cancelled=True))])
    table = read_votes(path, CFG, LABEL_FORMATS)
    assert table.votes.empty
    assert table.rejected["reason"][0] == "no usable annotation (all skipped or empty)"


@pytest.mark.parametrize(
    ("regions", "reason"),
    [
        (
            [region(0, 12, "person"), region(7, 20, "person")],
            "spans [0, 12, 'person'] and [7, 20, 'person'] overlap",
        ),
        ([region(0, 12, "person"), region(0, 12, "person")], "overlap"),
        ([region(12, 12, "person", text="")], "span [12, 12, 'person']: start is not before end"),
        ([region(21, 30, "location", text="Paris")], "is outside the text (length 26)"),
        ([region(-1, 6, "person", text="Barack")], "is outside the text"),
        ([region(0, 6.0, "person", text="Barack")], "end offset 6.0 is not an integer"),
        ([region("0", 6, "person", text="Barack")], "start offset '0' is not an integer"),
        (
            [region(0, 6, "person", text="Barak")],
            "text[0:6] is 'Barack' but the annotation says 'Barak'",
        ),
        ([region(0, 3, "person")], "span [0, 3, 'person'] 'Bar' cuts a word"),
        ([region(0, 12, "person", "group")], "has 2 labels (person, group)"),
        ([region(0, 12)], "span [0, 12] has no label"),
        ([region(0, 12, " ")], "has no label"),
        ([region(0, 12, 5)], "labels [5] is not a list of strings"),
    ],
)
def test_a_bad_region_rejects_the_task_naming_task_and_annotation(
    tmp_path: Path, regions: list, reason: str
) -> None:
    path = export(
        tmp_path, [task(5, annotation(50, 7, PERSON), annotation(51, 8, *regions)), task(6)]
    )
    table = read_votes(path, CFG, LABEL_FORMATS)
    # Task 5 is rejected as a whole: keeping only annotator 7's vote would hide a disagreement.
    assert table.votes.empty
    rejected = table.rejected.set_index("source_id")
    why = rejected.loc["5", "reason"]
    assert why.startswith("task 5 (index 0), annotation 51: ")
    assert reason in why
    assert rejected.loc["6", "reason"] == "no annotations"


def test_value_text_may_differ_in_whitespace_only(tmp_path: Path) -> None:
    # Label Studio renders the selection with runs of whitespace collapsed.
    text = "see New  York\nnow"
    path = export(
        tmp_path,
        [task(1, annotation(11, 7, region(4, 13, "location", text="New York")), text=text)],
    )
    table = read_votes(path, CFG, LABEL_FORMATS)
    assert table.rejected.empty
    assert table.votes["label"][0] == '[[4,13,"location"]]'


def test_offsets_in_utf16_code_units_are_reported_not_converted(tmp_path: Path) -> None:
    text = "\U0001f525 Paris"  # an emoji counts 2 in JavaScript, 1 in Python
    path = export(
        tmp_path,
        [task(1, annotation(11, 7, region(3, 8, "location", text="Paris")), text=text)],
    )
    table = read_votes(path, CFG, LABEL_FORMATS)
    assert table.votes.empty
    reason = table.rejected["reason"][0]
    assert "the offsets fit [2, 7] counted in UTF-16 code units" in reason


def test_leading_whitespace_of_the_text_is_stripped_and_spans_shifted(tmp_path: Path) -> None:
    path = export(
        tmp_path,
        [task(1, annotation(11, 7, region(2, 7, "location", text="Paris")), text="  Paris ")],
    )
    votes = read_votes(path, CFG, LABEL_FORMATS).votes
    assert votes["text"][0] == "Paris"
    assert votes["label"][0] == '[[0,5,"location"]]'


def test_several_annotators_vote_through_resolve_votes(tmp_path: Path) -> None:
    path = export(
        tmp_path,
        [
            # Two of three agree on the exact span set: the majority wins.
            task(
                1,
                annotation(11, 1, PERSON, PLACE),
                annotation(12, 2, PLACE, PERSON),
                annotation(13, 3, region(7, 12, "person")),
            ),
            # A boundary disagreement between two annotators is a tie: quarantined.
            task(
                2,
                annotation(21, 1, region(0, 12, "person", text="Barack Obama")),
                annotation(22, 2, region(7, 12, "person", text="Obama")),
                text="Barack Obama spoke",
            ),
        ],
    )
    resolved, quarantined = resolve_votes(
        read_votes(path, CFG, LABEL_FORMATS).votes, min_agreement=0.5
    )
    assert resolved.to_dict("records") == [
        {
            "text": TEXT,
            "label": '[[0,12,"person"],[21,26,"location"]]',
            "annotator_count": 3,
            "agreement": 0.6667,
            "source_id": "1",
            "annotators": "1,2,3",
        }
    ]
    assert quarantined[["source_id", "label", "reason"]].to_dict("records") == [
        {
            "source_id": "2",
            "label": '[[0,12,"person"]]|[[7,12,"person"]]',
            "reason": 'tie between labels [[0,12,"person"]], [[7,12,"person"]] (1 vote each)',
        }
    ]


def test_labels_from_two_controls_need_from_name(tmp_path: Path) -> None:
    other = {**region(21, 26, "location"), "from_name": "pii"}
    path = export(tmp_path, [task(1, annotation(11, 7, PERSON, other))])
    with pytest.raises(DataError, match=r"export\.json: task 1 \(index 0\): span labels from"):
        read_votes(path, CFG, LABEL_FORMATS)
    cfg = ImportConfig(label_studio={"from_name": "label"})
    assert read_votes(path, cfg, LABEL_FORMATS).votes["label"][0] == '[[0,12,"person"]]'


def test_choices_and_labels_together_stay_classification(tmp_path: Path) -> None:
    tasks = [task(1, annotation(11, 7, PERSON, {"from_name": "s", "value": {"choices": ["pos"]}}))]
    path = export(tmp_path, tasks)
    assert detect_format(path, LABEL_FORMATS) == "label_studio_json"
    assert is_span_export(tasks, ImportConfig(label_studio={"from_name": "label"}))


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"id": 1, "annotations": []}], r"task 1 \(index 0\): data: missing"),
        ([task(1, annotation(11, 7, PERSON), text=None)], r"data\.text: expected a string"),
        ([{**task(1), "annotations": {}}], r"annotations: expected a list, got an object"),
        ([task(1, {"id": 11, "result": "x"})], r"annotations\[0\]\.result: expected a list"),
        ([task(1, {"id": 11, "result": [3]})], r"result\[0\]: expected an object"),
    ],
)
def test_structural_errors_name_file_and_task(tmp_path: Path, tasks: list, message: str) -> None:
    path = export(tmp_path, tasks)
    with pytest.raises(DataError, match=r"export\.json: .*" + message):
        read_votes(path, CFG, LABEL_FORMATS, fmt="label_studio_spans")


# --- JSON-MIN ------------------------------------------------------------------------


def min_item(task_id: int, ann_id: int | None, annotator: str, spans: list | None) -> dict:
    item: dict[str, Any] = {"text": TEXT, "id": task_id}
    if spans is not None:
        item["label"] = [r["value"] for r in spans]
    return {**item, "annotator": annotator, "annotation_id": ann_id, "lead_time": 1.5}


def test_json_min_export(tmp_path: Path) -> None:
    path = export(
        tmp_path,
        [
            min_item(1, 11, "a@x.org", [PERSON, PLACE]),
            min_item(1, 12, "b@x.org", None),  # an annotation with no span: no label key
            min_item(2, None, "", None),  # a task without annotations (label-studio-sdk)
        ],
    )
    assert detect_format(path, LABEL_FORMATS) == "label_studio_spans"
    table = read_votes(path, CFG, LABEL_FORMATS)
    assert table.votes[["label", "annotator", "source_id"]].to_dict("records") == [
        {"label": '[[0,12,"person"],[21,26,"location"]]', "annotator": "a@x.org", "source_id": "1"},
        {"label": "[]", "annotator": "b@x.org", "source_id": "1"},
    ]
    assert table.rejected[["source_id", "reason"]].to_dict("records") == [
        {"source_id": "2", "reason": "no annotations"}
    ]


def test_json_min_bad_span_rejects_the_task(tmp_path: Path) -> None:
    path = export(
        tmp_path,
        [
            min_item(1, 11, "a", [PERSON]),
            min_item(1, 12, "b", [region(0, 12, "person"), region(7, 20, "group")]),
        ],
    )
    table = read_label_studio_spans(path, CFG)
    assert table.votes.empty
    assert table.rejected["reason"][0].startswith("task 1 (index 1), annotation 12: spans")
    assert "overlap" in table.rejected["reason"][0]
