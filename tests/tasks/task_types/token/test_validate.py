"""The NER validation gate: span, type and length checks on span-JSON labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import Params, Severity, parse_params
from slmops.tasks.task_types.token.validate import CHECKS, validate_entities_frame
from slmops.tasks.validation.gate import write_outputs

TYPES = ["person", "location"]


def params(**validation) -> Params:
    raw = {"validation": {"min_examples_per_class": 2, **validation}}
    return parse_params(raw, Path("params.yaml"), root=Path("."))


def good() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [
                "Barack Obama visited Paris",
                "thanks @justinbieber",
                "London calling",
                "nothing to see here",
            ],
            "label": [
                '[[0,12,"person"],[21,26,"location"]]',
                '[[7,20,"person"]]',
                '[[0,6,"location"]]',
                "[]",
            ],
        }
    )


TEST_TEXTS = pd.Series(["Obama in Berlin", "nothing at all"])


def outcome(result, check):
    return next(c for c in result.checks if c.check == check)


def test_good_data_passes_every_check() -> None:
    result = validate_entities_frame(good(), params(), TYPES, TEST_TEXTS)
    assert result.passed, result.problems()
    assert [c.check for c in result.checks] == list(CHECKS)
    assert result.quarantined.empty
    assert len(result.clean) == 4


def _with(row: int, **values) -> pd.DataFrame:
    df = good()
    for col, v in values.items():
        df.loc[row, col] = v
    return df


# One bad row per case, after the good rows; each is validated in one run of the gate
# (a GX checkpoint per case would make this file slow for no more coverage).
CASES = [
    # (text, label, check, reason)
    (None, "[]", "not_null", "text is empty"),
    ("no label here", None, "not_null", "label is empty"),
    ("x", "[]", "text_length", "text length 1 outside [2, 1000]"),
    ("hi @justinbieber", '[[4,9,"person"]]', "spans_valid", "'justi' cuts a word"),
    (
        "Barack Obama spoke",
        '[[0,12,"person"],[7,12,"person"]]',
        "spans_valid",
        "invalid spans: spans [0, 12, 'person'] and [7, 12, 'person'] overlap",
    ),
    ("Rome today", '[[0,60,"location"]]', "spans_valid", "outside the text (length 10)"),
    ("Madrid tonight", "location", "spans_valid", "label is not span JSON"),
    ("Lisbon now", '[[0,6,"city"]]', "label_in_set", "not in the label set: city"),
    ("Barack Obama visited Paris", "[]", "exact_duplicate", "duplicate of row 1"),
    ("OBAMA in  berlin", "[]", "leakage", "also appears in the test split"),
]


@pytest.fixture(scope="module")
def bad_result():
    bad = pd.DataFrame([c[:2] for c in CASES], columns=["text", "label"])
    frame = pd.concat([good(), bad], ignore_index=True)
    return validate_entities_frame(frame, params(), TYPES, TEST_TEXTS)


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[c[2] for c in CASES])
def test_each_row_check_quarantines_only_the_bad_row(bad_result, index, case) -> None:
    _, _, check, reason = case
    row = len(good()) + index + 1
    failed = outcome(bad_result, check)
    assert not failed.success
    assert row in failed.rows
    assert not bad_result.passed
    quarantined = bad_result.quarantined.set_index(
        bad_result.quarantined["reason"].str.extract(r"^row (\d+):", expand=False).astype(int)
    )
    assert quarantined.loc[row, "reason"].startswith(f"row {row}: ")
    assert reason in quarantined.loc[row, "reason"]
    assert check in quarantined.loc[row, "check"].split(",")


def test_only_the_bad_rows_are_quarantined(bad_result) -> None:
    assert len(bad_result.quarantined) == len(CASES)
    assert bad_result.clean.equals(good())
    for check in ("spans_valid", "not_null"):
        assert outcome(bad_result, check).sample  # the report shows examples


def test_token_length_counts_model_words() -> None:
    # "thanks @justinbieber" is 3 words: "thanks", "@", "justinbieber".
    result = validate_entities_frame(good(), params(), TYPES, token_min=1, token_max=3)
    failed = outcome(result, "token_length")
    assert failed.rows == [1, 4]
    assert "4 word(s), outside [1, 3]" in result.quarantined.loc[0, "reason"]
    with pytest.raises(ValueError, match="token_min 5 is above token_max 3"):
        validate_entities_frame(good(), params(), TYPES, token_min=5, token_max=3)


def test_min_examples_per_class_counts_entities_per_type() -> None:
    # person 2, location 2: passes at 2 (test_good_data_passes_every_check), fails for
    # both at 3; a type without any entity fails too. The check quarantines nothing.
    result = validate_entities_frame(good(), params(min_examples_per_class=3), [*TYPES, "group"])
    failed = outcome(result, "min_examples_per_class")
    assert not failed.success
    assert failed.unexpected_count == 3
    assert "entity type 'person' has 2 entities, fewer than 3" in failed.message
    assert "entity type 'group' has 0 entities" in failed.message
    assert result.quarantined.empty


def test_severity_off_and_warn() -> None:
    bad = _with(2, label='[[0,6,"city"]]')
    result = validate_entities_frame(
        bad,
        params(min_examples_per_class=1),
        TYPES,
        severity={"label_in_set": Severity.warn, "token_length": "off"},
    )
    assert result.passed  # a warning does not stop the pipeline...
    assert not outcome(result, "label_in_set").success
    assert len(result.quarantined) == 1  # ...but the row is still set aside
    assert "token_length" not in [c.check for c in result.checks]


def test_missing_label_column_fails_schema(tmp_path: Path) -> None:
    result = validate_entities_frame(good()[["text"]], params(), TYPES)
    assert not outcome(result, "schema").success
    assert "missing column(s): label" in outcome(result, "schema").message
    report, quarantine = write_outputs(result, tmp_path)
    assert report.exists() and quarantine.exists()
