"""Labeled data from annotation tools: read an export into votes, resolve votes into labels.

Formats are :class:`LabelFormat` entries of a registry (a tuple, tried in order);
this module holds the three every task type reads (:data:`BASE_FORMATS`):

- ``label_studio_json``: Label Studio's full JSON export (tasks with ``data``,
  ``annotations`` and ``predictions``);
- ``label_studio_min``: Label Studio's JSON-MIN export (one flat object per annotation);
- ``csv``: a table with a text, a label and optionally an annotator column.

A task type brings its own (the token type: CoNLL and Label Studio span exports)
and the pipeline passes the whole registry in; this module never names them.

Every format becomes the same table of votes (one row per annotator's label for
a text). Problems with the file's structure raise :class:`DataError` naming the
file and where; problems with one item (empty text, no usable annotation,
several choices) keep the item as a rejected row with the reason, so nothing
disappears silently.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from slmops.tasks.core.config import ImportConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.data.dataset import FORMULA_ESCAPE_COLUMN, FORMULA_ESCAPE_MARK, unescape_formula

VOTE_COLUMNS = ("text", "label", "annotator", "source_id")
REJECTED_COLUMNS = ("text", "label", "source_id", "reason")
# ``annotators``: who voted (provenance of the label), joined with ",".
RESOLVED_COLUMNS = ("text", "label", "annotator_count", "agreement", "source_id", "annotators")
QUARANTINED_COLUMNS = (*RESOLVED_COLUMNS, "reason")

NO_USABLE_ANNOTATION = "no usable annotation (all skipped or empty)"
NO_ANNOTATIONS = "no annotations"
NO_ANNOTATIONS_ONLY_PREDICTIONS = "no annotations (predictions are model output, not votes)"

# JSON-MIN keys Label Studio adds itself; the text field is added per config.
MIN_METADATA_KEYS = frozenset(
    {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"}
)
JSON_SUFFIXES = (".json",)
_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no truth value to compare by
class VoteTable:
    """Votes read from one export, the items that could not become votes, and the format."""

    votes: pd.DataFrame  # VOTE_COLUMNS
    rejected: pd.DataFrame  # REJECTED_COLUMNS
    fmt: str


@dataclass(frozen=True)
class LabelFormat:
    """One export format of the registry.

    ``read(path, cfg, data)`` reads a file into votes (``data``: the parsed JSON list
    when the file is JSON, else None). A JSON format has ``claims(data, cfg)``, which
    says whether parsed content is in this format: the first format of the registry
    that claims a JSON file reads it.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path, ImportConfig, list[Any] | None], VoteTable]
    claims: Callable[[list[Any], ImportConfig | None], bool] | None = None


# ---------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------


