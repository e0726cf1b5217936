"""Sub-word label alignment and decoding on the real MiniLM tokenizer: pieces of a
word, punctuation, ``@user``, truncation, irregular whitespace and unicode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slmops.tasks.model.runtime import resolve_base_model
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.task_types.token.alignment import (
    IGNORE_INDEX,
    NO_WORD,
    bio_viterbi,
    decode,
    encode,
    entities,
    inside,
    token_words,
    word_tags,
)
from tests.tasks.tiny_model import WNUT_TYPES, tiny_ner_frames

TYPES = ["location", "person"]
TAGS = sp.tag_names(TYPES)  # O, B-location, I-location, B-person, I-person
INDEX = {t: i for i, t in enumerate(TAGS)}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base_model("minilm"))


def pieces(tokenizer, encoded, row: int = 0) -> list[str]:
    return tokenizer.convert_ids_to_tokens(encoded["input_ids"][row])


def probs_for(word_of_token: list[int], tags: list[str], sure: float = 0.9) -> np.ndarray:
    """Token probabilities that put ``sure`` on each word's tag at every piece of it
    (and on O at special tokens); the rest spread evenly."""
    out = np.full((len(word_of_token), len(TAGS)), (1 - sure) / (len(TAGS) - 1))
    for t, w in enumerate(word_of_token):
        out[t, INDEX["O" if w == NO_WORD else tags[w]]] = sure
    return out


# --------------------------------------------------------------------------- encode


def test_first_piece_of_a_split_word_carries_its_tag_and_the_rest_are_ignored(tokenizer):
    text = "@paulwalk visits the Empire State Building."
    gold = [(0, 9, "person"), (21, 42, "location")]
    enc = encode(tokenizer, [text], [sp.dumps(gold)], INDEX, max_length=64)
    assert pieces(tokenizer, enc) == [
        "[CLS]", "@", "paul", "##walk", "visits", "the", "empire", "state", "building", ".",
        "[SEP]",
    ]  # fmt: skip
    # words: @paulwalk visits the Empire State Building .
    assert enc["word_ids"][0] == [NO_WORD, 0, 0, 0, 1, 2, 3, 4, 5, 6, NO_WORD]
    tags = ["B-person", "O", "O", "B-location", "I-location", "I-location", "O"]
    assert sp.to_tags(text, gold) == tags
    want = [IGNORE_INDEX, INDEX["B-person"], IGNORE_INDEX, IGNORE_INDEX]
    want += [INDEX[t] for t in tags[1:]] + [IGNORE_INDEX]
    assert enc["labels"][0] == want
    # The offsets are the tokenizer's, into the text as given.
    assert enc["offset_mapping"][0][2] == (1, 5)


def test_label_all_subwords_gives_continuation_pieces_the_inside_tag(tokenizer):
    text = "Tokenization hit Rotterdam"
    enc = encode(
        tokenizer, [text], [[(0, 12, "person")]], INDEX, max_length=64, label_all_subwords=True
    )
    names = pieces(tokenizer, enc)
    assert names[:3] == ["[CLS]", "token", "##ization"]
    labels = dict(zip(range(len(names)), enc["labels"][0], strict=True))
    assert labels[1] == INDEX["B-person"]
    assert labels[2] == INDEX["I-person"], "B- becomes I- on the continuation piece"
    assert labels[0] == labels[len(names) - 1] == IGNORE_INDEX, "special tokens never"
    # O words stay O on every piece.
    for t, w in enumerate(enc["word_ids"][0]):
        if w in (1, 2):
            assert enc["labels"][0][t] == INDEX["O"]
    assert inside("B-x") == "I-x" and inside("I-x") == "I-x" and inside("O") == "O"


def test_punctuation_words_take_labels_too(tokenizer):
    # "#photography" is one word, its first piece "#"; "!" and "(" are words of their
    # own, "!" inside an entity, "(" outside.
    text = "Love #photography ( Yahoo ! ) ."
    gold = [(5, 17, "location"), (20, 27, "person")]
    assert sp.to_tags(text, gold) == ["O", "B-location", "O", "B-person", "I-person", "O", "O"]
    enc = encode(tokenizer, [text], [gold], INDEX, max_length=64)
    tokens = pieces(tokenizer, enc)
    hash_at = tokens.index("#")
    assert enc["labels"][0][hash_at] == INDEX["B-location"]
    assert enc["labels"][0][hash_at + 1] == IGNORE_INDEX  # photography: same word
    assert enc["labels"][0][tokens.index("!")] == INDEX["I-person"]
    assert enc["labels"][0][tokens.index("(")] == INDEX["O"]
    assert enc["labels"][0][tokens.index(".")] == INDEX["O"]


def test_truncated_words_are_not_labelled(tokenizer):
    words = [f"w{i}" for i in range(30)]
    text = " ".join(words) + " Paris"
    start = len(text) - len("Paris")
    enc = encode(tokenizer, [text], [[(start, len(text), "location")]], INDEX, max_length=8)
    assert len(enc["input_ids"][0]) == 8
    assert enc["word_ids"][0][-1] == NO_WORD  # [SEP] is kept after the cut
    labelled = [x for x in enc["labels"][0] if x != IGNORE_INDEX]
    assert INDEX["B-location"] not in labelled, "the cut entity has no target"
    assert len(labelled) == len({w for w in enc["word_ids"][0] if w != NO_WORD})


def test_irregular_whitespace_and_unicode_keep_offsets_into_the_text(tokenizer):
    text = "  New\tYork \u00a0 is  big\n\nZürich café 😀 NYC "
    bounds = sp.words(text)
    assert [text[s:e] for s, e in bounds] == [
        "New", "York", "is", "big", "Zürich", "café", "😀", "NYC",
    ]  # fmt: skip
    enc = encode(tokenizer, [text], [[(2, 10, "location"), (22, 28, "location")]], INDEX, 64)
    assert enc["word_ids"][0] == [NO_WORD, 0, 1, 2, 3, 4, 5, 6, 7, NO_WORD]
    assert pieces(tokenizer, enc)[5] == "zurich"  # accents stripped, offsets not
    assert enc["offset_mapping"][0][5] == (22, 28)


def test_encode_without_labels_and_with_nothing(tokenizer):
    enc = encode(tokenizer, ["a b", "   "], max_length=16)
    assert "labels" not in enc
    assert enc["word_ids"] == [[NO_WORD, 0, 1, NO_WORD], [NO_WORD, NO_WORD]]
    empty = encode(tokenizer, [], [], INDEX)
    assert empty["input_ids"] == [] and empty["labels"] == []
    with pytest.raises(sp.SpanError, match="cuts a word"):
        encode(tokenizer, ["New York"], [[(0, 2, "location")]], INDEX)
    with pytest.raises(ValueError, match="tag_index"):
        encode(tokenizer, ["a"], ["[]"])


def test_a_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        encode(Slow(), ["text"])


def test_token_words_maps_pieces_and_skips_specials_and_whitespace():
    text = "ab  cd"
    assert token_words(text, [(0, 0), (0, 1), (1, 2), (2, 4), (4, 6), (0, 0)]) == [
        NO_WORD, 0, 0, NO_WORD, 1, NO_WORD,
    ]  # fmt: skip


# --------------------------------------------------------------------------- decode


def test_decode_gives_spans_scores_and_text_of_the_original(tokenizer):
    text = "  @paulwalk\tvisits   Empire State\u00a0Building ."
    enc = encode(tokenizer, [text], max_length=64)
    tags = ["B-person", "O", "B-location", "I-location", "I-location", "O"]
    words = enc["word_ids"][0]
    probs = probs_for(words, tags)
    # The second piece of "@paulwalk" disagrees: only first pieces count.
    second = [t for t, w in enumerate(words) if w == 0][1]
    probs[second] = probs_for([0], ["O"], 0.99)[0]
    probs[words.index(3)] = probs_for([0], ["I-location"], 0.6)[0]  # "State", less sure
    found = decode(text, enc["offset_mapping"][0], words, probs, TAGS)
    assert [(e["start"], e["end"], e["label"], e["text"]) for e in found] == [
        (2, 11, "person", "@paulwalk"),
        (21, 42, "location", "Empire State\u00a0Building"),
    ]
    assert found[0]["score"] == pytest.approx(0.9)
    assert found[1]["score"] == pytest.approx((0.9 + 0.6 + 0.9) / 3)
    for e in found:
        assert text[e["start"] : e["end"]] == e["text"]
    # word_of_token is optional: recomputed from the offsets.
    assert decode(text, enc["offset_mapping"][0], None, probs, TAGS) == found


def test_decoding_the_targets_gives_back_the_gold_spans(tokenizer):
    train, _ = tiny_ner_frames(64, 0)
    tags = sp.tag_names(WNUT_TYPES)
    index = {t: i for i, t in enumerate(tags)}
    enc = encode(tokenizer, train["text"], train["label"], index, max_length=128)
    entity_count = 0
    for i, (text, cell) in enumerate(zip(train["text"], train["label"], strict=True)):
        probs = np.full((len(enc["input_ids"][i]), len(tags)), 0.01)
        for t, target in enumerate(enc["labels"][i]):
            probs[t, index["O"] if target == IGNORE_INDEX else target] = 0.9
        found = decode(text, enc["offset_mapping"][i], enc["word_ids"][i], probs, tags)
        assert [(e["start"], e["end"], e["label"]) for e in found] == sp.loads(cell), text
        entity_count += len(found)
    assert entity_count > 20


def test_truncated_words_are_predicted_O_without_a_score(tokenizer):
    text = " ".join(f"w{i}" for i in range(30)) + " Paris"
    enc = encode(tokenizer, [text], max_length=8)
    words = enc["word_ids"][0]
    seen = {w for w in words if w != NO_WORD}
    probs = probs_for(words, ["B-location"] * 31, sure=0.8)
    result = word_tags(text, enc["offset_mapping"][0], words, probs, TAGS)
    assert len(result.tags) == 31
    assert all(result.tags[w] == "B-location" for w in seen)
    assert all(result.tags[w] == "O" for w in range(31) if w not in seen)
    assert all(math.isnan(result.scores[w]) for w in range(31) if w not in seen)
    assert result.confidence == pytest.approx(0.8), "unseen words do not dilute it"
    found = entities(text, result)
    assert len(found) == len(seen) and all(e["end"] <= len(text) - 6 for e in found)


def test_a_token_covering_two_words_continues_the_entity():
    # A byte-level BPE tokenizer may keep "Bob," whole: the word "," has no piece of
    # its own and takes the covering token's tag, turned inside.
    text = "Bob, car"
    offsets = [(0, 0), (0, 4), (5, 8), (0, 0)]
    words = token_words(text, offsets)
    assert words == [NO_WORD, 0, 2, NO_WORD]
    tags = {0: "B-person", 2: "O"}
    probs = probs_for(words, [tags.get(w, "O") for w in range(3)])
    result = word_tags(text, offsets, words, probs, TAGS)
    assert result.tags == ["B-person", "I-person", "O"]
    assert decode(text, offsets, words, probs, TAGS)[0]["text"] == "Bob,"


def test_a_text_without_words_has_no_entities_and_full_confidence(tokenizer):
    enc = encode(tokenizer, ["  \n "], max_length=16)
    probs = probs_for(enc["word_ids"][0], [])
    result = word_tags("  \n ", enc["offset_mapping"][0], enc["word_ids"][0], probs, TAGS)
    assert result.tags == [] and result.confidence == 1.0
    assert entities("  \n ", result) == []
    with pytest.raises(ValueError, match="one column per tag"):
        word_tags("a", [(0, 1)], [0], np.ones((1, 3)), TAGS)


def word_probs(*rows: dict[str, float]) -> np.ndarray:
    """Per-word tag probabilities from ``{tag: p}`` dicts, the rest spread evenly."""
    out = np.zeros((len(rows), len(TAGS)))
    for w, row in enumerate(rows):
        rest = (1 - sum(row.values())) / (len(TAGS) - len(row))
        out[w] = [row.get(t, rest) for t in TAGS]
    return out


def test_viterbi_keeps_a_well_formed_argmax():
    probs = word_probs({"B-person": 0.7}, {"I-person": 0.6}, {"O": 0.9}, {"B-location": 0.5})
    assert [TAGS[k] for k in bio_viterbi(probs, TAGS)] == [
        "B-person",
        "I-person",
        "O",
        "B-location",
    ]
    assert bio_viterbi(np.zeros((0, len(TAGS))), TAGS) == []


def test_viterbi_mends_an_entity_whose_words_disagree_on_the_type():
    # argmax: B-person I-location (a person cut short, a location from nowhere).
    probs = word_probs(
        {"B-person": 0.8, "B-location": 0.1},
        {"I-location": 0.45, "I-person": 0.4, "O": 0.1},
    )
    assert [TAGS[k] for k in bio_viterbi(probs, TAGS)] == ["B-person", "I-person"]


def test_viterbi_never_starts_an_entity_with_inside():
    # An I-x after O (or first) is impossible; the best well-formed choice wins: here
    # B-location at the start, O after an O.
    probs = word_probs(
        {"I-location": 0.5, "B-location": 0.3}, {"O": 0.9}, {"I-person": 0.5, "O": 0.4}
    )
    assert [TAGS[k] for k in bio_viterbi(probs, TAGS)] == ["B-location", "O", "O"]


def test_word_tags_score_the_chosen_tag_and_spans_follow_the_mended_path(tokenizer):
    text = "Empire State rocks"
    enc = encode(tokenizer, [text], max_length=16)
    words = enc["word_ids"][0]
    probs = probs_for(words, ["B-location", "O", "O"])
    state = words.index(1)
    probs[state] = word_probs({"I-person": 0.5, "I-location": 0.4, "O": 0.05})[0]
    result = word_tags(text, enc["offset_mapping"][0], words, probs, TAGS)
    assert result.tags == ["B-location", "I-location", "O"]
    assert result.scores[1] == pytest.approx(0.4), "the chosen tag's probability, not the top one"
    assert result.spans() == [(0, 12, "location")]


def test_tags_without_O_are_refused():
    with pytest.raises(ValueError, match="no O tag"):
        bio_viterbi(np.ones((1, 2)) / 2, ["B-x", "I-x"])
