"""Spans, words and BIO tags: the one representation NER data is kept in."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slmops.tasks.task_types.token.spans import (
    SpanError,
    check,
    dumps,
    from_tags,
    loads,
    tag_names,
    to_tags,
    words,
)


def cut(text: str) -> list[str]:
    return [text[s:e] for s, e in words(text)]


def test_words_are_whitespace_tokens_with_edge_punctuation_cut_off() -> None:
    assert cut("Hi @user, it's 2017!! (U.S.) #Boston http://t.co/x.") == [
        "Hi",
        "@user",
        ",",
        "it's",
        "2017",
        "!!",
        "(",
        "U.S",
        ".)",
        "#Boston",
        "http://t.co/x",
        ".",
    ]
    assert cut(":) ... --") == [":)", "...", "--"]  # all punctuation: one word each
    assert cut("  New   York ") == ["New", "York"]
    assert words("") == []


def test_to_tags_marks_begin_and_inside_per_word() -> None:
    text = "I met Barack Obama in Paris"
    spans = [(6, 18, "person"), (22, 27, "location")]
    assert to_tags(text, spans) == ["O", "O", "B-person", "I-person", "O", "B-location"]
    assert from_tags(words(text), to_tags(text, spans)) == spans


def test_punctuation_inside_an_entity_is_tagged_inside() -> None:
    text = "Watch Yahoo! tonight"
    spans = [(6, 12, "corporation")]  # "Yahoo!": the "!" is a word of its own
    assert to_tags(text, spans) == ["O", "B-corporation", "I-corporation", "O"]
    assert from_tags(words(text), to_tags(text, spans)) == spans


def test_a_mention_is_one_word_and_a_span_cannot_cut_it() -> None:
    text = "thanks @justinbieber!"
    assert cut(text) == ["thanks", "@justinbieber", "!"]
    assert to_tags(text, [(7, 20, "person")]) == ["O", "B-person", "O"]
    with pytest.raises(SpanError, match="cuts a word"):
        to_tags(text, [(8, 20, "person")])


def test_adjacent_entities_of_one_type_stay_apart() -> None:
    text = "Paris London"
    spans = [(0, 5, "location"), (6, 12, "location")]
    tags = to_tags(text, spans)
    assert tags == ["B-location", "B-location"]
    assert from_tags(words(text), tags) == spans


def test_from_tags_reads_a_stray_inside_tag_leniently() -> None:
    # A model's output: I-x after O starts an entity; a type change ends one.
    text = "a b c d"
    assert from_tags(words(text), ["O", "I-person", "I-group", "O"]) == [
        (2, 3, "person"),
        (4, 5, "group"),
    ]


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ([(6, 9, "person")], "cuts a word"),  # "Bar" of "Barack"
        ([(13, 20, "person")], "cuts a word"),  # "Obama i": ends mid-word
        ([(6, 12, "person"), (6, 18, "person")], "overlap"),
        ([(6, 18, "person"), (13, 21, "person")], "overlap"),
        ([(0, 99, "person")], "outside the text"),
        ([(-1, 5, "person")], "outside the text"),
        ([(5, 5, "person")], "outside the text"),
        ([(5, 6, "person")], "cuts a word"),  # the space between two words
    ],
)
def test_check_refuses_spans_that_do_not_fit(spans, message) -> None:
    with pytest.raises(SpanError, match=message):
        check("I met Barack Obama in Paris", spans)


def test_dumps_is_canonical_and_loads_reads_it_back() -> None:
    cell = dumps([(22, 27, "location"), (6, 18, "person")])
    assert cell == '[[6,18,"person"],[22,27,"location"]]'
    assert loads(cell) == [(6, 18, "person"), (22, 27, "location")]
    assert dumps([]) == "[]" and loads("[]") == []
    assert dumps([(0, 4, "création")]) == '[[0,4,"création"]]'  # not \\u-escaped


@pytest.mark.parametrize(
    "cell", ["", "nope", "{}", "[[0,1]]", '[[0,"1","x"]]', '[[0,1,""]]', '[[true,1,"x"]]']
)
def test_loads_refuses_cells_that_are_not_span_lists(cell) -> None:
    with pytest.raises(SpanError):
        loads(cell)


def test_tag_names_order() -> None:
    assert tag_names(["person", "group"]) == ["O", "B-person", "I-person", "B-group", "I-group"]


# The one-pattern definition words() had before it became linear: lead, lazy core,
# trailing punctuation. The new one must cut every text the same way.
_OLD_EDGES = re.compile(r"([^\w@#]*)(.*?)(\W*)", re.DOTALL)


def old_cut(text: str) -> list[str]:
    out = []
    for token in re.finditer(r"\S+", text):
        lead, core, trail = _OLD_EDGES.fullmatch(token.group()).groups()
        out += [token.group()] if not core else [p for p in (lead, core, trail) if p]
    return out


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab_9é @#.,!?:)(-'\"\u200b\t\n"), max_size=40))
def test_words_cut_texts_as_the_one_pattern_definition_did(text) -> None:
    assert cut(text) == old_cut(text)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("a" * 100_000, ["a" * 100_000]),
        ("!" * 100_000, ["!" * 100_000]),
        ("(" + "a!" * 50_000, ["(", "a!" * 49_999 + "a", "!"]),
        ("#" + "!" * 100_000 + "a", ["#" + "!" * 100_000 + "a"]),
    ],
    ids=["word", "punctuation", "alternating", "hashtag-of-punctuation"],
)
def test_one_very_long_token_is_cut_in_one_pass(token, expected) -> None:
    """A 100k-character token from /predict (the one-pattern cut was quadratic: 7 s for
    ``#`` and 32k ``!`` then a letter)."""
    assert cut(f"hi {token} there") == ["hi", *expected, "there"]


def test_a_deeply_nested_cell_is_a_span_error() -> None:
    with pytest.raises(SpanError, match="nested too deeply"):
        loads("[" * 100_000 + "]" * 100_000)
