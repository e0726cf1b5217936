"""Label Studio span annotations (``<Labels>`` on a ``<Text>``) to votes.

Two exports are read, both as format ``label_studio_spans``:

- the full JSON export: tasks with ``data.<text_field>`` and ``annotations``,
  each annotation's ``result`` holding regions of ``type: "labels"`` with
  ``value: {start, end, text, labels: [type]}``. Cancelled (skipped)
  annotations are not votes; ``predictions`` are model output, never votes;
- the JSON-MIN export: one flat object per (non-cancelled) annotation, the
  control's ``from_name`` as the key of the list of its regions' values
  (``[{start, end, text, labels}]``). An annotation without regions has no
  such key but still an ``annotation_id``; a task without annotations is
  exported with ``annotation_id: null`` (label-studio-sdk's converter).

Each annotation is one vote whose label is the canonical span JSON
(:func:`slmops.tasks.task_types.token.spans.dumps`) of its regions, ``[]`` for an annotation that
marks no entity, so the majority vote of :func:`slmops.tasks.labels.sources.resolve_votes`
works on NER unchanged: annotators agree when their span sets are identical.

A region that does not fit its text rejects the whole task (every annotator's
vote: dropping one would turn a disagreement into a unanimous vote), with a
reason naming the task id, the annotation id and the problem: overlapping
spans, ``start >= end``, offsets outside the text or not integers, a span
cutting a word (:func:`slmops.tasks.task_types.token.spans.check`), several labels or none on one
region, or a ``value.text`` that differs from ``text[start:end]``. That last
comparison ignores whitespace: Label Studio's ``value.text`` is the *rendered*
selection, with runs of spaces collapsed and line breaks dropped, while its
offsets count the stored text (label-studio issues #3078, #5338, #1863).
Offsets counted in UTF-16 code units (older Label Studio versions with an
emoji before the span, #1347) are reported as such, not converted.

The task's text is stripped as for classification; its spans are shifted by
the leading whitespace removed, which changes no span: spans start on words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmops.tasks.core.config import ImportConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.labels.sources import (
    JSON_SUFFIXES,
    MIN_METADATA_KEYS,
    NO_ANNOTATIONS,
    NO_ANNOTATIONS_ONLY_PREDICTIONS,
    NO_USABLE_ANNOTATION,
    LabelFormat,
    Rows,
    VoteTable,
    annotator_name,
    check_task,
    item_source_id,
    item_where,
    json_type_name,
    load_json,
)
from slmops.tasks.task_types.token import spans as sp

FORMAT = "label_studio_spans"
REGION_TYPE = "labels"  # the result type of a <Labels> control on a <Text>


class _Bad(ValueError):
    """A region that cannot become a span (the message says why)."""


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------


def _is_span_value(value: Any) -> bool:
    return isinstance(value, dict) and "labels" in value and ("start" in value or "end" in value)


def _is_span_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_span_value(v) for v in value)


def _region_kind(region: Any, from_name: str | None) -> str | None:
    if not isinstance(region, dict):
        return None
    if from_name is not None and region.get("from_name") != from_name:
        return None
    value = region.get("value")
    if region.get("type") == REGION_TYPE or _is_span_value(value):
        return "labels"
    if isinstance(value, dict) and "choices" in value:
        return "choices"
    return None


def is_span_export(data: list[Any], cfg: ImportConfig | None = None) -> bool:
    """Whether a parsed Label Studio export (full JSON or JSON-MIN) holds span labels.

    Full export: some annotation or prediction region is of type ``labels`` and
    none holds ``choices`` (a config with both is read as classification, as
    before spans were read; set ``label_import.label_studio.from_name`` to the
    ``<Labels>`` control to read its spans). JSON-MIN: some key (``from_name``
    when set) holds a list of ``{start, end, labels}`` objects.
    """
    from_name = cfg.label_studio.from_name if cfg is not None else None
    tasks = [t for t in data if isinstance(t, dict)]
    if not tasks:
        return False
    if "annotations" in tasks[0]:
        kinds: set[str] = set()
        for task in tasks:
            for key in ("annotations", "predictions"):
                entries = task.get(key)
                for entry in entries if isinstance(entries, list) else ():
                    result = entry.get("result") if isinstance(entry, dict) else None
                    for region in result if isinstance(result, list) else ():
                        kind = _region_kind(region, from_name)
                        if kind:
                            kinds.add(kind)
        return "labels" in kinds and "choices" not in kinds
    if from_name is not None:
        return any(_is_span_list(t.get(from_name)) for t in tasks)
    return any(_is_span_list(v) for t in tasks for v in t.values())


# ---------------------------------------------------------------------------
# One region, one annotation
# ---------------------------------------------------------------------------


def _utf16_to_index(text: str, units: int) -> int | None:
    """The character index at ``units`` UTF-16 code units into ``text`` (None: mid-pair)."""
    count = 0
    for i, ch in enumerate(text):
        if count == units:
            return i
        count += 2 if ord(ch) > 0xFFFF else 1
        if count > units:
            return None
    return len(text) if count == units else None


def _same_text(selected: str, stored: str) -> bool:
    # Label Studio collapses whitespace in value.text but not in the offsets.
    return "".join(selected.split()) == "".join(stored.split())


def _offset(value: dict[str, Any], key: str) -> int:
    if key not in value:
        raise _Bad(f"region has no {key!r} offset")
    offset = value[key]
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise _Bad(f"{key} offset {offset!r} is not an integer")
    return offset


def _region_span(raw: str, value: Any) -> sp.Span:
    """One region's ``(start, end, type)`` over the raw text; :class:`_Bad` says why not."""
    if not isinstance(value, dict):
        raise _Bad(f"region value is {json_type_name(value)}, expected an object")
    start, end = _offset(value, "start"), _offset(value, "end")
    labels = value.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _Bad(f"span [{start}, {end}]: labels {labels!r} is not a list of strings")
    labels = [x.strip() for x in labels]
    if not labels or not all(labels):
        raise _Bad(f"span [{start}, {end}] has no label")
    if len(labels) > 1:
        raise _Bad(
            f"span [{start}, {end}] has {len(labels)} labels ({', '.join(labels)}); "
            "an entity has exactly one type"
        )
    if start >= end:
        raise _Bad(f"span [{start}, {end}, {labels[0]!r}]: start is not before end")
    selected = value.get("text")
    if start < 0 or end > len(raw):
        raise _Bad(
            f"span [{start}, {end}, {labels[0]!r}] is outside the text (length {len(raw)})"
            + _utf16_hint(raw, start, end, selected)
        )
    if isinstance(selected, str) and not _same_text(selected, raw[start:end]):
        raise _Bad(
            f"span [{start}, {end}, {labels[0]!r}]: text[{start}:{end}] is "
            f"{raw[start:end]!r} but the annotation says {selected!r}"
            + _utf16_hint(raw, start, end, selected)
        )
    return (start, end, labels[0])


