"""The labeled-dataset files: their columns, how they are read and written.

``data/labeled/`` (one DVC-tracked directory) holds:

- ``labeled.csv``: the working labeled data, one row per text, with provenance;
- ``labels.json``: the label set of that data (starts as the seed's);
- ``quarantine.csv``: every row kept aside by the gate or the import, with why;
- ``corrections.csv``: every label that replaced an earlier one.

``data/test/test.csv`` is the frozen test split.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from slmops.tasks.core.config import Params
from slmops.tasks.core.errors import DataError

# mkstemp creates files readable by the owner only; give written data the usual mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

LABELED_FILE = "labeled.csv"
LABELS_FILE = "labels.json"
QUARANTINE_FILE = "quarantine.csv"
CORRECTIONS_FILE = "corrections.csv"
TEST_FILE = "test.csv"

REQUIRED_COLUMNS = ("text", "label")
PROVENANCE_COLUMNS = (
    "source",  # seed | import | feedback
    "source_file",  # file the row came from
    "source_id",  # task id or row within that file
    "batch_id",  # one id per import / feedback batch
    "imported_at",  # UTC ISO time; empty for seed rows so the seed build is reproducible
    "annotator_count",
    "agreement",
)
LABELED_COLUMNS = (*REQUIRED_COLUMNS, *PROVENANCE_COLUMNS)
QUARANTINE_COLUMNS = (*LABELED_COLUMNS, "check", "reason", "quarantined_at")
CORRECTION_COLUMNS = (
    "text",
    "old_label",
    "new_label",
    "old_source",
    "new_source_file",
    "new_source_id",
    "batch_id",
    "corrected_at",
    "new_annotators",  # who gave the new label (annotators, or reviewers' principals)
)


def normalise(text: str) -> str:
    """The key two texts are compared by: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def read_table(path: str | Path, required: Iterable[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read a CSV as strings (empty cells become nulls), checking required columns.

    Labels such as ``NA`` or ``null`` stay strings; only empty cells are missing.
    """
    path = Path(path)
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
        )
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (expected a header row)") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from None
    if any("\x00" in str(c) for c in df.columns):
        # NUL bytes are valid UTF-8, so UTF-16 without a BOM reads as columns 't e x t'.
        raise DataError(
            f"{path}: NUL bytes in the header row: not UTF-8 text (UTF-16 without a "
            "byte order mark?); save the file as UTF-8"
        )
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}"
        )
    return df


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write a CSV so a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            df.to_csv(fh, index=False, lineterminator="\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# CSV files meant for people (the review export, validation reports) are opened in
# spreadsheets, which run a cell starting with one of these as a formula (OWASP "CSV
# injection": `=HYPERLINK(...)` sent to /predict would run on the reviewer's machine).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A file whose rows went through escape_formulas(mark=True) has this column, holding
# FORMULA_ESCAPE_MARK on each such row: the label import undoes the escape only there,
# so a hand-made CSV with a genuine "'-" text is never changed.
FORMULA_ESCAPE_COLUMN = "formula_escape"
FORMULA_ESCAPE_MARK = "quote"


def escape_formula(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would run it as a formula.

    Texts that already start with quotes before such a character get one more, so
    that :func:`unescape_formula` gives back exactly the original: ``-5 on my balance?``
    → ``'-5 on my balance?``, ``'=x`` → ``''=x``, ``'twas`` unchanged.
    """
    return "'" + value if value.lstrip("'")[:1] in FORMULA_STARTS else value


def unescape_formula(value: str) -> str:
    """The original of an :func:`escape_formula` result (only for cells that went through it)."""
    if value.startswith("'") and value.lstrip("'")[:1] in FORMULA_STARTS:
        return value[1:]
    return value


def escape_formulas(frame: pd.DataFrame, *, mark: bool = False) -> pd.DataFrame:
    """A copy of ``frame`` for a spreadsheet: every text cell through :func:`escape_formula`.

    ``mark`` adds :data:`FORMULA_ESCAPE_COLUMN` so that a file meant to come back
    (the review export, filled in) is unescaped by the label import.
    """
    safe = frame.copy()
    for column in safe.columns:
        safe[column] = safe[column].map(lambda v: escape_formula(v) if isinstance(v, str) else v)
    if mark:
        safe[FORMULA_ESCAPE_COLUMN] = FORMULA_ESCAPE_MARK
    return safe


def write_json_atomic(obj: object, path: Path) -> None:
    """Write JSON atomically (see :func:`write_csv_atomic`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def empty_frame(columns: Iterable[str]) -> pd.DataFrame:
    """An empty string-typed frame with the given columns."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def read_label_file(path: Path) -> list[str]:
    """Read a JSON list of label names."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"{path}: label set file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:  # the parser recurses per nesting level
        raise DataError(f"{path}: JSON nested too deeply to be a list of labels") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise DataError(f"{path}: expected a JSON list of non-empty label names")
    return labels


def load_label_set(params: Params) -> list[str]:
    """The working label set: ``data/labeled/labels.json``, else the configured seed set."""
    working = params.path(params.data.labeled_dir) / LABELS_FILE
    return read_label_file(working if working.exists() else params.path(params.labels.label_set))


class LabeledPaths:
    """Paths of the files in the labeled and test directories."""

    def __init__(self, params: Params) -> None:
        labeled = params.path(params.data.labeled_dir)
        self.dir = labeled
        self.labeled = labeled / LABELED_FILE
        self.labels = labeled / LABELS_FILE
        self.quarantine = labeled / QUARANTINE_FILE
        self.corrections = labeled / CORRECTIONS_FILE
        self.test_dir = params.path(params.data.test_dir)
        self.test = self.test_dir / TEST_FILE


def read_labeled(params: Params) -> pd.DataFrame:
    """Read the working labeled data with all its provenance columns."""
    paths = LabeledPaths(params)
    if not paths.labeled.exists():
        raise DataError(f"{paths.labeled}: labeled data not found; run `slmops data init` first")
    return read_table(paths.labeled, LABELED_COLUMNS)


def read_corrections(params: Params) -> pd.DataFrame:
    """The labeled data's correction history, oldest first (empty before the first)."""
    path = LabeledPaths(params).corrections
    if not path.exists():
        return empty_frame(CORRECTION_COLUMNS)
    return read_table(path, ()).reindex(columns=list(CORRECTION_COLUMNS))


def read_test(params: Params) -> pd.DataFrame:
    """Read the frozen test split."""
    paths = LabeledPaths(params)
    if not paths.test.exists():
        raise DataError(f"{paths.test}: test split not found; run `slmops data init` first")
    return read_table(paths.test)


def append_rows(path: Path, rows: pd.DataFrame, columns: Iterable[str]) -> None:
    """Append rows to a CSV history file (quarantine, corrections), atomically.

    A file written before a column existed gains it, empty for its old rows.
    """
    columns = list(columns)
    old = read_table(path, ()).reindex(columns=columns) if path.exists() else empty_frame(columns)
    new = pd.concat([old, rows.reindex(columns=columns)], ignore_index=True)
    write_csv_atomic(new, path)
