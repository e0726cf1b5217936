"""CoNLL files: sentences to span rows, ill-formed BIO rejected, broken files refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from slmops.tasks.core.config import ImportConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.labels.sources import detect_format, read_votes, resolve_votes
from slmops.tasks.task_types import LABEL_FORMATS
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.task_types.token.conll import read_conll, write_conll
from tests.conftest import REPO

# The project's copy of the seed, else the shared original it was copied from.
WNUT_DIRS = (REPO / "data" / "seed" / "wnut17", REPO.parent / "shared" / "datasets" / "wnut17")


def conll(tmp_path: Path, text: str, name: str = "d.conll", newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def entities(text: str, label: str) -> list[tuple[str, str]]:
    return [(text[s:e], t) for s, e, t in sp.loads(label)]


GOOD = """Barack\tB-person
Obama\tI-person
visited\tO
Paris\tB-location
!\tO

no\tO
entity\tO
here\tO
"""


def test_sentences_become_texts_with_span_labels(tmp_path: Path) -> None:
    table = read_conll(conll(tmp_path, GOOD))
    assert table.fmt == "conll"
    assert table.rejected.empty
    votes = table.votes
    assert list(votes["text"]) == ["Barack Obama visited Paris !", "no entity here"]
    assert list(votes["label"]) == ['[[0,12,"person"],[21,26,"location"]]', "[]"]
    assert list(votes["annotator"]) == ["conll", "conll"]
    assert list(votes["source_id"]) == ["line 1", "line 7"]


def test_crlf_docstart_trailing_space_and_no_final_blank_line(tmp_path: Path) -> None:
    text = "-DOCSTART- -X- -X- O\n\nNew\tB-location \nYork\tI-location\t\n\n-DOCSTART-\tO\nok\tO"
    table = read_conll(conll(tmp_path, text, newline="\r\n"))
    assert table.rejected.empty
    assert list(table.votes["text"]) == ["New York", "ok"]
    assert entities("New York", table.votes["label"][0]) == [("New York", "location")]
    assert list(table.votes["source_id"]) == ["line 3", "line 7"]


def test_a_whitespace_only_line_separates_sentences(tmp_path: Path) -> None:
    # WNUT 2017's train.conll separates its first sentences with a lone TAB.
    table = read_conll(conll(tmp_path, "a\tO\n\t\nb\tB-person\n \nc\tO\n"))
    assert list(table.votes["text"]) == ["a", "b", "c"]


def test_tokens_with_whitespace_inside_or_only_whitespace(tmp_path: Path) -> None:
    text = "New\u00a0York\tB-location\n\u00a0\tO\nrocks\tO\n"
    table = read_conll(conll(tmp_path, text))
    assert table.rejected.empty
    # Inner whitespace becomes one space; a whitespace-only O token adds nothing.
    assert list(table.votes["text"]) == ["New York rocks"]
    assert entities("New York rocks", table.votes["label"][0]) == [("New York", "location")]


def test_a_whitespace_only_token_in_an_entity_rejects_the_sentence(tmp_path: Path) -> None:
    table = read_conll(conll(tmp_path, "New\tB-location\n\u00a0\tI-location\n"))
    assert table.votes.empty
    assert "line 2: whitespace-only token tagged 'I-location'" in table.rejected["reason"][0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            "a\tO\nb\tI-person\n",
            "line 4: tag 'I-person' after O (an entity must start with B-person)",
        ),
        ("a\tI-person\n", "line 3: tag 'I-person' at the start of the sentence"),
        ("a\tB-group\nb\tI-person\n", "line 4: tag 'I-person' after an entity of type 'group'"),
        ("a\tE-person\n", "line 3: tag 'E-person' is not O, B-<type> or I-<type>"),
        ("a\tPER\n", "line 3: tag 'PER' is not O, B-<type> or I-<type>"),
        ("a\tB-\n", "line 3: tag 'B-' has no entity type"),
        ("a\tb-person\n", "line 3: tag 'b-person' is not O"),
    ],
)
def test_ill_formed_bio_rejects_the_sentence_naming_line_and_tag(
    tmp_path: Path, body: str, reason: str
) -> None:
    # A good sentence first: the bad one (from line 3) is rejected, the good one kept,
    # none repaired.
    table = read_conll(conll(tmp_path, "ok\tO\n\n" + body))
    assert list(table.votes["text"]) == ["ok"]
    assert len(table.rejected) == 1
    row = table.rejected.iloc[0]
    assert reason in row["reason"]
    assert row["source_id"] == "line 3"
    assert row["label"] == " ".join(line.split("\t")[1] for line in body.splitlines())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"a\tO\nb O\n",
            r"d\.conll: line 2: expected 'token<TAB>tag', found 'b O' \(fields separated",
        ),
        (b"a\tO\nb\n", r"d\.conll: line 2: expected 'token<TAB>tag'"),
        (b"a\tO\nb\t\n", r"d\.conll: line 2: expected 'token<TAB>tag'"),
        (b"a\tO\tx\n", r"d\.conll: line 1: expected 2 TAB-separated fields .* found 3"),
        (b"a\tO\n\nb\xff\tO\n", r"d\.conll: line 3: not valid UTF-8"),
        (b"a\x00\tO\n", r"d\.conll: line 1: NUL byte"),
        (b"", r"d\.conll: file is empty"),
        (b"\n \n", r"d\.conll: file is empty"),
        (b"-DOCSTART- O\n\n", r"d\.conll: no sentences"),
    ],
)
def test_structurally_broken_files_are_errors_naming_file_and_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "d.conll"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_conll(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.conll: file not found"):
        read_conll(tmp_path / "nope.conll")


def test_read_votes_detects_conll_by_suffix(tmp_path: Path) -> None:
    path = conll(tmp_path, GOOD)
    assert detect_format(path, LABEL_FORMATS) == "conll"
    table = read_votes(path, ImportConfig(), LABEL_FORMATS)
    assert table.fmt == "conll" and len(table.votes) == 2
    resolved, quarantined = resolve_votes(table.votes, 0.5)
    assert quarantined.empty
    assert list(resolved["label"]) == list(table.votes["label"])


def test_write_then_read_gives_the_same_entities_over_model_words(tmp_path: Path) -> None:
    rows = [
        ("thanks @justinbieber for Yahoo!", [(7, 20, "person"), (25, 30, "corporation")]),
        ("nothing here", "[]"),
    ]
    path = write_conll(rows, tmp_path / "out.conll")
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[:8] == [
        "thanks\tO",
        "@justinbieber\tB-person",
        "for\tO",
        "Yahoo\tB-corporation",
        "!\tO",
        "",
        "nothing\tO",
        "here\tO",
    ]
    back = read_conll(path).votes
    assert list(back["text"]) == ["thanks @justinbieber for Yahoo !", "nothing here"]
    assert entities(back["text"][0], back["label"][0]) == [
        ("@justinbieber", "person"),
        ("Yahoo", "corporation"),
    ]
    # A frame with text and label columns works too.
    frame = pd.DataFrame({"text": [r[0] for r in rows], "label": [sp.dumps(rows[0][1]), "[]"]})
    assert write_conll(frame, tmp_path / "f.conll").read_text() == path.read_text()


def test_write_refuses_spans_that_do_not_fit(tmp_path: Path) -> None:
    with pytest.raises(sp.SpanError, match=r"row 1: .*cuts a word"):
        write_conll([("ok", "[]"), ("Barack", [(0, 3, "person")])], tmp_path / "x.conll")
    assert not (tmp_path / "x.conll").exists()


def _wnut(name: str) -> Path:
    for root in WNUT_DIRS:
        if (root / name).exists():
            return root / name
    pytest.skip(f"WNUT 2017 {name} not found in {', '.join(map(str, WNUT_DIRS))}")


def test_wnut17_test_split_reads_whole_and_round_trips() -> None:
    table = read_conll(_wnut("test.conll"))
    votes = table.votes
    assert len(votes) == 1287
    assert table.rejected.empty
    kinds: Counter[str] = Counter()
    for text, label in zip(votes["text"], votes["label"], strict=True):
        spans = sp.loads(label)
        kinds.update(t for _, _, t in spans)
        tags = sp.to_tags(text, spans)  # also checks the spans against the text
        assert sp.from_tags(sp.words(text), tags) == spans
        previous = None
        for tag in tags:  # strictly well-formed BIO over the model's words
            prefix, _, kind = tag.partition("-")
            assert prefix != "I" or previous == kind, (text, tags)
            previous = None if tag == "O" else kind
    assert sum(kinds.values()) == 1079
    assert kinds == {
        "person": 429,
        "creative-work": 142,
        "group": 165,
        "location": 150,
        "product": 127,
        "corporation": 66,
    }
    json.dumps(votes.to_dict("records"))  # plain strings throughout
