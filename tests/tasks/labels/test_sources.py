"""Reading annotation exports into votes and resolving votes into labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slmops.tasks.core.config import CsvImportConfig, ImportConfig, LabelStudioImportConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.labels.sources import (
    BASE_FORMATS,
    NO_ANNOTATIONS_ONLY_PREDICTIONS,
    NO_USABLE_ANNOTATION,
    QUARANTINED_COLUMNS,
    REJECTED_COLUMNS,
    RESOLVED_COLUMNS,
    VOTE_COLUMNS,
    LabelFormat,
    VoteTable,
    detect_format,
    read_votes,
    resolve_votes,
)
from slmops.tasks.task_types import LABEL_FORMATS
from tests.conftest import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "label_studio"
FULL = FIXTURES / "export_full.json"
MIN = FIXTURES / "export_min.json"
CSV = FIXTURES / "labels.csv"

CARD = "When will my new card arrive?"
STOLEN = "I think someone took my card out of my bag"
TRANSFER = "Why hasn't my transfer shown up in my balance yet?"
TOP_UP = "My top up didn't go through"
RATE_SKIPPED = "what's the rate for pounds to euros"
PREDICTED = "How long does a transfer from the UK take?"
RATE = "What exchange rate will I get for my holiday money?"

DEFAULT = ImportConfig()
CSV_CFG = ImportConfig(
    csv=CsvImportConfig(
        text_column="utterance", label_column="intent", annotator_column="annotator"
    )
)

# (text, label, source_id) of the votes both Label Studio fixtures hold, in file order.
EXPORT_VOTES = [
    (CARD, "card_arrival", "101"),
    (STOLEN, "lost_or_stolen_card", "102"),
    (STOLEN, "lost_or_stolen_card", "102"),
    (STOLEN, "compromised_card", "102"),
    (TRANSFER, "balance_not_updated_after_bank_transfer", "103"),
    (TRANSFER, "transfer_not_received_by_recipient", "103"),
    (TOP_UP, "top_up_failed", "104"),
    (RATE, "exchange_rate", "107"),
    (RATE, "exchange_rate", "107"),
]


def rows(frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> list[tuple[Any, ...]]:
    return list(frame[list(columns)].itertuples(index=False, name=None))


def write_json(tmp_path: Path, data: Any, name: str = "export.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def ls_task(tid: int, text: Any, *annotations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": tid, "data": {"text": text}, "annotations": list(annotations), **extra}


def ls_annotation(user: Any, *choices: str, from_name: str = "intent", **extra: Any) -> dict:
    result = [
        {
            "from_name": from_name,
            "to_name": "text",
            "type": "choices",
            "value": {"choices": list(choices)},
        }
    ]
    return {"id": 1, "completed_by": user, "was_cancelled": False, "result": result, **extra}


def vote_frame(votes: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Votes as (text, label, annotator); the source id is the vote's position."""
    return pd.DataFrame(
        [(t, lab, a, f"s{i}") for i, (t, lab, a) in enumerate(votes)], columns=list(VOTE_COLUMNS)
    )


# --- Label Studio JSON (full export) ------------------------------------------------


def test_full_export_gives_one_vote_per_completed_annotation() -> None:
    table = read_votes(FULL, DEFAULT, LABEL_FORMATS)

    assert table.fmt == "label_studio_json"
    assert list(table.votes.columns) == list(VOTE_COLUMNS)
    assert list(table.rejected.columns) == list(REJECTED_COLUMNS)
    assert rows(table.votes, ["text", "label", "source_id"]) == EXPORT_VOTES
    # completed_by is a user id, or a user object in newer versions: both give the id.
    assert list(table.votes["annotator"]) == ["3", "3", "5", "7", "3", "5", "5", "3", "5"]


def test_full_export_ignores_cancelled_annotations_and_predictions() -> None:
    table = read_votes(FULL, DEFAULT, LABEL_FORMATS)

    # Task 104: the cancelled annotation by user 3 is a skip, not a vote.
    assert rows(table.votes[table.votes["source_id"] == "104"], ["annotator", "label"]) == [
        ("5", "top_up_failed")
    ]
    # Task 107's prediction (card_arrival) is not a vote, nor is its text-area comment.
    assert set(table.votes.loc[table.votes["source_id"] == "107", "label"]) == {"exchange_rate"}
    # Tasks with only skips, or only predictions, are kept as rejected rows.
    assert rows(table.rejected, REJECTED_COLUMNS) == [
        (RATE_SKIPPED, "", "105", NO_USABLE_ANNOTATION),
        (PREDICTED, "", "106", NO_ANNOTATIONS_ONLY_PREDICTIONS),
    ]


