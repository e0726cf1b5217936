"""CoNLL files (one token and its BIO tag per line) to and from labeled NER rows.

The format read: each line is ``token<TAB>tag``; a blank line ends a sentence;
``-DOCSTART-`` lines (CoNLL-2003 document breaks) end a sentence and are
skipped. A sentence becomes one row: its tokens joined by single spaces, and
its entities as character spans over that text (:mod:`tasks.task_types.token.spans`),
stored as canonical span JSON in the ``label`` cell.

What is tolerated, because real files have it:

- CRLF line ends, a UTF-8 byte order mark, trailing whitespace after the tag,
  a missing blank line at the end of the file;
- a line holding nothing but whitespace (WNUT 2017's ``train.conll`` separates
  its first 2,394 sentences with a lone TAB) is a sentence break;
- a token with whitespace inside (a no-break space, say) keeps its characters,
  each run of whitespace written as one space, so the text still reads as
  words separated by single spaces; its words stay inside the entity it belongs to;
- a whitespace-only token (``"\\u00a0<TAB>O"``) holds no word: tagged ``O`` it
  is left out of the text (keeping it would only add a double space); tagged
  as part of an entity, the sentence is rejected, since an entity cannot be empty.

What is refused:

- ill-formed BIO (``I-x`` after ``O``, after another type or at the start of a
  sentence; a prefix other than ``B``/``I``/``O``; ``B-``/``I-`` without a type):
  the sentence goes to ``rejected`` with a reason naming the line and the tag.
  Nothing is repaired: an ``I-x`` with no ``B-x`` may be the end of an entity
  whose start was mistagged, and guessing its start would invent training data;
- a file that is not CoNLL at all (a line without a TAB-separated tag, more
  than two fields, not UTF-8, empty, missing): :class:`DataError` naming the
  file and the line, and nothing is read.
"""

from __future__ import annotations

import codecs
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from slmops.tasks.core.errors import DataError
from slmops.tasks.labels.sources import (
    REJECTED_COLUMNS,
    VOTE_COLUMNS,
    LabelFormat,
    VoteTable,
    rows_frame,
)
from slmops.tasks.task_types.token import spans as sp

FORMAT = "conll"
ANNOTATOR = "conll"
DOCSTART = "-DOCSTART-"

_WHITESPACE = re.compile(r"\s+")


