"""The validation gate: Great Expectations checks on a labeled dataset.

Every check is a GX expectation tagged with the check's name, run through one
checkpoint that also builds GX's HTML Data Docs. Rows that fail a row-level
check are quarantined with the reason; whether a failure stops the pipeline is
the check's configured severity (``error`` stops, ``warn`` reports).

This module is the engine (:func:`run_checks`), shared by the task types: what
differs (derived columns, expectations, reasons) is a :class:`GateSpec` that each
task type builds (``task_types/sequence/validate.py``, ``task_types/token/validate.py``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slmops.tasks.core.config import Params, Severity
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.data.dataset import (
    LABELED_COLUMNS,
    QUARANTINE_COLUMNS,
    REQUIRED_COLUMNS,
    LabeledPaths,
    escape_formulas,
    load_label_set,
    normalise,
    read_table,
    read_test,
    write_csv_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

ROW = "row"  # 1-based data row number (header excluded), used to name rows in messages


@dataclass
class CheckOutcome:
    """What one check found."""

    check: str
    severity: Severity
    success: bool
    unexpected_count: int = 0
    message: str = ""
    rows: list[int] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)
    expectations: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> bool:
        """A failure at error severity stops the pipeline."""
        return not self.success and self.severity == Severity.error


@dataclass
class ValidationResult:
    """Outcome of the gate: per-check results, the rows kept and the rows set aside."""

    dataset: str
    rows: int
    checks: list[CheckOutcome]
    clean: pd.DataFrame
    quarantined: pd.DataFrame
    data_docs: Path | None = None

    @property
    def passed(self) -> bool:
        """True when no check at error severity failed."""
        return not any(c.blocking for c in self.checks)

    def problems(self) -> list[str]:
        """One line per failed check, errors first."""
        failed = [c for c in self.checks if not c.success]
        failed.sort(key=lambda c: c.severity != Severity.error)
        return [f"[{c.severity}] {c.check}: {c.message}" for c in failed]

    def report(self) -> dict[str, Any]:
        """The machine-readable report (what is written as JSON)."""
        return {
            "dataset": self.dataset,
            "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "passed": self.passed,
            "rows": self.rows,
            "rows_quarantined": len(self.quarantined),
            "failed_checks": [c.check for c in self.checks if not c.success],
            "checks": [
                {
                    "check": c.check,
                    "severity": str(c.severity),
                    "success": c.success,
                    "unexpected_count": c.unexpected_count,
                    "message": c.message,
                    "expectations": c.expectations,
                    "sample": c.sample,
                }
                for c in self.checks
            ],
            "data_docs": str(self.data_docs / "index.html") if self.data_docs else None,
        }


def _context(docs_dir: Path | None):
    """A fresh in-memory GX context (no files, no analytics, no progress bars)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    # GX's own import, deferred with it: data_docs imports GX at module level.
    from slmops.tasks.validation.data_docs import site_config

    ctx = gx.get_context(mode="ephemeral", project_config=config)
    if docs_dir is not None:
        ctx.add_data_docs_site(site_name="slmops", site_config=site_config(str(docs_dir)))
    return ctx


def base_frame(df: pd.DataFrame, test_texts: pd.Series | None) -> pd.DataFrame:
    """The data plus the derived columns every task's gate uses: row number, blank
    text and label as missing, normalised text and whether it is in the test split."""
    out = df.copy()
    out.insert(0, ROW, range(1, len(df) + 1))
    if "text" in out:
        text = out["text"]
        # Whitespace-only text counts as missing.
        blank = text.isna() | text.astype(str).str.strip().eq("")
        out["text"] = text.where(~blank, None)
        out["_norm"] = out["text"].map(lambda t: normalise(t) if isinstance(t, str) else None)
        if test_texts is not None:
            test_norm = {normalise(t) for t in test_texts.dropna()}
            out["_in_test"] = out["_norm"].isin(test_norm)
    if "label" in out:
        label = out["label"]
        blank = label.isna() | label.astype(str).str.strip().eq("")
        out["label"] = label.where(~blank, None)
    return out