def test_full_export_falls_back_to_annotation_id_and_strips(tmp_path: Path) -> None:
    annotation = ls_annotation(None, "  card_arrival ")
    annotation["id"] = 55
    path = write_json(tmp_path, [ls_task(9, "  where is my card?\n", annotation)])

    votes = read_votes(path, DEFAULT, LABEL_FORMATS).votes

    assert rows(votes, VOTE_COLUMNS) == [
        ("where is my card?", "card_arrival", "annotation-55", "9")
    ]


def test_multi_choice_annotation_rejects_the_task(tmp_path: Path) -> None:
    path = write_json(
        tmp_path,
        [
            ls_task(
                1,
                "card declined and top up failed",
                ls_annotation(3, "declined_card_payment", "top_up_failed"),
                ls_annotation(5, "top_up_failed"),
            ),
            ls_task(2, "my card is lost", ls_annotation(3, "lost_or_stolen_card")),
        ],
    )

    table = read_votes(path, DEFAULT, LABEL_FORMATS)

    assert list(table.votes["source_id"]) == ["2"]
    [(text, label, source_id, reason)] = rows(table.rejected, REJECTED_COLUMNS)
    assert (text, source_id) == ("card declined and top up failed", "1")
    assert label == "declined_card_payment|top_up_failed"
    assert "2 choices" in reason and "single-label" in reason


def test_empty_text_and_empty_label_are_rejected(tmp_path: Path) -> None:
    path = write_json(
        tmp_path,
        [
            ls_task(1, "   ", ls_annotation(3, "card_arrival")),
            ls_task(2, "rate?", ls_annotation(3, " "), ls_annotation(5, "exchange_rate")),
        ],
    )

    table = read_votes(path, DEFAULT, LABEL_FORMATS)

    assert rows(table.votes, VOTE_COLUMNS) == [("rate?", "exchange_rate", "5", "2")]
    assert rows(table.rejected, ["source_id", "reason"]) == [
        ("1", "empty text"),
        ("2", "empty label from annotator 3"),
    ]


def test_from_name_selects_the_choices_control(tmp_path: Path) -> None:
    annotation = ls_annotation(3, "card_arrival")
    annotation["result"].append(
        {
            "from_name": "urgency",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": ["high"]},
        }
    )
    path = write_json(tmp_path, [ls_task(1, "where is my card", annotation)])

    with pytest.raises(DataError, match=r"intent, urgency.*label_studio\.from_name"):
        read_votes(path, DEFAULT, LABEL_FORMATS)
    cfg = ImportConfig(label_studio=LabelStudioImportConfig(from_name="intent"))
    assert list(read_votes(path, cfg, LABEL_FORMATS).votes["label"]) == ["card_arrival"]


# --- Label Studio JSON-MIN ---------------------------------------------------------


def test_min_export_gives_the_same_votes_as_the_full_export() -> None:
    table = read_votes(MIN, DEFAULT, LABEL_FORMATS)

    assert table.fmt == "label_studio_min"
    assert rows(table.votes, ["text", "label", "source_id"]) == EXPORT_VOTES
    assert list(table.votes["annotator"][:4]) == [
        "ana@bank.example",
        "ana@bank.example",
        "ben@bank.example",
        "chloe@bank.example",
    ]
    # Skipped and unannotated tasks carry no label key: rejected once per task.
    assert rows(table.rejected, ["source_id", "reason"]) == [
        ("105", NO_USABLE_ANNOTATION),
        ("106", NO_USABLE_ANNOTATION),
    ]


def test_min_export_label_key_from_config(tmp_path: Path) -> None:
    items = [
        {"id": 1, "text": "rate?", "intent": "exchange_rate", "comment": "about fees?"},
        {"id": 1, "text": "rate?", "intent": {"choices": ["exchange_rate"]}, "annotator": 4},
    ]
    path = write_json(tmp_path, items)

    with pytest.raises(DataError) as err:
        read_votes(path, DEFAULT, LABEL_FORMATS)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "intent, comment" in message and "label_import.label_studio.from_name" in message

    cfg = ImportConfig(label_studio=LabelStudioImportConfig(from_name="intent"))
    votes = read_votes(path, cfg, LABEL_FORMATS, fmt="label_studio_min").votes
    assert rows(votes, VOTE_COLUMNS) == [
        ("rate?", "exchange_rate", "item-0", "1"),
        ("rate?", "exchange_rate", "4", "1"),
    ]