def _lines(path: Path) -> list[str]:
    """The file's lines, decoded; unreadable files raise :class:`DataError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(
            f"{path}: line {line}: NUL byte: not UTF-8 text (UTF-16?); save the file as UTF-8"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 text ({exc.reason})") from None
    # split("\n"), not splitlines(): a tweet may hold U+2028 or U+0085 inside a token.
    lines = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _bio_error(tag: str, previous: str | None) -> str | None:
    """Why ``tag`` cannot follow ``previous`` (the type of the open entity), or None."""
    if tag == "O":
        return None
    prefix, dash, kind = tag.partition("-")
    if prefix not in ("B", "I") or not dash:
        return f"tag {tag!r} is not O, B-<type> or I-<type>"
    if not kind:
        return f"tag {tag!r} has no entity type"
    if prefix == "I" and previous != kind:
        after = (
            "at the start of the sentence"
            if previous == ""
            else ("after O" if previous is None else f"after an entity of type {previous!r}")
        )
        return f"tag {tag!r} {after} (an entity must start with B-{kind})"
    return None


class _Sentence:
    """Tokens of one sentence as they are read, and the first problem found."""

    def __init__(self, first_line: int) -> None:
        self.first_line = first_line
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.lines: list[int] = []
        self.problem: str | None = None

    def add(self, token: str, tag: str, line: int) -> None:
        self.tokens.append(token)
        self.tags.append(tag)
        self.lines.append(line)

    def row(self) -> tuple[str, str, str | None]:
        """``(text, label, reason)``: the label is canonical span JSON; ``reason``
        is None for a well-formed sentence. A rejected sentence's label lists its
        tags, so the reason can be checked against the file."""
        pieces: list[str] = []
        spans: list[list] = []
        reason = None
        position = 0
        open_type: str | None = ""  # "" = start of sentence, None = after O
        for token, tag, line in zip(self.tokens, self.tags, self.lines, strict=True):
            error = _bio_error(tag, open_type)
            if error is not None:
                reason = reason or f"line {line}: {error}"
            prefix, _, kind = tag.partition("-")
            continues = prefix == "I" and open_type == kind
            open_type = None if tag == "O" else kind
            word = _WHITESPACE.sub(" ", token).strip()
            if not word:
                if tag != "O":
                    reason = reason or (
                        f"line {line}: whitespace-only token tagged {tag!r}: "
                        "an entity needs characters"
                    )
                continue  # an O-tagged token with no characters adds nothing but a space
            start = position + (1 if pieces else 0)
            end = start + len(word)
            pieces.append(word)
            position = end
            if tag == "O":
                continue
            if continues and spans:
                spans[-1][1] = end
            else:
                spans.append([start, end, kind])
        text = " ".join(pieces)
        if reason is None and not text:
            reason = f"line {self.first_line}: sentence has no token with characters"
        if reason is not None:
            return text, " ".join(self.tags), reason
        try:
            # By construction every span starts and ends on a token edge, which is a
            # word edge of spans.words; checked anyway so a bug cannot store bad spans.
            sp.check(text, [tuple(s) for s in spans])
        except sp.SpanError as exc:
            return text, " ".join(self.tags), f"line {self.first_line}: {exc}"
        return text, sp.dumps(spans), None


def read_conll(path: str | Path) -> VoteTable:
    """Read a CoNLL file (``token<TAB>tag`` lines, blank line between sentences) into votes.

    Each sentence is one vote: ``text`` is its tokens joined by single spaces,
    ``label`` the canonical span JSON of its BIO tags (``[]`` when it has no
    entity), ``annotator`` ``"conll"``, ``source_id`` ``"line N"`` (the 1-based
    line of its first token). A sentence with ill-formed BIO is returned in
    ``rejected`` with a reason naming the line and the tag (its ``label`` there
    is the sentence's tags, space-separated). Raises :class:`DataError` naming the
    file and line for a file that is missing, empty, not UTF-8, or has a line that
    is not ``token<TAB>tag``. See the module docstring for what is tolerated.
    """
    path = Path(path)
    votes: list[tuple[str, str, str, str]] = []
    rejected: list[tuple[str, str, str, str]] = []
    sentence: _Sentence | None = None
    sentences = 0

    def close() -> None:
        nonlocal sentence, sentences
        if sentence is not None and sentence.tokens:
            sentences += 1
            text, label, reason = sentence.row()
            source_id = f"line {sentence.first_line}"
            if reason is None:
                votes.append((text, label, ANNOTATOR, source_id))
            else:
                rejected.append((text, label, source_id, reason))
        sentence = None

    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            close()
            continue
        if line.split(maxsplit=1)[0] == DOCSTART:
            close()  # a document break ends the sentence; the line itself is no token
            continue
        token, tab, rest = line.partition("\t")
        tag = rest.strip()
        if not tab or not tag:
            hint = " (fields separated by spaces? the tag must follow a TAB)" if " " in line else ""
            raise DataError(
                f"{path}: line {number}: expected 'token<TAB>tag', found {line.strip()!r}{hint}"
            )
        if "\t" in tag:
            fields = len(line.rstrip().split("\t"))
            raise DataError(
                f"{path}: line {number}: expected 2 TAB-separated fields (token, tag), "
                f"found {fields}"
            )
        if sentence is None:
            sentence = _Sentence(number)
        sentence.add(token, tag, number)
    close()

    if not sentences:
        raise DataError(f"{path}: no sentences (only blank or -DOCSTART- lines)")
    return VoteTable(
        rows_frame(votes, VOTE_COLUMNS), rows_frame(rejected, REJECTED_COLUMNS), FORMAT
    )


def _rows(rows: Iterable[tuple[str, Sequence[sp.Span] | str]] | pd.DataFrame):
    if isinstance(rows, pd.DataFrame):
        return zip(rows["text"], rows["label"], strict=True)
    return rows


def write_conll(
    rows: Iterable[tuple[str, Sequence[sp.Span] | str]] | pd.DataFrame, path: str | Path
) -> Path:
    """Write rows as CoNLL: one word of :func:`tasks.task_types.token.spans.words` and its BIO tag
    per line, a blank line after each sentence; returns the path.

    ``rows`` are ``(text, spans)`` pairs, spans as a list or as their JSON cell,
    or a frame with ``text`` and ``label`` columns. The words are those the model
    sees, so ``@user`` is written as ``@`` and ``user``: reading the file back gives
    the same entities over the words joined by single spaces. Spans are checked
    (:class:`tasks.task_types.token.spans.SpanError` for one that does not fit its text, a
    ``ValueError`` for a text without words, with the row's index), and the file
    is written atomically: a failure leaves the old file, never half a new one.
    """
    path = Path(path)
    out: list[str] = []
    for i, (text, spans) in enumerate(_rows(rows)):
        parsed = sp.loads(spans) if isinstance(spans, str) else list(spans)
        try:
            tags = sp.to_tags(text, parsed)
        except sp.SpanError as exc:
            raise sp.SpanError(f"row {i}: {exc}") from None
        bounds = sp.words(text)
        if not bounds:
            raise ValueError(f"row {i}: text {text!r} has no words to write")
        out += [f"{text[s:e]}\t{tag}" for (s, e), tag in zip(bounds, tags, strict=True)]
        out.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(out) + ("\n" if out else ""))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: the registry entry (:class:`~slmops.tasks.labels.sources.LabelFormat`) of CoNLL files
CONLL = LabelFormat(FORMAT, (".conll",), lambda path, cfg, data: read_conll(path))