def schema_expectation(required: tuple[str, ...]) -> tuple[str, Any]:
    import great_expectations.expectations as gxe

    return (
        "schema",
        gxe.ExpectTableColumnsToMatchSet(column_set=list(required), exact_match=False),
    )


def enabled_checks(
    wanted: list[tuple[str, Any]], severity: Callable[[str], Severity]
) -> list[tuple[str, Any]]:
    """The pairs whose check is not switched off, each tagged with its check's name."""
    enabled = [(c, e) for c, e in wanted if severity(c) != Severity.off]
    for check, exp in enabled:
        exp.meta = {"check": check}
    return enabled


def _run_checkpoint(frame: pd.DataFrame, expectations: list, docs_dir: Path | None) -> list:
    """Run the expectations through a GX checkpoint; return GX's per-expectation results."""
    import great_expectations as gx

    ctx = _context(docs_dir)
    name = f"slmops-{uuid.uuid4().hex[:8]}"
    batch_def = (
        ctx.data_sources.add_pandas(name)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
    )
    # The expectations go in with the suite: added one by one, each was a store update.
    suite = ctx.suites.add(
        gx.ExpectationSuite(name="labeled_data", expectations=[e for _, e in expectations])
    )
    vd = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_def, suite=suite)
    )
    actions = [gx.checkpoint.UpdateDataDocsAction(name="docs")] if docs_dir else []
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[vd],
            actions=actions,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return [r for run in result.run_results.values() for r in run.results]


def row_reasons(
    check: str, column: str, rows: list[int], frame: pd.DataFrame, params: Params
) -> dict[int, str]:
    """A reason per failing row, naming what was wrong with it."""
    v = params.validation
    # Row r is at position r - 1 (``_frame`` numbers the rows of a fresh index), so the
    # failing rows' values are taken in one step per column: looked up row by row they
    # cost 3 s of the gate on 100k rows with 10% duplicates.
    pos = np.asarray(rows, dtype=np.int64) - 1

    def values(col: str) -> list[Any]:
        return frame[col].to_numpy(dtype=object)[pos].tolist()

    if check in ("exact_duplicate", "near_duplicate"):
        key = "text" if check == "exact_duplicate" else "_norm"
        keys = values(key)
        first: dict[Any, int] = {}
        for r, k in zip(rows, keys, strict=True):
            first[k] = min(r, first.get(k, r))
        firsts = [first[k] for k in keys]
        texts = values("text") if check == "near_duplicate" else keys
        first_text = frame["text"].to_numpy(dtype=object)[np.asarray(firsts, dtype=np.int64) - 1]
        what = "duplicate" if check == "exact_duplicate" else "near-duplicate (case/space)"
        # The first occurrence stays; later ones are set aside (exact copies
        # are already reported by exact_duplicate).
        return {
            r: f"{what} of row {f}"
            for r, f, t, ft in zip(rows, firsts, texts, first_text, strict=True)
            if f != r and not (check == "near_duplicate" and t == ft)
        }
    if check == "not_null":
        return {r: f"{column} is empty" for r in rows}
    if check == "text_length":
        bounds = f"[{v.text_min_chars}, {v.text_max_chars}]"
        lengths = [len(t) for t in values("text")]
        return {r: f"text length {n} outside {bounds}" for r, n in zip(rows, lengths, strict=True)}
    if check == "label_in_set":
        labels = values("label")
        return {
            r: f"label {x!r} is not in the label set" for r, x in zip(rows, labels, strict=True)
        }
    if check == "leakage":
        return {r: "text also appears in the test split (leakage)" for r in rows}
    return {}