def test_min_export_multi_choice_rejects_the_task(tmp_path: Path) -> None:
    items = [
        {"id": 1, "text": "t", "intent": {"choices": ["a", "b"]}, "annotator": "x"},
        {"id": 1, "text": "t", "intent": "a", "annotator": "y"},
        {"id": 2, "text": "u", "intent": ["c"], "annotator": "x"},
    ]
    table = read_votes(write_json(tmp_path, items), DEFAULT, LABEL_FORMATS)

    assert rows(table.votes, ["label", "source_id"]) == [("c", "2")]
    assert rows(table.rejected, ["label", "source_id"]) == [("a|b", "1")]


# --- CSV -----------------------------------------------------------------------------


def test_csv_with_bom_crlf_and_custom_columns() -> None:
    raw = CSV.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # what this test is about

    table = read_votes(CSV, CSV_CFG, LABEL_FORMATS)

    assert table.fmt == "csv"
    stolen = "I think someone took my card, it was in my bag"
    assert rows(table.votes, VOTE_COLUMNS) == [
        (CARD, "card_arrival", "ana", "line 2"),
        (stolen, "lost_or_stolen_card", "ana", "line 3"),
        (stolen, "lost_or_stolen_card", "ben", "line 4"),
        (stolen, "compromised_card", "chloe", "line 5"),
        (TRANSFER, "balance_not_updated_after_bank_transfer", "ana", "line 6"),
        (TRANSFER, "transfer_not_received_by_recipient", "ben", "line 7"),
        (TOP_UP, "top_up_failed", "ben", "line 8"),
        ("Is NA a valid country code for my card?", "NA", "ana", "line 11"),
    ]
    assert rows(table.rejected, REJECTED_COLUMNS) == [
        ("", "card_arrival", "line 9", "empty text"),
        (RATE, "", "line 10", "empty label"),
    ]


def test_csv_without_annotator_counts_every_row(tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text('text\tlabel\n"two\nlines"\ta\n\nsame\tb\nsame\tb\n', encoding="utf-8")

    votes = read_votes(path, DEFAULT, LABEL_FORMATS).votes

    assert rows(votes, VOTE_COLUMNS) == [
        ("two\nlines", "a", "row1", "line 2"),
        ("same", "b", "row2", "line 5"),
        ("same", "b", "row3", "line 6"),
    ]
    resolved, _ = resolve_votes(votes, 0.5)
    assert list(resolved["annotator_count"]) == [1, 2]


def test_csv_rows_marked_as_escaped_for_spreadsheets_are_unescaped_only_there(
    tmp_path: Path,
) -> None:
    # What the review export writes (escape_formulas), a reviewer's label filled in,
    # plus a row added by hand (no mark) whose quote is the annotator's own.
    path = tmp_path / "review.csv"
    path.write_text(
        "text,label,formula_escape\n"
        "'-5 on my balance?,top_up_failed,quote\n"
        "''=x,card_arrival,quote\n"
        "'twas lost,lost_or_stolen_card,quote\n"
        "'+1 by hand,card_arrival,\n"
        "'@odd mark,card_arrival,yes\n",
        encoding="utf-8",
    )
    table = read_votes(path, DEFAULT, LABEL_FORMATS)
    assert table.votes[["text", "label"]].values.tolist() == [
        ["-5 on my balance?", "top_up_failed"],
        ["'=x", "card_arrival"],
        ["'twas lost", "lost_or_stolen_card"],
        ["'+1 by hand", "card_arrival"],
    ]
    assert table.rejected[["source_id", "reason"]].values.tolist() == [
        [
            "line 6",
            "formula_escape is 'yes': expected 'quote' (the export escaped the row's "
            "cells) or empty",
        ]
    ]


def test_csv_missing_column_names_file_column_and_columns_found() -> None:
    with pytest.raises(DataError) as err:
        read_votes(CSV, DEFAULT, LABEL_FORMATS)  # expects text/label columns
    message = str(err.value)
    assert message.startswith(str(CSV))
    assert "'text'" in message and "utterance, intent, annotator" in message


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("text,label\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"l\.csv: line 3: expected 2 fields"):
        read_votes(path, DEFAULT, LABEL_FORMATS)


# --- Format detection --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [(FULL, "label_studio_json"), (MIN, "label_studio_min"), (CSV, "csv")],
)
def test_detect_format(path: Path, fmt: str) -> None:
    assert fmt in {f.name for f in LABEL_FORMATS}
    assert detect_format(path, LABEL_FORMATS) == fmt
    assert read_votes(path, CSV_CFG, LABEL_FORMATS).fmt == fmt


def test_unknown_extension_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"labels\.xlsx: unknown file type '\.xlsx'"):
        detect_format(path, LABEL_FORMATS)
    with pytest.raises(DataError, match="unknown format"):
        read_votes(FULL, DEFAULT, LABEL_FORMATS, fmt="yaml")