def _utf16_hint(raw: str, start: int, end: int, selected: Any) -> str:
    """A hint when the offsets fit the text counted in UTF-16 code units, else ``""``."""
    if not isinstance(selected, str) or start < 0:
        return ""
    u_start, u_end = _utf16_to_index(raw, start), _utf16_to_index(raw, end)
    if (
        u_start is None
        or u_end is None
        or (u_start, u_end) == (start, end)
        or not _same_text(selected, raw[u_start:u_end])
    ):
        return ""
    return (
        f"; the offsets fit [{u_start}, {u_end}] counted in UTF-16 code units "
        "(an older Label Studio with an emoji before the span?)"
    )


def _annotation_spans(raw: str, text: str, values: list[Any]) -> list[sp.Span]:
    """Spans over the stripped ``text`` from region values over the ``raw`` text."""
    spans = [_region_span(raw, value) for value in values]
    shift = len(raw) - len(raw.lstrip())
    shifted = [(s - shift, e - shift, t) for s, e, t in spans]
    try:
        sp.check(text, shifted)
    except sp.SpanError as exc:
        raise _Bad(str(exc)) from None
    return shifted


def _raw_label(values: list[Any]) -> str:
    """The regions as given, for the rejected row (it may not be valid span JSON)."""
    raw = []
    for v in values:
        if isinstance(v, dict):
            labels = v.get("labels")
            label = labels[0] if isinstance(labels, list) and len(labels) == 1 else labels
            raw.append([v.get("start"), v.get("end"), label])
        else:
            raw.append(v)
    return json.dumps(raw, ensure_ascii=False, separators=(",", ":"))