@dataclass(frozen=True)
class GateSpec:
    """What one task type's gate checks; :func:`run_checks` runs it.

    - ``checks``: every check, in the order they are reported; ``row_checks``,
      those that quarantine the rows they flag (the others only pass or fail);
    - ``frame``: the frame GX checks, from the data (its index reset): the data
      plus derived columns, starting with ``row`` (:data:`ROW`, 1-based);
    - ``expectations``: ``(check, expectation)`` pairs, schema included, given
      the frame's columns; the checks at severity ``off`` are dropped by the engine;
    - ``row_reasons``: ``(check, column, rows, frame)`` → a reason per failing
      row (rows it leaves out are not quarantined: first of duplicates);
    - ``table_message``: ``(check, result, frame)`` → ``(unexpected count,
      message)`` for a failed expectation of a check that is not a row check;
    - ``severity``: a check's severity by name.
    """

    checks: tuple[str, ...]
    row_checks: tuple[str, ...]
    frame: Callable[[pd.DataFrame], pd.DataFrame]
    expectations: Callable[[set[str]], list[tuple[str, Any]]]
    row_reasons: Callable[[str, str, list[int], pd.DataFrame], dict[int, str]]
    table_message: Callable[[str, Any, pd.DataFrame], tuple[int, str]]
    severity: Callable[[str], Severity]


def run_checks(
    df: pd.DataFrame,
    spec: GateSpec,
    *,
    dataset: str = "dataset",
    required: tuple[str, ...] = REQUIRED_COLUMNS,
    docs_dir: Path | None = None,
    sample_rows: int = 5,
) -> ValidationResult:
    """The gate's engine: run ``spec``'s expectations on ``df`` and sort rows into
    kept and quarantined (with a reason per check that flagged them).

    ``required`` names the columns the schema check reports as missing.
    """
    frame = spec.frame(df.reset_index(drop=True))
    expectations = enabled_checks(spec.expectations(set(frame.columns)), spec.severity)
    results = _run_checkpoint(frame, expectations, docs_dir)

    outcomes: dict[str, CheckOutcome] = {}
    reasons: dict[int, list[tuple[str, str]]] = {}
    for res in results:
        check = res.expectation_config.meta["check"]
        severity = spec.severity(check)
        out = outcomes.setdefault(check, CheckOutcome(check, severity, True))
        out.expectations.append(f"{res.expectation_config.type}({_column(res)})")
        if res.exception_info and res.exception_info.get("raised_exception"):
            out.success = False
            out.message += f"could not run: {res.exception_info.get('exception_message')}; "
            continue
        if res.success:
            continue
        out.success = False
        detail = res.result or {}
        if check == "schema":
            missing = sorted(set(required) - set(df.columns))
            out.message = f"missing column(s): {', '.join(missing)}; found {', '.join(df.columns)}"
            continue
        if check not in spec.row_checks:
            count, message = spec.table_message(check, res, frame)
            out.unexpected_count += count
            out.message += f"{message}; "
            continue
        rows = [int(i[ROW]) for i in detail.get("unexpected_index_list") or []]
        listed_rows = set(out.rows)  # a set: `in` on the list made thousands of rows O(n²)
        for r, why in spec.row_reasons(check, _column(res), rows, frame).items():
            reasons.setdefault(r, []).append((check, why))
            if r not in listed_rows:
                listed_rows.add(r)
                out.rows.append(r)

    for out in outcomes.values():
        out.message = out.message.rstrip("; ")
        if out.rows:
            out.rows.sort()
            out.unexpected_count = len(out.rows)
            out.success = False
            out.message = f"{len(out.rows)} row(s), " + _describe(out.rows, reasons, out.check)
            out.sample = _sample(frame, out.rows, reasons, out.check, sample_rows)
        elif out.check in spec.row_checks and not out.message:
            out.success = True  # e.g. only first occurrences of duplicates were flagged
    checks = [outcomes[c] for c in spec.checks if c in outcomes]

    bad = sorted(reasons)
    keep = ~frame[ROW].isin(bad)
    clean = df.reset_index(drop=True).loc[keep.to_numpy()].reset_index(drop=True)
    quarantined = df.reset_index(drop=True).loc[(~keep).to_numpy()].copy()
    quarantined["check"] = [",".join(c for c, _ in reasons[r]) for r in bad]
    quarantined["reason"] = [f"row {r}: " + "; ".join(w for _, w in reasons[r]) for r in bad]
    quarantined["quarantined_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return ValidationResult(
        dataset, len(df), checks, clean, quarantined.reset_index(drop=True), docs_dir
    )