def _read_text(path: Path, encoding: str) -> str:
    """The file's text; missing, empty and undecodable files are errors naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from None

    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}") from None

    # Decode a BOM ourselves so a decoding error reports the offset in the file,
    # not in the bytes after the BOM.
    offset = 0
    if codec in ("utf-8-sig", "utf-8") and raw.startswith(_UTF8_BOM):
        raw, offset, codec = raw[len(_UTF8_BOM) :], len(_UTF8_BOM), "utf-8"
    elif codec in ("utf-8-sig", "utf-8") and raw.startswith(_UTF16_BOMS):
        # Spreadsheets save "Unicode text" as UTF-16 with a BOM: the BOM makes it
        # unambiguous, so read it rather than report every byte as invalid UTF-8.
        codec = "utf-16"
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    nul = raw.find(b"\x00") if codec.startswith("utf-8") else -1
    if nul >= 0:
        # NUL bytes decode as valid UTF-8, so without this the error would be a
        # baffling "missing column 't e x t'": UTF-16 without a BOM looks like this.
        raise DataError(
            f"{path}: NUL byte at byte {nul + offset}: not UTF-8 text "
            "(UTF-16 without a byte order mark?); save the file as UTF-8"
        )
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        name = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16"}.get(codec, encoding)
        raise DataError(
            f"{path}: not valid {name} text ({exc.reason} at byte {exc.start + offset})"
        ) from None


def load_json(path: Path) -> list[Any]:
    """Parse a JSON export; the top level must be a list."""
    text = _read_text(path, "utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: line {exc.lineno}, column {exc.colno}: malformed JSON: {exc.msg}"
        ) from None
    except RecursionError:  # the parser recurses per nesting level; no export nests so deep
        raise DataError(f"{path}: JSON nested too deeply to be an export") from None
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of tasks at the top level, got {json_type_name(data)}"
        )
    return data


def json_type_name(value: Any) -> str:
    # JSON names, since the user sees the file, not Python objects.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_format(data: list[Any], formats: Sequence[LabelFormat], cfg: ImportConfig | None) -> str:
    for f in formats:
        if f.claims is not None and f.claims(data, cfg):
            return f.name
    raise DataError("no JSON label format in the registry")  # BASE_FORMATS claim any list


def _by_suffix(path: Path, formats: Sequence[LabelFormat]) -> str:
    """The name of the one format reading files of this extension; ``json`` for JSON."""
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "json"
    for f in formats:
        if suffix in f.suffixes:
            return f.name
    listed = sorted({x for f in formats for x in f.suffixes} - set(JSON_SUFFIXES))
    raise DataError(
        f"{path}: unknown file type {suffix or '(no extension)'!r}: expected .json "
        f"(Label Studio JSON or JSON-MIN export), {', '.join(listed[:-1])} or {listed[-1]}"
    )


def detect_format(path: Path, formats: Sequence[LabelFormat]) -> str:
    """Which of ``formats`` a file is in, from its extension and, for JSON, its content
    (the first format that claims it). Raises :class:`DataError` naming the file for an
    unknown extension or unreadable JSON."""
    path = Path(path)
    kind = _by_suffix(path, formats)
    if kind != "json":
        return kind
    return _json_format(load_json(path), formats, None)


def read_votes(
    path: str | Path,
    cfg: ImportConfig,
    formats: Sequence[LabelFormat],
    fmt: str | None = None,
) -> VoteTable:
    """Read an annotation export into votes; ``fmt`` (a name in ``formats``) skips detection.

    Raises :class:`DataError` (file path first, then where and what) when the file
    cannot be read as a whole; items that cannot become votes are returned in
    ``rejected`` with the reason.
    """
    path = Path(path)
    by_name = {f.name: f for f in formats}
    if fmt is not None and fmt not in by_name:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(by_name)}")
    if fmt is None:
        kind = _by_suffix(path, formats)
        fmt = kind if kind != "json" else None
    data = None
    if fmt is None or any(s in JSON_SUFFIXES for s in by_name[fmt].suffixes):
        data = load_json(path)
        fmt = fmt or _json_format(data, formats, cfg)
    return by_name[fmt].read(path, cfg, data)


# ---------------------------------------------------------------------------
# Collecting rows
# ---------------------------------------------------------------------------


class Rows:
    """Votes and rejected items as they are found, in file order."""

    def __init__(self) -> None:
        self.votes: list[tuple[str, str, str, str]] = []
        self.rejected: list[tuple[str, str, str, str]] = []

    def vote(self, text: str, label: str, annotator: str, source_id: str) -> None:
        self.votes.append((text, label, annotator, source_id))

    def reject(self, text: str, label: str, source_id: str, reason: str) -> None:
        self.rejected.append((text, label, source_id, reason))

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return rows_frame(self.votes, VOTE_COLUMNS), rows_frame(self.rejected, REJECTED_COLUMNS)


def rows_frame(rows: list[tuple[str, ...]], columns: tuple[str, ...]) -> pd.DataFrame:
    # Built column by column so an empty table still has string columns.
    return pd.DataFrame(
        {name: pd.Series([row[i] for row in rows], dtype=str) for i, name in enumerate(columns)}
    )


def item_where(item: dict[str, Any] | None, index: int) -> str:
    # Both: the id finds the task in Label Studio, the index finds it in the file.
    if isinstance(item, dict) and "id" in item:
        return f"task {item['id']} (index {index})"
    return f"element at index {index}"


def item_source_id(item: dict[str, Any], index: int) -> str:
    return str(item["id"]) if item.get("id") is not None else f"index {index}"


def _text(path: Path, item: dict[str, Any], index: int, field: str, container: str) -> str:
    """The item's text, stripped; missing or non-string text is a structural error."""
    where = item_where(item, index)
    holder = item if not container else item[container]
    name = f"{container}.{field}" if container else field
    if field not in holder:
        found = ", ".join(sorted(map(str, holder))) or "none"
        raise DataError(
            f"{path}: {where}: {name}: missing (fields found: {found}); "
            "set label_import.label_studio.text_field to the field holding the text"
        )
    text = holder[field]
    if not isinstance(text, str):
        raise DataError(f"{path}: {where}: {name}: expected a string, got {json_type_name(text)}")
    return text.strip()