def test_the_registry_decides_what_is_read(tmp_path: Path) -> None:
    """The engine's own formats do not include a task type's: a .conll file is an unknown
    type to them, and a format that is passed in is detected (JSON: before the base ones)
    and read."""
    conll = tmp_path / "labels.conll"
    conll.write_text("Paris\tB-location\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"unknown file type '\.conll': expected .*\.csv or \.tsv"):
        detect_format(conll, BASE_FORMATS)
    seen = []

    def read(path: Path, cfg: ImportConfig, data: list | None) -> VoteTable:
        seen.append(data)
        votes = pd.DataFrame({c: ["x"] for c in VOTE_COLUMNS})
        return VoteTable(votes, pd.DataFrame(columns=list(REJECTED_COLUMNS)), "mine")

    mine = LabelFormat("mine", (".json",), read, claims=lambda data, cfg: data == [7])
    path = tmp_path / "mine.json"
    path.write_text("[7]", encoding="utf-8")
    assert detect_format(path, (mine, *BASE_FORMATS)) == "mine"
    assert read_votes(path, DEFAULT, (mine, *BASE_FORMATS)).fmt == "mine"
    assert seen == [[7]]  # the parsed JSON is handed over, not read twice
    assert detect_format(FULL, (mine, *BASE_FORMATS)) == "label_studio_json"


# --- Structural errors -------------------------------------------------------------


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": 1,\n   "data": {"text": "hi"}\n  ,,\n]', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_votes(path, DEFAULT, LABEL_FORMATS)
    message = str(err.value)
    assert message.startswith(f"{path}: line 4, column")
    assert "malformed JSON" in message


def test_task_missing_text_field_names_the_task(tmp_path: Path) -> None:
    good = ls_task(1, "fine", ls_annotation(3, "card_arrival"))
    bad = {"id": 17, "data": {"utterance": "hi"}, "annotations": []}
    path = write_json(tmp_path, [good, good, bad])
    with pytest.raises(DataError) as err:
        read_votes(path, DEFAULT, LABEL_FORMATS)
    message = str(err.value)
    assert message.startswith(f"{path}: task 17 (index 2): data.text: missing")
    assert "utterance" in message and "text_field" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"tasks": []}, "expected a JSON list of tasks at the top level, got an object"),
        ([ls_task(1, "a"), "oops"], "element at index 1: expected an object, got a string"),
        ([{"id": 3, "annotations": []}], "task 3 (index 0): data: missing"),
        ([ls_task(3, 42)], "task 3 (index 0): data.text: expected a string, got a number"),
        ([{"id": 3, "data": {"text": "a"}, "annotations": {}}], "annotations: expected a list"),
        (
            [ls_task(3, "a", {"completed_by": 1, "result": "intent"})],
            "annotations[0].result: expected a list, got a string",
        ),
    ],
)
def test_structural_errors(tmp_path: Path, data: Any, expected: str) -> None:
    path = write_json(tmp_path, data)
    with pytest.raises(DataError) as err:
        read_votes(path, DEFAULT, LABEL_FORMATS, fmt="label_studio_json")
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.json: file not found"):
        read_votes(tmp_path / "missing.json", DEFAULT, LABEL_FORMATS)

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"\xef\xbb\xbf\r\n")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read_votes(empty, DEFAULT, LABEL_FORMATS)

    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'[{"text": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"latin1\.json: not valid UTF-8 .* at byte 14\)"):
        read_votes(latin1, DEFAULT, LABEL_FORMATS)
    # The offset counts the BOM, so it points at the byte in the file.
    latin1.write_bytes(b'\xef\xbb\xbf[{"text": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"at byte 17\)"):
        read_votes(latin1, DEFAULT, LABEL_FORMATS)


# --- Voting --------------------------------------------------------------------------


def test_resolve_majority_agreement_and_sources() -> None:
    votes = vote_frame(
        [
            ("lost card", "lost_or_stolen_card", "a"),
            ("rate?", "exchange_rate", "a"),
            ("lost card", "lost_or_stolen_card", "b"),
            (" lost card ", "compromised_card", "c"),
        ]
    )

    resolved, quarantined = resolve_votes(votes, 0.5)

    assert list(resolved.columns) == list(RESOLVED_COLUMNS)
    assert rows(resolved, RESOLVED_COLUMNS) == [
        ("lost card", "lost_or_stolen_card", 3, 0.6667, "s0,s2,s3", "a,b,c"),
        ("rate?", "exchange_rate", 1, 1.0, "s1", "a"),
    ]
    assert quarantined.empty and list(quarantined.columns) == list(QUARANTINED_COLUMNS)


def test_resolve_keeps_the_last_vote_of_an_annotator() -> None:
    votes = vote_frame([("t", "a", "x"), ("t", "b", "y"), ("t", "b", "x")])
    resolved, _ = resolve_votes(votes, 0.5)
    assert rows(resolved, ["label", "annotator_count", "agreement"]) == [("b", 2, 1.0)]


def test_resolve_quarantines_ties() -> None:
    votes = vote_frame([("t", "top_up_failed", "x"), ("t", "card_arrival", "y")])
    resolved, quarantined = resolve_votes(votes, 0.5)
    assert resolved.empty
    assert rows(quarantined, QUARANTINED_COLUMNS) == [
        (
            "t",
            "card_arrival|top_up_failed",
            2,
            0.5,
            "s0,s1",
            "x,y",
            "tie between labels card_arrival, top_up_failed (1 vote each)",
        )
    ]


def test_resolve_quarantines_low_agreement() -> None:
    labels = ["a", "a", "b", "c", "d"]
    votes = vote_frame([("t", label, f"u{i}") for i, label in enumerate(labels)])

    resolved, quarantined = resolve_votes(votes, 0.5)

    assert resolved.empty
    assert rows(quarantined, ["label", "annotator_count", "agreement", "reason"]) == [
        ("a", 5, 0.4, "agreement 0.40 below min_agreement 0.50")
    ]
    assert len(resolve_votes(votes, 0.4)[0]) == 1


def test_resolve_empty_input() -> None:
    resolved, quarantined = resolve_votes(vote_frame([]), 0.5)
    assert resolved.empty and list(resolved.columns) == list(RESOLVED_COLUMNS)
    assert quarantined.empty and list(quarantined.columns) == list(QUARANTINED_COLUMNS)


def test_fixture_votes_resolve_as_expected() -> None:
    resolved, quarantined = resolve_votes(read_votes(FULL, DEFAULT, LABEL_FORMATS).votes, 0.5)
    assert rows(resolved, ["text", "label", "agreement"]) == [
        (CARD, "card_arrival", 1.0),
        (STOLEN, "lost_or_stolen_card", 0.6667),
        (TOP_UP, "top_up_failed", 1.0),
        (RATE, "exchange_rate", 1.0),
    ]
    assert list(quarantined["text"]) == [TRANSFER]
    assert quarantined["reason"].iloc[0].startswith("tie between labels")


@settings(max_examples=150, deadline=None)
@given(
    votes=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", " a", "c "]),
            st.sampled_from(["x", "y", "z"]),
            st.sampled_from(["u1", "u2", "u3", "u4"]),
        ),
        max_size=25,
    ),
    min_agreement=st.floats(min_value=0.01, max_value=1.0),
)
def test_resolve_property(votes: list[tuple[str, str, str]], min_agreement: float) -> None:
    resolved, quarantined = resolve_votes(vote_frame(votes), min_agreement)

    texts = {text.strip() for text, _, _ in votes}
    out = list(resolved["text"]) + list(quarantined["text"])
    assert sorted(out) == sorted(texts)  # each text exactly once
    for frame in (resolved, quarantined):
        assert frame["agreement"].between(0, 1, inclusive="right").all()
    for text, label in zip(resolved["text"], resolved["label"], strict=True):
        assert label in {lab for t, lab, _ in votes if t.strip() == text}
    assert (resolved["agreement"] >= round(min_agreement, 4) - 1e-4).all()
    for frame in (resolved, quarantined):
        for text, count in zip(frame["text"], frame["annotator_count"], strict=True):
            assert count == len({a for t, _, a in votes if t.strip() == text})
