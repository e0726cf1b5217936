"""tasks/monitoring/statistics.py: PSI, chi-square, word-count buckets and label counts on
known values."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.tasks.monitoring.statistics import (
    bucket_counts,
    chi_square_labels,
    count_labels,
    histogram,
    psi,
)
from tests.tasks.monitoring.streams import ner_labels_of


def test_statistics_on_known_values():
    assert psi({"a": 50, "b": 50}, {"a": 50, "b": 50}) == 0.0
    # (0.9 - 0.5) ln(0.9/0.5) + (0.1 - 0.5) ln(0.1/0.5)
    assert psi({"a": 1, "b": 1}, {"a": 9, "b": 1}) == pytest.approx(0.8789, abs=1e-4)
    assert psi({"a": 10}, {"b": 10}, epsilon=1e-4) > 10  # disjoint: large, finite
    assert bucket_counts(np.array([1, 5, 6, 10, 11, 99]), [5, 10]) == {
        "<=5": 2,
        "6-10": 2,
        ">10": 2,
    }
    same = chi_square_labels({"a": 500, "b": 500}, {"a": 100, "b": 100})
    assert same["pvalue"] == pytest.approx(1.0) and same["method"] == "asymptotic"
    sparse = chi_square_labels({k: 40 for k in "abcdefghij"}, {k: 3 for k in "abcdefghij"})
    assert sparse["method"] == "monte-carlo" and sparse["pvalue"] > 0.5


def test_ner_label_cells_count_entity_types_through_labels_of():
    counts = count_labels(['[[0,4,"PER"],[5,9,"PER"]]', "[]", "not json"], ner_labels_of)
    assert counts == {"PER": 2, "(no entity)": 1, "(unreadable)": 1}


def test_confidence_histogram_shares_sum_to_one_and_clip():
    shares = histogram(np.array([0.0, 0.04, 0.5, 1.0, 1.5]), bins=20)
    assert len(shares) == 20 and sum(shares) == pytest.approx(1.0)
    assert shares[0] == pytest.approx(0.4) and shares[-1] == pytest.approx(0.4)
    assert histogram(np.array([]), bins=4) == [0.0] * 4
