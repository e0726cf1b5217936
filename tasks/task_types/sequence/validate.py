"""The validation gate's checks for classification data: one label per text, each in
the label set, enough examples of every class.

The engine (:func:`slmops.tasks.validation.gate.run_checks`) runs them; this module says
what is checked (:class:`~slmops.tasks.validation.gate.GateSpec`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.data.dataset import REQUIRED_COLUMNS
from slmops.tasks.validation.gate import (
    ROW,
    GateSpec,
    ValidationResult,
    base_frame,
    enabled_checks,
    row_reasons,
    run_checks,
    schema_expectation,
)

ROW_CHECKS = (
    "not_null",
    "text_length",
    "label_in_set",
    "exact_duplicate",
    "near_duplicate",
    "leakage",
)
CHECKS = ("schema", *ROW_CHECKS, "min_examples_per_class")


def _frame(df: pd.DataFrame, label_set: list[str], test_texts: pd.Series | None) -> pd.DataFrame:
    """The frame GX checks: the data plus derived columns (row number, normalised text)."""
    out = base_frame(df, test_texts)
    if "label" in out:
        # Per-row size of the row's class; unknown labels are label_in_set's business
        # (NaN here, which GX skips). float64, not Int64: GX compares a numpy column in
        # one vectorised step but calls a Python function per value of an extension dtype.
        known = out["label"].where(out["label"].isin(label_set))
        out["_label_count"] = known.groupby(known).transform("size").astype("float64")
    return out


def _expectations(
    columns: set[str],
    required: tuple[str, ...],
    params: Params,
    label_set: list[str],
) -> list[tuple[str, Any]]:
    """(check, expectation) pairs for the checks that are not switched off."""
    import great_expectations.expectations as gxe

    v = params.validation
    wanted: list[tuple[str, Any]] = [schema_expectation(required)]
    has_text, has_label = "text" in columns, "label" in columns
    if has_text:
        wanted += [
            ("not_null", gxe.ExpectColumnValuesToNotBeNull(column="text")),
            (
                "text_length",
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column="text", min_value=v.text_min_chars, max_value=v.text_max_chars
                ),
            ),
            ("exact_duplicate", gxe.ExpectColumnValuesToBeUnique(column="text")),
            ("near_duplicate", gxe.ExpectColumnValuesToBeUnique(column="_norm")),
        ]
        if "_in_test" in columns:
            # A boolean column, not a value set of every test text: GX serialises
            # expectation configs many times per run, and a 3k-value set makes that slow.
            wanted.append(
                (
                    "leakage",
                    gxe.ExpectColumnValuesToNotBeInSet(column="_in_test", value_set=[True]),
                )
            )
    if has_label:
        wanted += [
            ("not_null", gxe.ExpectColumnValuesToNotBeNull(column="label")),
            ("label_in_set", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=label_set)),
            (
                "min_examples_per_class",
                gxe.ExpectColumnValuesToBeBetween(
                    column="_label_count", min_value=v.min_examples_per_class
                ),
            ),
            (
                "min_examples_per_class",
                gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=label_set),
            ),
        ]
    return enabled_checks(wanted, v.severity.of)


def _class_table_message(
    check: str, res: Any, frame: pd.DataFrame, params: Params, label_set: list[str]
) -> tuple[int, str]:
    """min_examples_per_class of the classification gate: labels absent or too rare."""
    if res.expectation_config.type == "expect_column_distinct_values_to_contain_set":
        absent = sorted(set(label_set) - set(frame["label"].dropna()))
        return len(absent), f"{len(absent)} label(s) with no examples: {', '.join(absent[:20])}"
    detail = res.result or {}
    rows = [int(i[ROW]) for i in detail.get("unexpected_index_list") or []]
    counts = frame.loc[frame[ROW].isin(rows)].groupby("label").size()
    listed = ", ".join(f"{k} ({n})" for k, n in counts.sort_values().items())
    return len(counts), (
        f"{len(counts)} label(s) with fewer than "
        f"{params.validation.min_examples_per_class} examples: {listed}"
    )


def validate_frame(
    df: pd.DataFrame,
    params: Params,
    label_set: list[str],
    test_texts: pd.Series | None = None,
    *,
    dataset: str = "dataset",
    required: tuple[str, ...] = REQUIRED_COLUMNS,
    docs_dir: Path | None = None,
) -> ValidationResult:
    """Run the gate on a frame.

    ``test_texts`` enables the leakage check (texts also in the test split);
    ``docs_dir`` makes GX build its HTML Data Docs there. Row-level failures
    of any severity are quarantined; ``ValidationResult.passed`` is False when
    a check at error severity failed.
    """
    spec = GateSpec(
        checks=CHECKS,
        row_checks=ROW_CHECKS,
        frame=lambda d: _frame(d, label_set, test_texts),
        expectations=lambda columns: _expectations(columns, required, params, label_set),
        row_reasons=lambda c, col, rows, f: row_reasons(c, col, rows, f, params),
        table_message=lambda c, res, f: _class_table_message(c, res, f, params, label_set),
        severity=params.validation.severity.of,
    )
    return run_checks(
        df,
        spec,
        dataset=dataset,
        required=required,
        docs_dir=docs_dir,
        sample_rows=params.validation.sample_rows,
    )
