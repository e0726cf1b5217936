"""Bad input catalogue for label import: every malformed export is refused with an error
naming the file, the place and the problem, and leaves the labeled data byte-for-byte as
it was; bad rows in a readable export are quarantined with their reason."""

from __future__ import annotations

import codecs
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import load_params
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.lock import LOCK_FILE
from slmops.tasks.data.dataset import LabeledPaths
from slmops.tasks.pipeline.prepare import import_labels
from tests.snapshots import labeled_state

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
FRESH = "my replacement card has still not arrived after ten days"


def choice(label: object) -> dict:
    """One choices region as Label Studio writes it."""
    return {
        "from_name": "intent",
        "to_name": "text",
        "type": "choices",
        "value": {"choices": [label]},
    }


def task(task_id: object, text: object, *labels: object) -> dict:
    """One task of a full Label Studio export, one annotation per label."""
    annotations = [
        {"id": i, "completed_by": i, "result": [choice(lab)]} for i, lab in enumerate(labels)
    ]
    return {"id": task_id, "data": {"text": text}, "annotations": annotations}


def js(value: object) -> bytes:
    return json.dumps(value).encode()


# name, file content, what the error must say (besides the file name)
REFUSED: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("empty.csv", b"", ("file is empty",)),
    ("blank.csv", b"  \r\n\n", ("file is empty",)),
    ("empty.json", b"", ("file is empty",)),
    (
        "latin1.csv",
        "text,label\ncaf\xe9 card,card_arrival\n".encode("latin-1"),
        ("not valid UTF-8", "byte 14"),
    ),
    (
        "latin1.json",
        js([task(1, "x", "card_arrival")]).replace(b'"x"', '"caf\xe9"'.encode("latin-1")),
        ("not valid UTF-8",),
    ),
    (
        "utf16_no_bom.csv",
        f"text,label\n{FRESH},card_arrival\n".encode("utf-16-le"),
        ("NUL byte at byte 1", "UTF-16"),
    ),
    (
        "utf16_no_bom.json",
        js([task(1, FRESH, "card_arrival")]).decode().encode("utf-16-be"),
        ("NUL byte at byte 0",),
    ),
    (
        "truncated.json",
        js([task(1, FRESH, "card_arrival")])[:-7],
        ("line 1, column", "malformed JSON"),
    ),
    (
        "object.json",
        js({"data": {"text": FRESH}}),
        ("expected a JSON list of tasks", "got an object"),
    ),
    (
        "number_text.json",
        js([task(7, 42, "card_arrival")]),
        ("task 7 (index 0)", "data.text", "got a number"),
    ),
    (
        "null_text.json",
        js([task(7, None, "card_arrival")]),
        ("task 7 (index 0)", "data.text", "got null"),
    ),
    (
        "list_data.json",
        js([{"id": 3, "data": [FRESH], "annotations": []}]),
        ("task 3 (index 0)", "data: expected an object, got a list"),
    ),
    (
        "list_task.json",
        js([[FRESH, "card_arrival"]]),
        ("element at index 0", "expected an object, got a list"),
    ),
    ("no_data.json", js([{"id": 4, "annotations": []}]), ("task 4 (index 0)", "data: missing")),
    (
        "no_text.json",
        js([{"id": 5, "data": {"body": FRESH}, "annotations": []}]),
        ("data.text: missing", "fields found: body"),
    ),
    (
        "annotations_object.json",
        js([{"id": 6, "data": {"text": FRESH}, "annotations": {}}]),
        ("annotations: expected a list, got an object",),
    ),
    (
        "number_choice.json",
        js([task(8, FRESH, 3)]),
        ("task 8 (index 0)", "choices", "expected string choices, got a number"),
    ),
    (
        "result_object.json",
        js([{"id": 9, "data": {"text": FRESH}, "annotations": [{"result": {}}]}]),
        ("annotations[0].result: expected a list",),
    ),
    (
        "min_null_text.json",
        js([{"id": 1, "text": None, "intent": "card_arrival"}]),
        ("task 1 (index 0)", "text: expected a string, got null"),
    ),
    (
        "min_number_label.json",
        js([{"id": 1, "text": FRESH, "intent": 5}]),
        ("cannot tell which key holds the label",),
    ),
    (
        "min_duplicate_id.json",
        js(
            [
                {"id": 1, "text": FRESH, "intent": "card_arrival"},
                {"id": 1, "text": "what rate do you use for euros", "intent": "exchange_rate"},
            ]
        ),
        ("task 1 (index 1)", "id 1 is also the id of the element at index 0", "different text"),
    ),
    (
        "missing_label_column.csv",
        f"text,intent\n{FRESH},card_arrival\n".encode(),
        ("line 1", "missing column 'label'", "columns found: text, intent"),
    ),
    ("missing_text_column.csv", b"label\ncard_arrival\n", ("line 1", "missing column 'text'")),
    (
        "duplicate_column.csv",
        f"text,label,label\n{FRESH},card_arrival,card_arrival\n".encode(),
        ("column 'label' appears 2 times",),
    ),
    (
        "ragged.csv",
        f"text,label\n{FRESH},card_arrival,extra\n".encode(),
        ("line 2", "expected 2 fields", "found 3"),
    ),
    (
        "unknown_label.csv",
        f"text,label\n{FRESH},card_delivery_estimate\n".encode(),
        ("label(s) not in the label set", "'card_delivery_estimate'", "line 2"),
    ),
    (
        "unknown_label.json",
        js([task(11, FRESH, "card_delivery_estimate")]),
        ("label(s) not in the label set", "'card_delivery_estimate'", "11"),
    ),
    ("text.xlsx", b"PK\x03\x04", ("unknown file type '.xlsx'",)),
    # 100k nested lists: the parser's recursion (was a RecursionError, no file named)
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, ("nested too deeply",)),
    ("deep_task.json", b'[{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]", ("too deeply",)),
]


