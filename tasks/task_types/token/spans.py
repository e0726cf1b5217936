"""Entity spans and word-level BIO tags: the one representation NER data is kept in.

A labeled NER row is a text and its entities as character spans
``(start, end, type)`` (``end`` exclusive), stored in the ``label`` column as
canonical JSON (:func:`dumps`). Spans survive any tokenizer: words, BIO tags
and sub-word labels are derived from them when a model is trained, and a
model's predictions are turned back into spans of the caller's own text.

Words (:func:`words`) are what a tweet tokenizer makes of the text: tokens
between whitespace, with punctuation at their edges cut off as words of their
own (``Paris,`` is ``Paris`` and ``,``), while ``@user``, ``#tag``, URLs,
``don't`` and ``U.S`` stay whole. That is close to how CoNLL NER data (WNUT 2017
included) is tokenized: splitting every punctuation mark instead (``@`` +
``user``) lost 3 to 4 points of entity F1 on WNUT 2017 (40.4 and 39.5 against
43.8 with whitespace tokens, MiniLM-L6, same recipe), because an entity then
spans more words and the model must get each one right.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

Span = tuple[int, int, str]

_TOKEN = re.compile(r"\S+")
# Leading punctuation (but not the @ of a mention or the # of a hashtag), and a run
# of non-word characters (trailing punctuation, matched on the reversed token). Each
# match is one linear scan: a single pattern with a lazy core between the two was
# quadratic in the token's length, and one long token came straight from /predict.
_LEAD = re.compile(r"[^\w@#]*")
_NON_WORD = re.compile(r"\W*")


class SpanError(ValueError):
    """Spans that do not fit their text: out of bounds, overlapping, mid-word, empty."""


def words(text: str) -> list[tuple[int, int]]:
    """Character offsets ``(start, end)`` of the words of ``text``, in order."""
    out: list[tuple[int, int]] = []
    for token in _TOKEN.finditer(text):
        start, end = token.span()
        lead = _LEAD.match(token.group()).group()
        rest = token.group()[len(lead) :]
        core = rest[: len(rest) - len(_NON_WORD.match(rest[::-1]).group())]
        if not core:  # only punctuation: one word (":)", "...")
            out.append((start, end))
            continue
        cut = start + len(lead)
        if lead:
            out.append((start, cut))
        out.append((cut, cut + len(core)))
        if cut + len(core) < end:
            out.append((cut + len(core), end))
    return out


def dumps(spans: Sequence[Sequence]) -> str:
    """Canonical JSON of spans: sorted ``[[start, end, "type"], ...]``, compact."""
    rows = sorted((int(s), int(e), str(t)) for s, e, t in spans)
    return json.dumps([list(r) for r in rows], ensure_ascii=False, separators=(",", ":"))


def loads(cell: str) -> list[Span]:
    """Spans from their JSON cell; a malformed cell raises :class:`SpanError` saying why."""
    try:
        value = json.loads(cell)
    except (TypeError, json.JSONDecodeError) as exc:
        raise SpanError(f"not a JSON list of [start, end, type] spans: {exc}") from None
    except RecursionError:  # the parser recurses per nesting level; spans nest two deep
        raise SpanError("not a JSON list of [start, end, type] spans: nested too deeply") from None
    if not isinstance(value, list):
        raise SpanError("not a JSON list of [start, end, type] spans")
    out: list[Span] = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item[:2])
            or not isinstance(item[2], str)
            or not item[2]
        ):
            raise SpanError(f"span {i} is {item!r}, expected [start, end, type]")
        out.append((item[0], item[1], item[2]))
    return sorted(out)


def check(text: str, spans: Sequence[Span]) -> None:
    """Raise :class:`SpanError` unless every span lies on word boundaries of ``text``,
    covers at least one word, and no two spans overlap."""
    bounds = words(text)
    starts = {s for s, _ in bounds}
    ends = {e for _, e in bounds}
    previous: Span | None = None
    for span in sorted(spans):
        start, end, _kind = span
        if not 0 <= start < end <= len(text):
            raise SpanError(f"span {list(span)} is outside the text (length {len(text)})")
        if start not in starts or end not in ends:
            raise SpanError(
                f"span {list(span)} {text[start:end]!r} cuts a word: entity boundaries "
                "must fall between words"
            )
        if previous is not None and start < previous[1]:
            raise SpanError(f"spans {list(previous)} and {list(span)} overlap")
        previous = span


def to_tags(text: str, spans: Sequence[Span]) -> list[str]:
    """BIO tags, one per word of ``text`` (see :func:`words`); spans are checked first."""
    check(text, spans)
    bounds = words(text)
    tags = ["O"] * len(bounds)
    index = {start: i for i, (start, _) in enumerate(bounds)}
    for start, end, kind in spans:
        i = index[start]
        tags[i] = f"B-{kind}"
        i += 1
        while i < len(bounds) and bounds[i][1] <= end:
            tags[i] = f"I-{kind}"
            i += 1
    return tags


def from_tags(bounds: Sequence[tuple[int, int]], tags: Sequence[str]) -> list[Span]:
    """Spans from BIO tags of words at ``bounds``.

    An ``I-x`` that does not continue an ``x`` entity starts a new one (the
    usual lenient reading of a model's output); ``O`` and unknown tags end it.
    """
    spans: list[Span] = []
    current: list = []  # [start, end, type] of the open entity
    for (start, end), tag in zip(bounds, tags, strict=True):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current and current[2] == kind:
            current[1] = end
            continue
        if current:
            spans.append(tuple(current))
            current = []
        if prefix in ("B", "I") and kind:
            current = [start, end, kind]
    if current:
        spans.append(tuple(current))
    return spans


def tag_names(types: Sequence[str]) -> list[str]:
    """The model's output classes for entity ``types``: ``O``, then ``B-t``, ``I-t`` per type."""
    return ["O", *(f"{p}-{t}" for t in types for p in ("B", "I"))]
