"""The validation gate for token classification (NER) data: spans instead of one label.

The same engine as the classification gate (:func:`tasks.validation.gate.run_checks`:
Great Expectations checks, one checkpoint, Data Docs, quarantine with a reason
per row); the label cell is canonical span JSON (:mod:`tasks.task_types.token.spans`), so
the derived columns and checks differ:

========================  =====  ==================================================
check                     level  what fails
========================  =====  ==================================================
schema                    table  a required column is missing
not_null                  row    empty text or label (``[]``, no entity, is a label)
text_length               row    text length outside ``[text_min_chars, text_max_chars]``
spans_valid               row    label not span JSON, or spans out of bounds, cutting
                                 a word or overlapping (:func:`tasks.task_types.token.spans.check`):
                                 the BIO well-formedness of stored data
label_in_set              row    an entity type outside the label set
token_length              row    word count (:func:`tasks.task_types.token.spans.words`) outside
                                 ``[token_min, token_max]``
exact_duplicate           row    the same text as an earlier row (first one kept)
leakage                   row    text also in the test split (case/space-insensitive)
min_examples_per_class    table  an entity type with fewer than
                                 ``min_examples_per_class`` entities
========================  =====  ==================================================

There is no near-duplicate check: for classification it catches one text
labelled twice; in NER a case change can change what is an entity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slmops.tasks.core.config import Params, Severity
from slmops.tasks.data.dataset import REQUIRED_COLUMNS
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.validation.gate import (
    GateSpec,
    ValidationResult,
    base_frame,
    row_reasons,
    run_checks,
    schema_expectation,
)

ROW_CHECKS = (
    "not_null",
    "text_length",
    "spans_valid",
    "label_in_set",
    "token_length",
    "exact_duplicate",
    "leakage",
)
CHECKS = ("schema", *ROW_CHECKS, "min_examples_per_class")
TOKEN_MIN = 1
TOKEN_MAX = 200

_SPANS_OK, _SPANS_ERROR = "_spans_ok", "_spans_error"
_TYPES_OK, _UNKNOWN_TYPES = "_types_ok", "_unknown_types"
_WORDS = "_words"


def entities_column(kind: str) -> str:
    """The derived column counting a type's entities per row (summed by the gate)."""
    return f"_entities[{kind}]"


def _cell(label: Any, text: Any, label_set: set[str]) -> tuple[Any, Any, Any, Any, list]:
    """``(spans_ok, error, types_ok, unknown, spans)`` of one row; None where not checkable."""
    if not isinstance(label, str):
        return None, None, None, None, []
    try:
        spans = sp.loads(label)
    except sp.SpanError as exc:
        return False, f"label is not span JSON: {exc}", None, None, []
    unknown = sorted({kind for _, _, kind in spans} - label_set)
    types = (not unknown, ", ".join(unknown) or None)
    if not isinstance(text, str):
        return None, None, *types, []  # not_null reports the missing text
    try:
        sp.check(text, spans)
    except sp.SpanError as exc:
        return False, str(exc), *types, []
    return True, None, *types, spans


def entity_frame(
    df: pd.DataFrame, label_set: Sequence[str], test_texts: pd.Series | None
) -> pd.DataFrame:
    """The frame GX checks for NER data: the data, the shared derived columns
    (row number, normalised text, leakage) and per row whether the spans are valid
    (and why not), whether their types are in the label set, the word count and
    the number of entities of each type of ``label_set``."""
    out = base_frame(df, test_texts)
    known = set(label_set)
    n = len(out)
    texts = out["text"].tolist() if "text" in out else [None] * n
    if "text" in out:
        # float64 with NaN for missing text: GX skips NaN and compares numpy in one step.
        out[_WORDS] = np.array(
            [len(sp.words(t)) if isinstance(t, str) else np.nan for t in texts], dtype="float64"
        )
    if "label" not in out:
        return out
    cells = [_cell(label, text, known) for label, text in zip(out["label"], texts, strict=True)]
    out[_SPANS_OK] = pd.Series([c[0] for c in cells], index=out.index, dtype=object)
    out[_SPANS_ERROR] = pd.Series([c[1] for c in cells], index=out.index, dtype=object)
    out[_TYPES_OK] = pd.Series([c[2] for c in cells], index=out.index, dtype=object)
    out[_UNKNOWN_TYPES] = pd.Series([c[3] for c in cells], index=out.index, dtype=object)
    # Entities of rows whose spans are valid: the others are quarantined, not trained on.
    order = {kind: j for j, kind in enumerate(dict.fromkeys(label_set))}
    counts = np.zeros((n, len(order)), dtype=np.int64)
    for i, cell in enumerate(cells):
        for _, _, kind in cell[4]:
            if kind in order:
                counts[i, order[kind]] += 1
    for kind, j in order.items():
        out[entities_column(kind)] = counts[:, j]
    return out


