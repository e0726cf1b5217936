"""The classification checks of the validation gate, run through its engine."""

import json
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import Params, parse_params
from slmops.tasks.labels.sources import read_votes
from slmops.tasks.pipeline.prepare import validate_file
from slmops.tasks.task_types import LABEL_FORMATS
from slmops.tasks.task_types.sequence.validate import CHECKS, validate_frame
from slmops.tasks.validation.gate import write_outputs

LABELS = ["card_arrival", "exchange_rate"]


def params(**validation) -> Params:
    raw = {"validation": {"min_examples_per_class": 2, **validation}}
    return parse_params(raw, Path("params.yaml"), root=Path("."))


def good() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [
                "Where is my new card?",
                "My card has not arrived yet",
                "What is today's exchange rate?",
                "How do you set the rate for dollars?",
            ],
            "label": ["card_arrival", "card_arrival", "exchange_rate", "exchange_rate"],
        }
    )


TEST_TEXTS = pd.Series(["Is the card coming soon?", "What rate do you use for yen?"])


def outcome(result, check):
    return next(c for c in result.checks if c.check == check)


def test_good_data_passes_every_check():
    result = validate_frame(good(), params(), LABELS, TEST_TEXTS)
    assert result.passed
    assert [c.check for c in result.checks] == list(CHECKS)
    assert all(c.success for c in result.checks)
    assert result.quarantined.empty
    assert len(result.clean) == 4


def _with(row: int, **values) -> pd.DataFrame:
    df = good()
    for col, v in values.items():
        df.loc[row, col] = v
    return df


@pytest.mark.parametrize(
    ("frame", "check", "row", "reason"),
    [
        (_with(1, text=None), "not_null", 2, "text is empty"),
        (_with(1, text="   \n"), "not_null", 2, "text is empty"),
        (_with(2, label=None), "not_null", 3, "label is empty"),
        (_with(1, text="x"), "text_length", 2, "text length 1 outside [2, 1000]"),
        (_with(1, text="y" * 1001), "text_length", 2, "text length 1001 outside"),
        (_with(2, label="exchange_rates"), "label_in_set", 3, "'exchange_rates' is not in"),
        (_with(1, text="Where is my new card?"), "exact_duplicate", 2, "duplicate of row 1"),
        (_with(3, text="what is  TODAY's exchange rate?"), "near_duplicate", 4, "of row 3"),
        (_with(0, text="is the card coming SOON?"), "leakage", 1, "also appears in the test"),
    ],
)
def test_each_row_check_fails_on_a_crafted_bad_frame(frame, check, row, reason):
    result = validate_frame(frame, params(), LABELS, TEST_TEXTS)
    failed = outcome(result, check)
    assert not failed.success
    assert failed.rows == [row]
    assert reason in failed.message
    # Only the bad row is set aside, with the reason; the rest is kept.
    assert len(result.quarantined) == 1
    assert reason in result.quarantined.loc[0, "reason"]
    assert result.quarantined.loc[0, "reason"].startswith(f"row {row}:")
    assert len(result.clean) == 3
    # near_duplicate is a warning by default; every other check stops the pipeline.
    assert result.passed is (check == "near_duplicate")


def test_schema_failure_names_the_missing_column():
    result = validate_frame(good().rename(columns={"label": "intent"}), params(), LABELS)
    schema = outcome(result, "schema")
    assert not schema.success and schema.blocking
    assert "missing column(s): label" in schema.message


def test_without_a_label_column_bad_rows_are_still_named():
    df = good()[["text"]]
    df.loc[1, "text"] = "  "
    result = validate_frame(df, params(), LABELS, TEST_TEXTS)
    assert not outcome(result, "schema").success
    assert outcome(result, "not_null").rows == [2]
    assert result.quarantined["reason"].tolist() == ["row 2: text is empty"]


def test_min_examples_per_class_names_small_and_absent_classes():
    df = good().iloc[:3]  # exchange_rate keeps 1 example
    result = validate_frame(df, params(), [*LABELS, "age_limit"])
    check = outcome(result, "min_examples_per_class")
    assert not check.success
    assert "exchange_rate (1)" in check.message
    assert "age_limit" in check.message
    assert result.quarantined.empty  # a small class is not a bad row


def test_severity_warn_reports_but_passes_and_off_skips():
    df = _with(2, label="nope")
    lenient = params(min_examples_per_class=1, severity={"label_in_set": "warn"})
    warn = validate_frame(df, lenient, LABELS)
    assert warn.passed and not outcome(warn, "label_in_set").success
    assert len(warn.quarantined) == 1  # still kept aside: nothing bad reaches training
    off = validate_frame(good(), params(severity={"leakage": "off"}), LABELS, TEST_TEXTS)
    assert "leakage" not in [c.check for c in off.checks]


def test_row_failing_several_checks_lists_every_reason():
    df = _with(1, text="x", label="nope")
    result = validate_frame(df, params(), LABELS)
    assert result.quarantined.loc[0, "check"] == "text_length,label_in_set"
    assert "text length 1" in result.quarantined.loc[0, "reason"]
    assert "'nope'" in result.quarantined.loc[0, "reason"]


def test_the_quarantine_report_is_safe_in_a_spreadsheet_and_imports_back(tmp_path: Path):
    df = _with(1, text='=HYPERLINK("https://evil.example") my card?', label="nope")
    result = validate_frame(df, params(), LABELS)
    _, quarantine_path = write_outputs(result, tmp_path)
    quarantine = pd.read_csv(quarantine_path, dtype=str, keep_default_na=False)
    assert quarantine.loc[0, "text"] == '\'=HYPERLINK("https://evil.example") my card?'
    assert quarantine.loc[0, "formula_escape"] == "quote"
    # Fixed and imported, the row carries the original text.
    quarantine.loc[0, "label"] = "card_arrival"
    quarantine.to_csv(quarantine_path, index=False)
    votes = read_votes(quarantine_path, params().label_import, LABEL_FORMATS).votes
    assert votes["text"].tolist() == ['=HYPERLINK("https://evil.example") my card?']


def test_report_quarantine_and_data_docs_are_written(tmp_path: Path):
    df = _with(1, text=None)
    result = validate_frame(df, params(sample_rows=1), LABELS, docs_dir=tmp_path / "docs")
    report_path, quarantine_path = write_outputs(result, tmp_path)
    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    assert report["failed_checks"] == ["not_null"]
    not_null = next(c for c in report["checks"] if c["check"] == "not_null")
    assert not_null["unexpected_count"] == 1
    assert not_null["sample"] == [
        {"row": 2, "text": None, "label": "card_arrival", "reason": "text is empty"}
    ]
    assert not_null["expectations"] == [
        "expect_column_values_to_not_be_null(text)",
        "expect_column_values_to_not_be_null(label)",
    ]
    quarantine = pd.read_csv(quarantine_path)
    assert list(quarantine["reason"]) == ["row 2: text is empty"]
    assert (tmp_path / "docs" / "index.html").exists()


def test_validate_file_checks_leakage_against_the_test_split(tiny_params, tmp_path: Path):
    from slmops.tasks.data.dataset import read_test

    test_text = read_test(tiny_params)["text"].iloc[0]
    bad = pd.DataFrame({"text": [test_text, "where is my card"], "label": ["card_arrival"] * 2})
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result, out_dir = validate_file(tmp_path / "bad.csv", tiny_params, out_dir=tmp_path / "out")
    assert outcome(result, "leakage").rows == [1]
    assert (out_dir / "quarantine.csv").exists()