def _labels(path: Path, where: str, name: str, value: Any) -> list[str]:
    """Labels in a choices list; every choice must be a string."""
    if not isinstance(value, list):
        raise DataError(f"{path}: {where}: {name}: expected a list, got {json_type_name(value)}")
    for choice in value:
        if not isinstance(choice, str):
            raise DataError(
                f"{path}: {where}: {name}: expected string choices, got {json_type_name(choice)}"
            )
    return [choice.strip() for choice in value]


def _multi_choice_reason(what: str, labels: list[str]) -> str:
    return (
        f"{what} has {len(labels)} choices ({', '.join(labels)}); "
        "a single-label classifier needs exactly one"
    )


def _joined(labels: list[str]) -> str:
    return "|".join(dict.fromkeys(label for label in labels if label))


# ---------------------------------------------------------------------------
# Label Studio JSON (full export)
# ---------------------------------------------------------------------------


def annotator_name(annotation: dict[str, Any], task_source: str, position: int) -> str:
    completed_by = annotation.get("completed_by")
    # Older exports give the user id, newer ones may give the user object.
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id", completed_by.get("email"))
    if completed_by is not None and completed_by != "":
        return str(completed_by)
    if annotation.get("id") is not None:
        return f"annotation-{annotation['id']}"
    return f"task-{task_source}-annotation-{position}"


def _annotation_choices(
    path: Path, where: str, annotation: dict[str, Any], position: int, from_name: str | None
) -> list[str] | None:
    """The choices of one annotation, or None when it gives none (cancelled, empty)."""
    if annotation.get("was_cancelled"):
        return None  # a skip in Label Studio, not a vote
    name = f"annotations[{position}].result"
    result = annotation.get("result")
    if result is None:
        return None
    if not isinstance(result, list):
        raise DataError(f"{path}: {where}: {name}: expected a list, got {json_type_name(result)}")

    labels: list[str] = []
    controls: list[str] = []
    for j, region in enumerate(result):
        if not isinstance(region, dict):
            raise DataError(
                f"{path}: {where}: {name}[{j}]: expected an object, got {json_type_name(region)}"
            )
        value = region.get("value")
        # Other control tags (text areas, ratings, spans) carry no class label.
        if not isinstance(value, dict) or "choices" not in value:
            continue
        control = region.get("from_name")
        if from_name is not None and control != from_name:
            continue
        labels += _labels(path, where, f"{name}[{j}].value.choices", value["choices"])
        if control not in controls:
            controls.append(control)

    if from_name is None and len(controls) > 1:
        # Two choice tags in one labeling config: guessing would mix up two questions.
        raise DataError(
            f"{path}: {where}: {name}: choices from several controls "
            f"({', '.join(map(str, controls))}); "
            "set label_import.label_studio.from_name to the one holding the label"
        )
    return labels or None


def check_task(path: Path, task: Any, index: int) -> str:
    """Where a task of a full export is (for messages), once it is an object with a
    ``data`` object; :class:`DataError` naming the file and the task otherwise."""
    where = item_where(task, index)
    if not isinstance(task, dict):
        raise DataError(f"{path}: {where}: expected an object, got {json_type_name(task)}")
    if "data" not in task:
        raise DataError(f"{path}: {where}: data: missing")
    if not isinstance(task["data"], dict):
        raise DataError(
            f"{path}: {where}: data: expected an object, got {json_type_name(task['data'])}"
        )
    return where