def _raw_text(path: Path, holder: dict[str, Any], where: str, field: str, name: str) -> str:
    """The text field, unstripped (offsets count from its first character)."""
    if field not in holder:
        found = ", ".join(sorted(map(str, holder))) or "none"
        raise DataError(
            f"{path}: {where}: {name}: missing (fields found: {found}); "
            "set label_import.label_studio.text_field to the field holding the text"
        )
    text = holder[field]
    if not isinstance(text, str):
        raise DataError(f"{path}: {where}: {name}: expected a string, got {json_type_name(text)}")
    return text


class _Task:
    """Votes of one task as they are read, and the problems that reject it."""

    def __init__(self, raw: str, source_id: str, where: str) -> None:
        self.raw = raw
        self.text = raw.strip()
        self.source_id = source_id
        self.where = where
        self.votes: list[tuple[str, str]] = []  # (annotator, canonical span JSON)
        self.problems: list[str] = []
        self.bad_label = ""

    def add(
        self, annotation_name: str, annotator: str, values: list[Any], where: str | None = None
    ) -> None:
        try:
            spans = _annotation_spans(self.raw, self.text, values)
        except _Bad as exc:
            self.problems.append(f"{where or self.where}, {annotation_name}: {exc}")
            self.bad_label = self.bad_label or _raw_label(values)
            return
        self.votes.append((annotator, sp.dumps(spans)))

    def emit(self, rows: Rows, no_votes_reason: str) -> None:
        if self.problems:
            rows.reject(self.text, self.bad_label, self.source_id, "; ".join(self.problems))
        elif not self.votes:
            rows.reject(self.text, "", self.source_id, no_votes_reason)
        elif not self.text:
            rows.reject(self.text, self.votes[0][1], self.source_id, "empty text")
        else:
            for annotator, label in self.votes:
                rows.vote(self.text, label, annotator, self.source_id)


# ---------------------------------------------------------------------------
# Full export
# ---------------------------------------------------------------------------


def _annotation_name(annotation: dict[str, Any], position: int) -> str:
    if annotation.get("id") is not None:
        return f"annotation {annotation['id']}"
    return f"annotations[{position}]"


def _span_regions(
    path: Path, where: str, annotation: dict[str, Any], position: int, from_name: str | None
) -> tuple[list[Any], set[Any]]:
    """The values of an annotation's span regions and the controls they came from."""
    name = f"annotations[{position}].result"
    result = annotation.get("result")
    if result is None:
        return [], set()
    if not isinstance(result, list):
        raise DataError(f"{path}: {where}: {name}: expected a list, got {json_type_name(result)}")
    values: list[Any] = []
    controls: set[Any] = set()
    for j, region in enumerate(result):
        if not isinstance(region, dict):
            raise DataError(
                f"{path}: {where}: {name}[{j}]: expected an object, got {json_type_name(region)}"
            )
        # Other controls (choices, text areas, relations) carry no span.
        if _region_kind(region, from_name) != "labels":
            continue
        values.append(region.get("value"))
        controls.add(region.get("from_name"))
    return values, controls


def _read_full(path: Path, data: list[Any], cfg: ImportConfig) -> Rows:
    field = cfg.label_studio.text_field
    from_name = cfg.label_studio.from_name
    rows = Rows()
    for i, task in enumerate(data):
        where = check_task(path, task, i)
        raw = _raw_text(path, task["data"], where, field, f"data.{field}")
        if "annotations" not in task:
            raise DataError(
                f"{path}: {where}: annotations: missing (is this a JSON-MIN export? "
                "its tasks have no annotations list)"
            )
        annotations = task["annotations"]
        if not isinstance(annotations, list):
            raise DataError(
                f"{path}: {where}: annotations: expected a list, got {json_type_name(annotations)}"
            )

        item = _Task(raw, item_source_id(task, i), where)
        controls: set[Any] = set()
        for k, annotation in enumerate(annotations):
            if not isinstance(annotation, dict):
                raise DataError(
                    f"{path}: {where}: annotations[{k}]: expected an object, "
                    f"got {json_type_name(annotation)}"
                )
            if annotation.get("was_cancelled"):
                continue  # a skip in Label Studio, not a vote
            values, used = _span_regions(path, where, annotation, k, from_name)
            controls |= used
            item.add(
                _annotation_name(annotation, k),
                annotator_name(annotation, item.source_id, k),
                values,
            )
        if from_name is None and len(controls) > 1:
            # Two <Labels> controls on one text: mixing them would merge two questions.
            raise DataError(
                f"{path}: {where}: span labels from several controls "
                f"({', '.join(sorted(map(str, controls)))}); "
                "set label_import.label_studio.from_name to the one holding the entities"
            )
        if annotations:
            reason = NO_USABLE_ANNOTATION
        elif task.get("predictions"):
            reason = NO_ANNOTATIONS_ONLY_PREDICTIONS
        else:
            reason = NO_ANNOTATIONS
        item.emit(rows, reason)
    return rows