def _entity_expectations(
    columns: set[str],
    required: tuple[str, ...],
    params: Params,
    label_set: Sequence[str],
    token_min: int,
    token_max: int,
) -> list[tuple[str, Any]]:
    import great_expectations.expectations as gxe

    v = params.validation
    wanted: list[tuple[str, Any]] = [schema_expectation(required)]
    if "text" in columns:
        wanted += [
            ("not_null", gxe.ExpectColumnValuesToNotBeNull(column="text")),
            (
                "text_length",
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column="text", min_value=v.text_min_chars, max_value=v.text_max_chars
                ),
            ),
            (
                "token_length",
                gxe.ExpectColumnValuesToBeBetween(
                    column=_WORDS, min_value=token_min, max_value=token_max
                ),
            ),
            ("exact_duplicate", gxe.ExpectColumnValuesToBeUnique(column="text")),
        ]
        if "_in_test" in columns:
            wanted.append(
                ("leakage", gxe.ExpectColumnValuesToNotBeInSet(column="_in_test", value_set=[True]))
            )
    if "label" in columns:
        wanted += [
            ("not_null", gxe.ExpectColumnValuesToNotBeNull(column="label")),
            (
                "spans_valid",
                gxe.ExpectColumnValuesToNotBeInSet(column=_SPANS_OK, value_set=[False]),
            ),
            (
                "label_in_set",
                gxe.ExpectColumnValuesToNotBeInSet(column=_TYPES_OK, value_set=[False]),
            ),
        ]
        # One column sum per type: it counts entities, not rows, and a type with no
        # entity at all fails it too (sum 0).
        wanted += [
            (
                "min_examples_per_class",
                gxe.ExpectColumnSumToBeBetween(
                    column=entities_column(kind), min_value=v.min_examples_per_class
                ),
            )
            for kind in dict.fromkeys(label_set)
        ]
    return wanted


def _entityrow_reasons(
    check: str,
    column: str,
    rows: list[int],
    frame: pd.DataFrame,
    params: Params,
    token_min: int,
    token_max: int,
) -> dict[int, str]:
    pos = np.asarray(rows, dtype=np.int64) - 1

    def values(col: str) -> list[Any]:
        return frame[col].to_numpy(dtype=object)[pos].tolist()

    if check == "spans_valid":
        return {r: f"invalid spans: {e}" for r, e in zip(rows, values(_SPANS_ERROR), strict=True)}
    if check == "label_in_set":
        return {
            r: f"entity type(s) not in the label set: {u}"
            for r, u in zip(rows, values(_UNKNOWN_TYPES), strict=True)
        }
    if check == "token_length":
        return {
            r: f"{int(n)} word(s), outside [{token_min}, {token_max}]"
            for r, n in zip(rows, values(_WORDS), strict=True)
        }
    # not_null, text_length, exact_duplicate, leakage: as for classification.
    return row_reasons(check, column, rows, frame, params)


def _entity_table_message(check: str, res: Any, params: Params) -> tuple[int, str]:
    column = str(res.expectation_config.kwargs.get("column", ""))
    kind = column.removeprefix("_entities[").removesuffix("]")
    observed = (res.result or {}).get("observed_value")
    count = int(observed) if observed is not None else 0
    return 1, (
        f"entity type {kind!r} has {count} entities, fewer than "
        f"{params.validation.min_examples_per_class}"
    )


def _severity(params: Params, overrides: Mapping[str, Severity]):
    sev = params.validation.severity

    def of(check: str) -> Severity:
        if check in overrides:
            return Severity(overrides[check])
        if check == "schema" or check in type(sev).model_fields:
            return sev.of(check)
        return Severity.error  # spans_valid, token_length while params.yaml has no entry

    return of


def validate_entities_frame(
    df: pd.DataFrame,
    params: Params,
    label_set: Sequence[str],
    test_texts: pd.Series | None = None,
    *,
    dataset: str = "dataset",
    required: tuple[str, ...] = REQUIRED_COLUMNS,
    docs_dir: Path | None = None,
    token_min: int = TOKEN_MIN,
    token_max: int = TOKEN_MAX,
    severity: Mapping[str, Severity] | None = None,
) -> ValidationResult:
    """Run the NER gate on a frame of ``text`` and ``label`` (canonical span JSON).

    Arguments as :func:`tasks.validation.gate.validate_frame`'s; ``label_set`` is the
    list of entity types. ``token_min``/``token_max`` bound the number of words
    per text (:func:`tasks.task_types.token.spans.words`). Severities come from
    ``params.validation.severity``; ``severity`` overrides them by check name, and
    a check it has no entry for (``spans_valid``, ``token_length``) is ``error``.
    Row-level failures are quarantined with the reason, as for classification;
    ``passed`` is False when a check at error severity failed.
    """
    if token_min > token_max:
        raise ValueError(f"token_min {token_min} is above token_max {token_max}")
    labels = list(label_set)
    spec = GateSpec(
        checks=CHECKS,
        row_checks=ROW_CHECKS,
        frame=lambda d: entity_frame(d, labels, test_texts),
        expectations=lambda columns: _entity_expectations(
            columns, required, params, labels, token_min, token_max
        ),
        row_reasons=lambda c, col, rows, f: _entityrow_reasons(
            c, col, rows, f, params, token_min, token_max
        ),
        table_message=lambda c, res, f: _entity_table_message(c, res, params),
        severity=_severity(params, severity or {}),
    )
    return run_checks(
        df,
        spec,
        dataset=dataset,
        required=required,
        docs_dir=docs_dir,
        sample_rows=params.validation.sample_rows,
    )
