"""The statistics behind the monitoring checks: label counts, PSI, chi-square, histograms.

Task types: a prediction's label cell is the label itself for sequence
classification, a JSON list of entity spans for token classification. The
functions take ``labels_of`` (cell → the labels it counts as) from the caller.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

LabelsOf = Callable[[str], list[str]]

UNREADABLE = "(unreadable)"  # the label of a cell that labels_of could not read
MIN_EXPECTED = 5.0  # textbook validity of the chi-square approximation
MONTE_CARLO_RESAMPLES = 999  # p-value resolution 0.001: enough for alpha >= 0.005
CONFIDENCE_BINS = 20


def single_label(cell: str) -> list[str]:
    """Sequence classification: the label cell is the one label (the default ``labels_of``)."""
    return [cell]


def count_labels(cells: Iterable[str], labels_of: LabelsOf = single_label) -> Counter[str]:
    """How often each label occurs over the cells (a cell may count several, or none).

    A cell ``labels_of`` cannot read counts as ``(unreadable)`` instead of
    stopping the run: one malformed stored row must not blind the monitor.
    """
    counts: Counter[str] = Counter()
    for cell in cells:
        try:
            counts.update(str(label) for label in labels_of(cell))
        except Exception:
            counts[UNREADABLE] += 1
    return counts


def shares(counts: Mapping[str, float]) -> dict[str, float]:
    """Counts → shares summing to 1 (all zero when there is nothing)."""
    total = float(sum(counts.values()))
    return {k: (v / total if total else 0.0) for k, v in counts.items()}


def psi(reference: Mapping[str, float], live: Mapping[str, float], epsilon: float = 1e-4) -> float:
    """Population stability index of two distributions over the same bins (shares or counts).

    ``sum((live - ref) * ln(live / ref))`` over the union of bins, an empty bin
    counting as ``epsilon`` (its log would be infinite). 0 for identical
    distributions; rule of thumb: below 0.1 stable, 0.1-0.2 moderate, above 0.2 large.
    """
    ref, cur = shares(reference), shares(live)
    total = 0.0
    for key in set(ref) | set(cur):
        p = max(ref.get(key, 0.0), epsilon)
        q = max(cur.get(key, 0.0), epsilon)
        total += (q - p) * math.log(q / p)
    return float(total)


def chi_square_labels(
    reference: Mapping[str, int], live: Mapping[str, int], *, seed: int = 0
) -> dict[str, Any]:
    """Chi-square test of homogeneity: were both label counts drawn from one distribution?

    Labels with an expected count below 5 in either sample are pooled into one
    bucket; if some expected count is still below 5, the p-value is a Monte
    Carlo one (fixed seed: the same data give the same report), as the
    asymptotic one would be too small on sparse tables.
    """
    keys = sorted(set(reference) | set(live))
    table = np.array(
        [[reference.get(k, 0) for k in keys], [live.get(k, 0) for k in keys]], dtype=float
    )
    n_ref, n_live = table.sum(axis=1)
    if n_ref == 0 or n_live == 0:
        return {"statistic": 0.0, "pvalue": 1.0, "dof": 0, "method": "none", "pooled": 0}
    col = table.sum(axis=0)
    expected_min = np.minimum(col * n_ref, col * n_live) / (n_ref + n_live)
    small = expected_min < MIN_EXPECTED
    pooled = bool(small.any() and (~small).any())
    if pooled:  # (when every label is rare, the table is tested as it is, by Monte Carlo)
        table = np.column_stack([table[:, ~small], table[:, small].sum(axis=1)])
    if table.shape[1] < 2:
        return {"statistic": 0.0, "pvalue": 1.0, "dof": 0, "method": "none", "pooled": 0}
    col = table.sum(axis=0)
    still_small = (np.outer(table.sum(axis=1), col) / table.sum() < MIN_EXPECTED).any()
    method = None
    if still_small:
        method = stats.MonteCarloMethod(
            n_resamples=MONTE_CARLO_RESAMPLES, rng=np.random.default_rng(seed)
        )
    result = stats.chi2_contingency(table, correction=False, method=method)
    return {
        "statistic": float(result.statistic),
        "pvalue": float(result.pvalue),
        "dof": (table.shape[0] - 1) * (table.shape[1] - 1),  # NaN from scipy with Monte Carlo
        "method": "monte-carlo" if still_small else "asymptotic",
        "pooled": int(small.sum()) if pooled else 0,
    }


def label_table(
    reference: Mapping[str, int], live: Mapping[str, int], epsilon: float = 1e-4
) -> list[dict[str, Any]]:
    """Per label: counts and shares live vs reference, largest live gain first."""
    ref_s, live_s = shares(reference), shares(live)
    rows = []
    for key in set(reference) | set(live):
        r, q = ref_s.get(key, 0.0), live_s.get(key, 0.0)
        rows.append(
            {
                "label": key,
                "reference_count": int(reference.get(key, 0)),
                "reference_share": r,
                "live_count": int(live.get(key, 0)),
                "live_share": q,
                "gain": q - r,
                "ratio": q / max(r, epsilon),
            }
        )
    rows.sort(key=lambda row: (-row["gain"], row["label"]))
    return rows


def word_counts(texts: Iterable[str]) -> np.ndarray:
    """Words per text (whitespace-separated)."""
    return np.array([len(str(t).split()) for t in texts], dtype=int)


def bucket_names(bounds: Sequence[int]) -> list[str]:
    """Names of the word-count buckets: ``<=5``, ``6-10``, ..., ``>50``."""
    names, low = [], 1
    for b in bounds:
        names.append(f"<={b}" if low == 1 else (f"{low}-{b}" if b > low else str(b)))
        low = b + 1
    names.append(f">{bounds[-1]}")
    return names


def bucket_counts(values: np.ndarray, bounds: Sequence[int]) -> dict[str, int]:
    """How many values fall in each word-count bucket (``bounds`` are inclusive upper bounds)."""
    idx = np.searchsorted(np.asarray(bounds), values, side="left")
    counts = np.bincount(idx, minlength=len(bounds) + 1)
    return dict(zip(bucket_names(bounds), (int(c) for c in counts), strict=True))


def histogram(values: np.ndarray, bins: int = CONFIDENCE_BINS) -> list[float]:
    """Shares of ``values`` (clipped to [0, 1]) in ``bins`` equal bins over [0, 1]."""
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]