# ---------------------------------------------------------------------------
# JSON-MIN
# ---------------------------------------------------------------------------


def _min_span_key(path: Path, items: list[dict[str, Any]], cfg: ImportConfig) -> str | None:
    """The key holding the regions: ``from_name`` when set, else the one span-list key."""
    if cfg.label_studio.from_name is not None:
        return cfg.label_studio.from_name
    excluded = MIN_METADATA_KEYS | {cfg.label_studio.text_field}
    candidates = dict.fromkeys(
        key
        for item in items
        for key, value in item.items()
        if key not in excluded and _is_span_list(value)
    )
    if len(candidates) > 1:
        raise DataError(
            f"{path}: span labels under several keys ({', '.join(candidates)}); "
            "set label_import.label_studio.from_name to the one holding the entities"
        )
    return next(iter(candidates), None)


def _read_min(path: Path, data: list[Any], cfg: ImportConfig) -> Rows:
    field = cfg.label_studio.text_field
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(
                f"{path}: {item_where(item, i)}: expected an object, got {json_type_name(item)}"
            )
    key = _min_span_key(path, data, cfg)

    tasks: dict[str, _Task] = {}
    for i, item in enumerate(data):
        where = item_where(item, i)
        raw = _raw_text(path, item, where, field, field)
        source_id = item_source_id(item, i)
        task = tasks.get(source_id)
        if task is None:
            task = tasks[source_id] = _Task(raw, source_id, where)
        elif task.raw != raw:
            raise DataError(
                f"{path}: {where}: id {source_id} is also the id of {task.where}, with a "
                "different text; ids must identify one task"
            )
        values = item.get(key) if key is not None else None
        if values is None:
            if item.get("annotation_id") is None and "annotation_id" in item:
                continue  # a task exported without any annotation: no vote
            values = []  # an annotation that marks no entity has no regions, so no key
        if not isinstance(values, list):
            raise DataError(
                f"{path}: {where}: {key}: expected a list of spans, got {json_type_name(values)}"
            )
        if item.get("annotator") not in (None, ""):
            annotator = str(item["annotator"])
        elif item.get("annotation_id") is not None:
            annotator = f"annotation-{item['annotation_id']}"
        else:
            annotator = f"item-{i}"
        name = (
            f"annotation {item['annotation_id']}"
            if item.get("annotation_id") is not None
            else f"element at index {i}"
        )
        task.add(name, annotator, values, where)

    rows = Rows()
    for task in tasks.values():
        task.emit(rows, NO_ANNOTATIONS)
    return rows


def read_label_studio_spans(
    path: str | Path, cfg: ImportConfig, data: list[Any] | None = None
) -> VoteTable:
    """Read a Label Studio span export (full JSON or JSON-MIN) into votes.

    ``data`` is the parsed file when the caller has read it already. Each
    non-cancelled annotation is one vote, its label the canonical span JSON of
    its regions (``[]`` for none). Tasks with a region that does not fit the
    text, and tasks without a usable annotation, are in ``rejected`` with the
    reason. Raises :class:`DataError` naming the file and item when the file's
    structure is wrong (not a list, a task without ``data``, a missing text,
    spans from two controls without ``from_name`` set).
    """
    path = Path(path)
    if data is None:
        data = load_json(path)
    first = next((t for t in data if isinstance(t, dict)), None)
    full = first is not None and "annotations" in first
    rows = _read_full(path, data, cfg) if full else _read_min(path, data, cfg)
    votes, rejected = rows.frames()
    return VoteTable(votes, rejected, FORMAT)


#: the registry entry (:class:`~slmops.tasks.labels.sources.LabelFormat`): a JSON export
#: whose regions are spans is read here before the choice readers see it
LABEL_STUDIO_SPANS = LabelFormat(
    FORMAT, JSON_SUFFIXES, read_label_studio_spans, claims=is_span_export
)