def _column(res: Any) -> str:
    kwargs = res.expectation_config.kwargs
    return str(kwargs.get("column", "table"))


def _describe(rows: list[int], reasons: dict[int, list[tuple[str, str]]], check: str) -> str:
    why = [dict(reasons[r])[check] for r in rows]
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    if len(set(why)) == 1:
        return f"{why[0]}: row(s) {', '.join(map(str, rows[:5]))}{more}"
    return "; ".join(f"row {r}: {w}" for r, w in zip(rows[:5], why, strict=False)) + more


def _sample(
    frame: pd.DataFrame,
    rows: list[int],
    reasons: dict[int, list[tuple[str, str]]],
    check: str,
    n: int,
) -> list[dict[str, Any]]:
    by_row = frame.set_index(ROW)
    return [
        {
            "row": r,
            "text": _value(by_row, r, "text"),
            "label": _value(by_row, r, "label"),
            "reason": dict(reasons[r])[check],
        }
        for r in rows[:n]
    ]


def _value(frame: pd.DataFrame, row: int, column: str) -> Any:
    """A cell as JSON can hold it (missing → None)."""
    if column not in frame:
        return None
    value = frame.at[row, column]
    return None if pd.isna(value) else value


def write_outputs(result: ValidationResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``quarantine.csv`` (rows set aside, with reasons).

    ``quarantine.csv`` is for people: its cells are escaped for spreadsheets
    (:func:`escape_formulas`; marked, so a fixed copy imports back unchanged).
    """
    report = out_dir / "report.json"
    quarantine = out_dir / "quarantine.csv"
    write_json_atomic(result.report(), report)
    columns = [*result.quarantined.columns.difference(QUARANTINE_COLUMNS, sort=False)]
    ordered = [c for c in QUARANTINE_COLUMNS if c in result.quarantined.columns] + columns
    write_csv_atomic(escape_formulas(result.quarantined[ordered], mark=True), quarantine)
    return report, quarantine


def validate_file(
    path: Path,
    params: Params,
    task: TaskType,
    *,
    leakage: bool = True,
    required: tuple[str, ...] = REQUIRED_COLUMNS,
    out_dir: Path | None = None,
) -> tuple[ValidationResult, Path]:
    """Validate a CSV file and write its report, quarantine file and Data Docs.

    Leakage is checked against the frozen test split unless ``leakage`` is off
    (the test split itself is never checked against itself).
    """
    paths = LabeledPaths(params)
    df = read_table(path, ())
    same_as_test = paths.test.exists() and path.resolve() == paths.test.resolve()
    test_texts = read_test(params)["text"] if leakage and not same_as_test else None
    out_dir = out_dir or params.path(params.validation.report_dir) / path.stem
    result = task.validate_frame(
        df,
        params,
        load_label_set(params),
        test_texts,
        dataset=str(path),
        required=required,
        docs_dir=out_dir / "data_docs",
    )
    write_outputs(result, out_dir)
    return result, out_dir


def run_gate(params: Params, task: TaskType) -> list[tuple[ValidationResult, Path]]:
    """The pipeline's gate: validate the labeled data (with leakage) and the test split."""
    paths = LabeledPaths(params)
    return [
        validate_file(paths.labeled, params, task, required=LABELED_COLUMNS),
        validate_file(paths.test, params, task, leakage=False),
    ]
