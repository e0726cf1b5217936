"""Strict entity-level metrics on character spans, checked against hand counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slmops.tasks.task_types.token.metrics import entity_report, length_slices, row_counts

TYPES = ["person", "location"]


def test_exact_match_scores_one() -> None:
    gold = [[(0, 5, "person"), (10, 15, "location")], []]
    report = entity_report(gold, gold, TYPES)
    assert report["precision"] == report["recall"] == report["f1"] == 1.0
    assert report["macro_f1"] == 1.0
    assert report["accuracy"] == 1.0  # the empty row matches too
    assert report["entities"] == report["predicted"] == 2
    json.dumps(report)


def test_a_boundary_mismatch_is_a_false_positive_and_a_false_negative() -> None:
    gold = [[(0, 12, "person")]]
    pred = [[(7, 12, "person")]]
    assert row_counts(gold, pred).tolist() == [[0, 1, 1]]
    report = entity_report(gold, pred, TYPES)
    assert (report["precision"], report["recall"], report["f1"]) == (0.0, 0.0, 0.0)
    assert report["per_class"]["person"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
        "predicted": 1,
    }


def test_a_type_mismatch_counts_against_both_types() -> None:
    gold = [[(0, 5, "person")]]
    pred = [[(0, 5, "location")]]
    report = entity_report(gold, pred, TYPES)
    assert report["f1"] == 0.0
    assert report["per_class"]["person"]["support"] == 1
    assert report["per_class"]["person"]["predicted"] == 0
    assert report["per_class"]["location"]["support"] == 0
    assert report["per_class"]["location"]["predicted"] == 1
    assert report["macro_f1"] == 0.0


def test_empty_gold_and_pred_give_zeros_not_errors() -> None:
    report = entity_report([[], []], [[], []], TYPES)
    assert (report["precision"], report["recall"], report["f1"], report["macro_f1"]) == (0, 0, 0, 0)
    assert report["accuracy"] == 1.0  # both rows rightly have no entity
    assert report["per_class"]["person"]["support"] == 0
    empty = entity_report([], [], TYPES)
    assert empty["accuracy"] == 0.0 and empty["entities"] == 0
    assert row_counts([], []).shape == (0, 3)


def test_only_predictions_or_only_gold() -> None:
    pred_only = entity_report([[]], [[(0, 5, "person")]], TYPES)
    assert (pred_only["precision"], pred_only["recall"], pred_only["f1"]) == (0.0, 0.0, 0.0)
    gold_only = entity_report([[(0, 5, "person")]], [[]], TYPES)
    assert gold_only["recall"] == 0.0 and gold_only["accuracy"] == 0.0


def test_micro_and_macro_by_hand() -> None:
    # person: 3 gold, 3 predicted, 2 right  -> P 2/3, R 2/3, F1 2/3
    # location: 1 gold, 2 predicted, 1 right -> P 1/2, R 1,   F1 2/3
    # micro: 3 right of 5 predicted and 4 gold -> P 0.6, R 0.75, F1 2/3
    gold = [
        [(0, 5, "person"), (6, 11, "person")],
        [(0, 4, "person"), (10, 14, "location")],
    ]
    pred = [
        [(0, 5, "person"), (6, 11, "person"), (20, 25, "location")],
        [(0, 3, "person"), (10, 14, "location")],
    ]
    report = entity_report(gold, pred, TYPES)
    assert report["precision"] == 0.6
    assert report["recall"] == 0.75
    assert report["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["per_class"]["person"]["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["per_class"]["location"]["precision"] == 0.5
    assert report["per_class"]["location"]["recall"] == 1.0
    assert report["macro_f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["accuracy"] == 0.0
    assert (report["entities"], report["predicted"]) == (4, 5)
    assert row_counts(gold, pred).tolist() == [[2, 1, 0], [1, 1, 1]]


def test_macro_differs_from_micro_and_skips_types_absent_from_both() -> None:
    # person: 9 of 9 right; location: 0 of 1 found, nothing predicted.
    gold = [[(i * 10, i * 10 + 5, "person")] for i in range(9)] + [[(0, 5, "location")]]
    pred = [[(i * 10, i * 10 + 5, "person")] for i in range(9)] + [[]]
    report = entity_report(gold, pred, [*TYPES, "group"])
    assert report["f1"] == pytest.approx(2 * 1.0 * 0.9 / 1.9, abs=1e-6)  # micro: 0.947
    assert report["macro_f1"] == 0.5  # (1 + 0) / 2: "group" occurs nowhere, not averaged
    assert list(report["per_class"]) == ["person", "location", "group"]
    assert report["per_class"]["group"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "predicted": 0,
    }


def test_a_type_outside_the_list_is_reported_not_dropped() -> None:
    report = entity_report([[]], [[(0, 5, "alien")]], TYPES)
    assert list(report["per_class"]) == ["person", "location", "alien"]
    assert report["per_class"]["alien"]["predicted"] == 1


def test_a_duplicated_prediction_counts_once() -> None:
    assert row_counts([[(0, 5, "person")]], [[(0, 5, "person"), (0, 5, "person")]]).tolist() == [
        [1, 0, 0]
    ]


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="gold has 1 rows but pred has 2"):
        entity_report([[]], [[], []], TYPES)


def test_length_slices_score_each_word_count_bucket() -> None:
    texts = ["Obama spoke", "hi @user !", "a b c d e f g"]  # 2, 3 and 7 words
    gold = [[(0, 5, "person")], [(3, 8, "person")], [(0, 1, "location")]]
    pred = [[(0, 5, "person")], [(4, 8, "person")], [(0, 1, "location")]]
    slices = length_slices(texts, gold, pred, [2, 5])
    assert list(slices) == ["<=2 words", "3-5 words", ">5 words"]
    assert slices["<=2 words"] == {
        "n": 1,
        "entities": 1,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
    }
    assert slices["3-5 words"]["f1"] == 0.0  # "@user" vs "user": a boundary miss
    assert slices[">5 words"]["n"] == 1
    # Summed row counts give the same micro scores as the whole report.
    counts = row_counts(gold, pred).sum(axis=0)
    assert counts.tolist() == [2, 1, 1]
    assert isinstance(row_counts(gold, pred), np.ndarray)


def test_length_slices_leave_out_empty_buckets() -> None:
    assert list(length_slices(["a b"], [[]], [[]], [5, 10])) == ["<=5 words"]