@pytest.mark.parametrize(("name", "content", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_malformed_export_is_refused_naming_the_place_and_nothing_is_written(
    tiny_project: Path, tmp_path: Path, name: str, content: bytes, expected: tuple[str, ...]
) -> None:
    params = load_params(tiny_project / "params.yaml")
    f = tmp_path / "in" / name
    f.parent.mkdir()
    f.write_bytes(content)
    before = labeled_state(tiny_project)

    with pytest.raises(DataError) as caught:
        import_labels(f, params, now=NOW, version=False)

    message = str(caught.value)
    assert name in message, message
    for part in expected:
        assert part in message, message
    assert "Traceback" not in message
    assert labeled_state(tiny_project) == before


def _labeled(params) -> pd.DataFrame:
    return pd.read_csv(LabeledPaths(params).labeled, dtype=str, keep_default_na=False)


def _quarantine(params) -> pd.DataFrame:
    return pd.read_csv(LabeledPaths(params).quarantine, dtype=str, keep_default_na=False)


# Readable files in other encodings and line endings: the row arrives intact.
ACCEPTED: list[tuple[str, bytes]] = [
    ("bom.csv", codecs.BOM_UTF8 + f"text,label\n{FRESH},card_arrival\n".encode()),
    ("crlf.csv", f"text,label\r\n{FRESH},card_arrival\r\n".encode()),
    ("bom_crlf.csv", codecs.BOM_UTF8 + f'text,label\r\n"{FRESH}",card_arrival\r\n\r\n'.encode()),
    ("utf16_bom.csv", f"text,label\r\n{FRESH},card_arrival\r\n".encode("utf-16")),
    ("bom.json", codecs.BOM_UTF8 + js([task(1, FRESH, "card_arrival")])),
    (
        "crlf.json",
        json.dumps([task(1, FRESH, "card_arrival")], indent=2).replace("\n", "\r\n").encode(),
    ),
    ("crlf_text.json", js([task(1, FRESH + "\r\n", "card_arrival")])),
    ("utf16_bom.json", json.dumps([task(1, FRESH, "card_arrival")]).encode("utf-16")),
    ("min_bom.json", codecs.BOM_UTF8 + js([{"id": 1, "text": FRESH, "intent": "card_arrival"}])),
]


@pytest.mark.parametrize(("name", "content"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_boms_and_crlf_are_read_as_the_same_row(
    tiny_params, tmp_path: Path, name: str, content: bytes
) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (1, 0)
    row = _labeled(tiny_params).iloc[-1]
    assert (row["text"], row["label"]) == (FRESH, "card_arrival")  # no BOM, no \r left


def test_null_empty_and_whitespace_rows_are_quarantined_with_the_reason(tiny_params, tmp_path):
    f = tmp_path / "gaps.csv"
    f.write_text(
        f"text,label\n   ,card_arrival\n{FRESH},\t \n,exchange_rate\n"
        "what exchange rate do you use for dollars,exchange_rate\n"
    )
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (1, 3)
    q = _quarantine(tiny_params)
    q = q.loc[q["check"] == "parse", ["source_id", "reason"]].values.tolist()
    assert q == [["line 2", "empty text"], ["line 3", "empty label"], ["line 4", "empty text"]]


def test_empty_labels_and_empty_texts_in_label_studio_are_quarantined(tiny_params, tmp_path):
    f = tmp_path / "gaps.json"
    f.write_text(json.dumps([task(1, "  ", "card_arrival"), task(2, FRESH, " ")]))
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (0, 2)
    q = _quarantine(tiny_params)
    assert q.loc[q["check"] == "parse", "reason"].tolist() == [
        "empty text",
        "empty label from annotator 0",
    ]


def test_a_1_mb_text_is_quarantined_for_its_length_not_called_malformed(tiny_params, tmp_path):
    huge = "a" * 1_048_576  # 1 MiB
    f = tmp_path / "huge.csv"
    f.write_text(f"text,label\n{huge},card_arrival\n{FRESH},card_arrival\n")
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (1, 1)
    assert any("text_length" in p and "1048576" in p for p in summary.problems)
    q = _quarantine(tiny_params)
    assert q["check"].tolist()[-1] == "text_length"
    assert "text length 1048576 outside [2, 1000]" in q["reason"].tolist()[-1]


def test_a_1_mb_text_in_label_studio_is_quarantined(tiny_params, tmp_path):
    f = tmp_path / "huge.json"
    f.write_text(json.dumps([task(1, "a" * 1_048_576, "card_arrival")]))
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (0, 1)
    assert _quarantine(tiny_params)["check"].tolist()[-1] == "text_length"


def test_duplicate_task_ids_in_a_full_export_keep_each_text_with_its_label(tiny_params, tmp_path):
    # Ids are provenance in the full export: each task carries its own text and votes.
    f = tmp_path / "dup.json"
    other = "what exchange rate do you use for dollars"
    f.write_text(json.dumps([task(1, FRESH, "card_arrival"), task(1, other, "exchange_rate")]))
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert summary.added == 2
    rows = _labeled(tiny_params).iloc[-2:][["text", "label", "source_id"]].values.tolist()
    assert rows == [[FRESH, "card_arrival", "1"], [other, "exchange_rate", "1"]]


def test_json_min_objects_of_one_task_still_vote_together(tiny_params, tmp_path):
    # The duplicate-id check must not refuse what JSON-MIN is: one object per annotation.
    f = tmp_path / "min.json"
    f.write_text(
        json.dumps(
            [
                {"id": 1, "text": FRESH, "intent": "card_arrival", "annotator": "a"},
                {"id": 1, "text": FRESH, "intent": "card_arrival", "annotator": "b"},
            ]
        )
    )
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert summary.added == 1
    assert _labeled(tiny_params).iloc[-1]["annotator_count"] == "2"


def test_duplicate_texts_in_a_csv_are_votes_and_a_tie_is_quarantined(tiny_params, tmp_path):
    f = tmp_path / "dup.csv"
    f.write_text(f"text,label\n{FRESH},card_arrival\n{FRESH},lost_or_stolen_card\n")
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert (summary.added, summary.quarantined) == (0, 1)
    reason = _quarantine(tiny_params)["reason"].tolist()[-1]
    assert reason.startswith("tie between labels card_arrival, lost_or_stolen_card")


def test_path_names_in_label_studio_data_are_never_opened(tiny_params, tmp_path):
    # Only data.<text_field> is read; other fields (images, file names) are never paths.
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    exported = task(1, FRESH, "card_arrival")
    exported["data"].update({"image": "../../secret.txt", "file": str(secret)})
    f = tmp_path / "exports" / "ls.json"
    f.parent.mkdir()
    f.write_text(json.dumps([exported]))
    before = set(tiny_params.root.rglob("*"))
    summary = import_labels(f, tiny_params, now=NOW, version=False)
    assert summary.added == 1
    assert "do not read" not in LabeledPaths(tiny_params).labeled.read_text()
    # Nothing appeared outside data/labeled (but the project lock the import took).
    labeled = tiny_params.path(tiny_params.data.labeled_dir)
    assert {p for p in set(tiny_params.root.rglob("*")) - before if labeled not in p.parents} <= {
        tiny_params.root / LOCK_FILE
    }


def test_a_file_given_through_dotdot_is_recorded_by_name_only(tiny_params, tmp_path):
    # tmp_path is the project root here: the file lies beside it, reached through '..'.
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "labels.csv").write_text(f"text,label\n{FRESH},card_arrival\n")
    dotted = tiny_params.root / ".." / outside.name / "labels.csv"
    summary = import_labels(dotted, tiny_params, now=NOW, version=False)
    assert summary.added == 1
    # Provenance never carries '..' (or the absolute path of a file outside the project).
    assert _labeled(tiny_params).iloc[-1]["source_file"] == "labels.csv"