def _read_label_studio_json(
    path: Path, data: list[Any], cfg: ImportConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    field = cfg.label_studio.text_field
    from_name = cfg.label_studio.from_name
    rows = Rows()

    for i, task in enumerate(data):
        where = check_task(path, task, i)
        text = _text(path, task, i, field, "data")
        source_id = item_source_id(task, i)
        if "annotations" not in task:
            raise DataError(
                f"{path}: {where}: annotations: missing (is this a JSON-MIN export? "
                "then read it as label_studio_min)"
            )
        annotations = task["annotations"]
        if not isinstance(annotations, list):
            raise DataError(
                f"{path}: {where}: annotations: expected a list, got {json_type_name(annotations)}"
            )

        votes: list[tuple[str, list[str]]] = []  # (annotator, choices)
        multi: str | None = None
        for k, annotation in enumerate(annotations):
            if not isinstance(annotation, dict):
                raise DataError(
                    f"{path}: {where}: annotations[{k}]: expected an object, "
                    f"got {json_type_name(annotation)}"
                )
            labels = _annotation_choices(path, where, annotation, k, from_name)
            if labels is None:
                continue
            annotator = annotator_name(annotation, source_id, k)
            if len(labels) > 1 and multi is None:
                multi = _multi_choice_reason(f"annotation by {annotator}", labels)
            votes.append((annotator, labels))

        all_labels = [label for _, labels in votes for label in labels]
        if multi is not None:
            # The labeling config allows several choices: every vote of the task is suspect.
            rows.reject(text, _joined(all_labels), source_id, multi)
        elif not votes:
            if annotations:
                reason = NO_USABLE_ANNOTATION
            elif task.get("predictions"):
                reason = NO_ANNOTATIONS_ONLY_PREDICTIONS
            else:
                reason = NO_ANNOTATIONS
            rows.reject(text, "", source_id, reason)
        elif not text:
            rows.reject(text, _joined(all_labels), source_id, "empty text")
        else:
            for annotator, (label,) in votes:
                if label:
                    rows.vote(text, label, annotator, source_id)
                else:
                    rows.reject(text, "", source_id, f"empty label from annotator {annotator}")
    return rows.frames()


# ---------------------------------------------------------------------------
# Label Studio JSON-MIN
# ---------------------------------------------------------------------------


def _is_label_value(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, dict) and "choices" in value


def _min_label_key(path: Path, items: list[dict[str, Any]], cfg: ImportConfig) -> str | None:
    """The key holding the label: ``from_name`` when set, else the one label-like key."""
    if cfg.label_studio.from_name is not None:
        return cfg.label_studio.from_name
    excluded = MIN_METADATA_KEYS | {cfg.label_studio.text_field}
    candidates: dict[str, None] = {}  # ordered set
    keys: dict[str, None] = {}
    for item in items:
        for key, value in item.items():
            keys[key] = None
            if key not in excluded and _is_label_value(value):
                candidates[key] = None
    if len(candidates) == 1:
        return next(iter(candidates))
    if not candidates and not items:
        return None
    found = ", ".join(candidates) if candidates else "none"
    raise DataError(
        f"{path}: cannot tell which key holds the label (candidates: {found}; "
        f"keys found: {', '.join(keys)}); "
        "set label_import.label_studio.from_name to the name of the choices control"
    )


def _min_labels(path: Path, where: str, key: str, value: Any) -> list[str]:
    """Labels of one JSON-MIN value: ``"label"``, ``["label"]`` or ``{"choices": [...]}``."""
    if isinstance(value, str):
        return [value.strip()]
    if isinstance(value, dict):
        if "choices" not in value:
            raise DataError(f"{path}: {where}: {key}: expected a 'choices' list in the object")
        return _labels(path, where, f"{key}.choices", value["choices"])
    if isinstance(value, list):
        return _labels(path, where, key, value)
    raise DataError(
        f"{path}: {where}: {key}: expected a label string, a list or an object with 'choices', "
        f"got {json_type_name(value)}"
    )


def _read_label_studio_min(
    path: Path, data: list[Any], cfg: ImportConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    field = cfg.label_studio.text_field
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            where = item_where(item, i)
            raise DataError(f"{path}: {where}: expected an object, got {json_type_name(item)}")
    key = _min_label_key(path, data, cfg)

    # First pass: one entry per object (one annotation each). Votes are grouped per task
    # so a multi-choice annotation can reject the whole task, as in the full export.
    tasks: dict[str, list[tuple[str, list[str] | None, str]]] = {}
    for i, item in enumerate(data):
        where = item_where(item, i)
        text = _text(path, item, i, field, "")
        source_id = item_source_id(item, i)
        value = item.get(key) if key is not None else None
        labels = None if value is None else _min_labels(path, where, key or "", value)
        if item.get("annotator") not in (None, ""):
            annotator = str(item["annotator"])
        elif item.get("annotation_id") is not None:
            annotator = f"annotation-{item['annotation_id']}"
        else:
            annotator = f"item-{i}"
        entries = tasks.setdefault(source_id, [])
        if entries and entries[0][0] != text:
            # One object per annotation: objects of one task share its id and text. Two
            # texts under one id would pool their votes under the first text.
            first = next(j for j, other in enumerate(data) if item_source_id(other, j) == source_id)
            raise DataError(
                f"{path}: {where}: id {source_id} is also the id of the element at index "
                f"{first}, with a different text; ids must identify one task"
            )
        entries.append((text, labels, annotator))

    rows = Rows()
    for source_id, entries in tasks.items():
        text = entries[0][0]
        labeled = [(labels, annotator) for _, labels, annotator in entries if labels]
        multi = next(
            (
                _multi_choice_reason(f"annotation by {annotator}", labels)
                for labels, annotator in labeled
                if len(labels) > 1
            ),
            None,
        )
        if multi is not None:
            # As in the full export: a multi-select config makes every vote of the task suspect.
            seen = [label for labels, _ in labeled for label in labels]
            rows.reject(text, _joined(seen), source_id, multi)
        elif not labeled:
            # Skipped tasks and tasks without annotations are exported without the label key.
            rows.reject(text, "", source_id, NO_USABLE_ANNOTATION)
        elif not text:
            first_labels = [labels[0] for labels, _ in labeled]
            rows.reject(text, _joined(first_labels), source_id, "empty text")
        else:
            for labels, annotator in labeled:
                if labels[0]:
                    rows.vote(text, labels[0], annotator, source_id)
                else:
                    rows.reject(text, "", source_id, f"empty label from annotator {annotator}")
    return rows.frames()


# ---------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------


def _read_csv(path: Path, cfg: ImportConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    opts = cfg.csv
    text = _read_text(path, opts.encoding)
    # A .tsv file with the default delimiter is meant to be tab-separated.
    delimiter = "\t" if path.suffix.lower() == ".tsv" and opts.delimiter == "," else opts.delimiter
    # The csv module rather than pandas: it gives the line each record starts on, even
    # with quoted line breaks, and never turns a label such as "NA" into a missing value.
    # The csv module refuses fields over 128 KiB as "malformed"; the whole file is in
    # memory already, so let a long text through to the gate, which quarantines it
    # for its length like any other too-long text.
    if len(text) > csv.field_size_limit():
        csv.field_size_limit(len(text))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    if header is None:
        raise DataError(f"{path}: file is empty")
    header = [name.strip().lstrip("\ufeff") for name in header]

    wanted = {"text_column": opts.text_column, "label_column": opts.label_column}
    if opts.annotator_column is not None:
        wanted["annotator_column"] = opts.annotator_column
    positions: dict[str, int] = {}
    for setting, column in wanted.items():
        count = header.count(column)
        if count == 0:
            raise DataError(
                f"{path}: line 1: missing column {column!r} (columns found: "
                f"{', '.join(header)}); set label_import.csv.{setting} to the right column"
            )
        if count > 1:
            raise DataError(f"{path}: line 1: column {column!r} appears {count} times")
        positions[setting] = header.index(column)

    # Files meant for spreadsheets (the review export, validation reports) put a ' before
    # cells that would run as formulas, and mark those rows; the original text is
    # what gets imported (escape_formulas in tasks/data/dataset.py).
    escaped = header.index(FORMULA_ESCAPE_COLUMN) if FORMULA_ESCAPE_COLUMN in header else None

    rows = Rows()
    previous_end = reader.line_num
    number = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
        line, previous_end = previous_end + 1, reader.line_num
        if not record:
            continue  # blank line
        number += 1
        if len(record) != len(header):
            raise DataError(
                f"{path}: line {line}: expected {len(header)} fields as in the header, "
                f"found {len(record)}"
            )
        mark = record[escaped].strip() if escaped is not None else ""
        cell = unescape_formula if mark == FORMULA_ESCAPE_MARK else str
        item_text = cell(record[positions["text_column"]]).strip()
        label = cell(record[positions["label_column"]]).strip()
        annotator = ""
        if "annotator_column" in positions:
            annotator = cell(record[positions["annotator_column"]]).strip()
        # Without an annotator every row is its own vote, so repeated rows still count.
        annotator = annotator or f"row{number}"
        source_id = f"line {line}"
        if mark not in ("", FORMULA_ESCAPE_MARK):
            rows.reject(
                item_text,
                label,
                source_id,
                f"{FORMULA_ESCAPE_COLUMN} is {mark!r}: expected {FORMULA_ESCAPE_MARK!r} (the "
                "export escaped the row's cells) or empty",
            )
        elif not item_text:
            rows.reject(item_text, label, source_id, "empty text")
        elif not label:
            rows.reject(item_text, label, source_id, "empty label")
        else:
            rows.vote(item_text, label, annotator, source_id)
    return rows.frames()


# ---------------------------------------------------------------------------
# Voting
# ---------------------------------------------------------------------------


def _number(value: float) -> str:
    # Two decimals unless more are needed to tell the agreement from the threshold.
    text = f"{value:.4f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def resolve_votes(votes: pd.DataFrame, min_agreement: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Resolve votes into one label per text by majority.

    Votes are grouped by text (after stripping surrounding whitespace); an annotator
    who voted twice for a text counts once, with their last vote. ``agreement`` is
    the majority label's share of the votes (rounded to 4 decimals). A tie for the
    top label, or agreement below ``min_agreement``, sends the text to quarantine.

    Returns ``(resolved, quarantined)`` with :data:`RESOLVED_COLUMNS` and
    :data:`QUARANTINED_COLUMNS`, texts in order of first appearance; ``source_id``
    joins the distinct source ids of a text with ``,``, ``annotators`` its annotators.
    """
    missing = [c for c in VOTE_COLUMNS if c not in votes.columns]
    if missing:
        raise ValueError(f"votes table lacks column(s): {', '.join(missing)}")

    ballots: dict[str, dict[str, str]] = {}  # text -> annotator -> label
    sources: dict[str, dict[str, None]] = {}  # text -> ordered set of source ids
    for text, label, annotator, source_id in zip(
        votes["text"], votes["label"], votes["annotator"], votes["source_id"], strict=True
    ):
        key = str(text).strip()
        ballots.setdefault(key, {})[str(annotator)] = str(label).strip()
        sources.setdefault(key, {})[str(source_id)] = None

    resolved: list[tuple[Any, ...]] = []
    quarantined: list[tuple[Any, ...]] = []
    for text, by_annotator in ballots.items():
        counts = Counter(by_annotator.values())
        n = len(by_annotator)
        top = max(counts.values())
        leaders = sorted(label for label, count in counts.items() if count == top)
        agreement = round(top / n, 4)
        source_id = ",".join(sources[text])
        annotators = ",".join(by_annotator)

        reasons = []
        if len(leaders) > 1:
            each = "vote" if top == 1 else "votes"
            reasons.append(f"tie between labels {', '.join(leaders)} ({top} {each} each)")
        if agreement < min_agreement:
            reasons.append(
                f"agreement {_number(agreement)} below min_agreement {_number(min_agreement)}"
            )
        row = (text, "|".join(leaders), n, agreement, source_id, annotators)
        if reasons:
            quarantined.append((*row, "; ".join(reasons)))
        else:
            resolved.append(row)
    return _vote_frame(resolved, RESOLVED_COLUMNS), _vote_frame(quarantined, QUARANTINED_COLUMNS)


def _vote_frame(rows: list[tuple[Any, ...]], columns: tuple[str, ...]) -> pd.DataFrame:
    types = {"annotator_count": "int64", "agreement": "float64"}
    return pd.DataFrame(
        {
            name: pd.Series([row[i] for row in rows], dtype=types.get(name, str))
            for i, name in enumerate(columns)
        }
    )


# ---------------------------------------------------------------------------
# The formats every task type reads
# ---------------------------------------------------------------------------


def _full_export(data: list[Any], cfg: ImportConfig | None) -> bool:
    # Only the full export nests annotations in each task; an empty list holds no votes
    # either way.
    first = data[0] if data else None
    return first is None or (isinstance(first, dict) and "annotations" in first)


def _table(fmt: str, frames: tuple[pd.DataFrame, pd.DataFrame]) -> VoteTable:
    return VoteTable(frames[0], frames[1], fmt)


CSV = LabelFormat(
    "csv", (".csv", ".tsv"), lambda path, cfg, data: _table("csv", _read_csv(path, cfg))
)
LABEL_STUDIO_JSON = LabelFormat(
    "label_studio_json",
    JSON_SUFFIXES,
    lambda path, cfg, data: _table(
        "label_studio_json", _read_label_studio_json(path, data or [], cfg)
    ),
    claims=_full_export,
)
LABEL_STUDIO_MIN = LabelFormat(
    "label_studio_min",
    JSON_SUFFIXES,
    lambda path, cfg, data: _table(
        "label_studio_min", _read_label_studio_min(path, data or [], cfg)
    ),
    claims=lambda data, cfg: True,  # JSON-MIN is what is left of a JSON list
)
#: in detection order: a task type's JSON formats go before these
BASE_FORMATS: tuple[LabelFormat, ...] = (LABEL_STUDIO_JSON, LABEL_STUDIO_MIN, CSV)
