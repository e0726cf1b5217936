"""The drift checks: each a value against a threshold, fired or not, and one line saying why.

- ``label_shift``: the distribution of predicted labels, by a chi-square test
  (Monte Carlo p-value when expected counts are small) and the population
  stability index (PSI); fires when both say so;
- ``label_spike``: one label's share jumps (for example negative news about a
  company surging): live share above the reference share by an absolute amount
  *and* a ratio, significant by a one-sided binomial test (Bonferroni over labels);
- ``confidence_drop``: the mean confidence falls, confirmed by a one-sided
  Kolmogorov-Smirnov test (the model meets texts it is unsure about);
- ``text_length``: the word-count distribution moves (PSI over buckets and a
  KS test): a new channel, a new kind of text;
- ``live_accuracy``: the share of feedback that confirms the prediction, against
  a floor (skipped below ``monitoring.min_feedback`` feedback rows).

Thresholds are ``monitoring.*`` in ``params.yaml`` (:class:`MonitoringConfig`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from slmops.tasks.core.config import MonitoringConfig
from slmops.tasks.monitoring.statistics import (
    LabelsOf,
    bucket_counts,
    chi_square_labels,
    count_labels,
    label_table,
    psi,
    single_label,
    word_counts,
)

CheckStatus = Literal["fired", "ok", "skipped"]


@dataclass(frozen=True)
class Check:
    """One monitoring check: its value against its threshold, and what that means."""

    name: str
    title: str
    status: CheckStatus
    value: float | None
    threshold: float
    explanation: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        """Whether this check raises the alert."""
        return self.status == "fired"


def pct(x: float) -> str:
    """A share as a percentage with one decimal: ``0.123`` → ``12.3%``."""
    return f"{100 * x:.1f}%"


def check_label_shift(
    reference: Mapping[str, int], live: Mapping[str, int], cfg: MonitoringConfig
) -> Check:
    """Fires when the predicted-label distribution moved: chi-square p < alpha and PSI >= max."""
    test = chi_square_labels(reference, live)
    value = psi(reference, live, cfg.psi_epsilon)
    k = len(set(reference) | set(live))
    n_ref, n_live = sum(reference.values()), sum(live.values())
    # PSI of two samples of one distribution is about (k - 1)(1/n + 1/m), not 0.
    noise = (k - 1) * (1 / max(n_live, 1) + 1 / max(n_ref, 1))
    significant = test["pvalue"] < cfg.alpha
    fired = significant and value >= cfg.label_psi_max
    if fired:
        why = (
            f"predicted labels shifted: PSI {value:.3f} >= {cfg.label_psi_max} and chi-square "
            f"p = {test['pvalue']:.2g} < {cfg.alpha}"
        )
    elif value >= cfg.label_psi_max:
        why = (
            f"PSI {value:.3f} is high but the chi-square test finds no significant shift "
            f"(p = {test['pvalue']:.2g}); sampling noise alone gives about {noise:.3f} here"
        )
    else:
        why = f"label shares are stable: PSI {value:.3f} < {cfg.label_psi_max}"
        if significant:
            why += f" (significant, p = {test['pvalue']:.2g}, but small)"
    return Check(
        "label_shift",
        "Label distribution shift",
        "fired" if fired else "ok",
        round(value, 6),
        cfg.label_psi_max,
        why,
        {
            "psi": value,
            "psi_sampling_noise": noise,
            "chi2": test["statistic"],
            "pvalue": test["pvalue"],
            "dof": test["dof"],
            "pvalue_method": test["method"],
            "labels_pooled": test["pooled"],
            "alpha": cfg.alpha,
        },
    )


def check_label_spike(
    reference: Mapping[str, int], live: Mapping[str, int], cfg: MonitoringConfig
) -> Check:
    """Fires when one label's live share jumped: by ``spike_share_gain`` (absolute) and
    ``spike_ratio`` times its reference share, significant by a binomial test."""
    rows = label_table(reference, live, cfg.psi_epsilon)
    n_live = int(sum(live.values()))
    n_labels = max(len(rows), 1)
    spikes, best = [], None
    for row in rows:
        if best is None or row["gain"] > best["gain"]:
            best = row
        if row["gain"] < cfg.spike_share_gain or row["ratio"] < cfg.spike_ratio:
            continue
        p0 = min(max(row["reference_share"], cfg.psi_epsilon), 1.0)
        pvalue = float(stats.binomtest(row["live_count"], n_live, p0, "greater").pvalue)
        row["pvalue"] = pvalue
        if pvalue < cfg.alpha / n_labels:  # Bonferroni: every label was looked at
            spikes.append(row)
    gain = best["gain"] if best else 0.0
    if spikes:
        listed = "; ".join(
            f"{s['label']}: {pct(s['live_share'])} of live predictions vs "
            f"{pct(s['reference_share'])} on the test set ({s['ratio']:.1f}x)"
            for s in spikes[:5]
        )
        why = f"{len(spikes)} label(s) spiked: {listed}"
    elif best is not None:
        why = (
            f"no label spiked; the largest gain is {best['label']} at "
            f"{pct(best['live_share'])} vs {pct(best['reference_share'])} "
            f"(needs +{pct(cfg.spike_share_gain)} and {cfg.spike_ratio:g}x, significant)"
        )
    else:
        why = "no labels"
    return Check(
        "label_spike",
        "Label share spike",
        "fired" if spikes else "ok",
        round(gain, 6),
        cfg.spike_share_gain,
        why,
        {
            "spikes": [
                {
                    key: s[key]
                    for key in ("label", "reference_share", "live_share", "ratio", "pvalue")
                }
                for s in spikes
            ],
            "ratio_min": cfg.spike_ratio,
            "alpha_per_label": cfg.alpha / n_labels,
        },
    )


def check_confidence(reference: np.ndarray, live: np.ndarray, cfg: MonitoringConfig) -> Check:
    """Fires when the mean confidence fell by ``confidence_drop_max`` or more and a
    one-sided KS test says live confidences are lower (p < alpha)."""
    ref_mean, live_mean = float(np.mean(reference)), float(np.mean(live))
    drop = ref_mean - live_mean
    # alternative="greater": the live CDF lies above the reference's, i.e. lower values.
    ks = stats.ks_2samp(live, reference, alternative="greater", method="asymp")
    fired = drop >= cfg.confidence_drop_max and ks.pvalue < cfg.alpha
    summary = (
        f"mean confidence {live_mean:.3f} live vs {ref_mean:.3f} on the test set "
        f"(median {float(np.median(live)):.3f} vs {float(np.median(reference)):.3f})"
    )
    if fired:
        why = f"confidence dropped by {drop:.3f} (>= {cfg.confidence_drop_max}): {summary}"
    else:
        why = f"no confidence drop of {cfg.confidence_drop_max} or more: {summary}"
    return Check(
        "confidence_drop",
        "Confidence drop",
        "fired" if fired else "ok",
        round(drop, 6),
        cfg.confidence_drop_max,
        why,
        {
            "reference_mean": ref_mean,
            "live_mean": live_mean,
            "reference_median": float(np.median(reference)),
            "live_median": float(np.median(live)),
            "ks_statistic": float(ks.statistic),
            "pvalue": float(ks.pvalue),
            "alpha": cfg.alpha,
        },
    )


def check_text_length(reference: np.ndarray, live: np.ndarray, cfg: MonitoringConfig) -> Check:
    """Fires when the word-count distribution moved: PSI over the buckets >= max and a
    two-sided KS test p < alpha."""
    ref_b = bucket_counts(reference, cfg.length_buckets)
    live_b = bucket_counts(live, cfg.length_buckets)
    value = psi(ref_b, live_b, cfg.psi_epsilon)
    # Asymptotic p-value: the exact one is slow and fails on large samples with ties.
    ks = stats.ks_2samp(live, reference, method="asymp")
    fired = value >= cfg.length_psi_max and ks.pvalue < cfg.alpha
    summary = (
        f"median {float(np.median(live)):g} words live vs {float(np.median(reference)):g} "
        f"on the test set"
    )
    if fired:
        why = f"text lengths drifted: PSI {value:.3f} >= {cfg.length_psi_max}; {summary}"
    else:
        why = f"text lengths are stable: PSI {value:.3f}; {summary}"
    return Check(
        "text_length",
        "Text length drift",
        "fired" if fired else "ok",
        round(value, 6),
        cfg.length_psi_max,
        why,
        {
            "psi": value,
            "reference_buckets": ref_b,
            "live_buckets": live_b,
            "reference_mean_words": float(np.mean(reference)),
            "live_mean_words": float(np.mean(live)),
            "ks_statistic": float(ks.statistic),
            "pvalue": float(ks.pvalue),
            "alpha": cfg.alpha,
        },
    )


def check_live_accuracy(feedback: pd.DataFrame, cfg: MonitoringConfig) -> Check:
    """Fires when the share of feedback rows confirming the prediction is below the floor;
    skipped below ``min_feedback`` rows."""
    n = len(feedback)
    if n < cfg.min_feedback:
        return Check(
            "live_accuracy",
            "Live accuracy on feedback",
            "skipped",
            None,
            cfg.live_accuracy_floor,
            f"only {n} feedback row(s) on the window's predictions; "
            f"{cfg.min_feedback} needed (monitoring.min_feedback)",
            {"feedback_rows": n},
        )
    confirmed = int((feedback["kind"] == "confirmation").sum())
    accuracy = confirmed / n
    fired = accuracy < cfg.live_accuracy_floor
    verdict = "below" if fired else "at or above"
    return Check(
        "live_accuracy",
        "Live accuracy on feedback",
        "fired" if fired else "ok",
        round(accuracy, 6),
        cfg.live_accuracy_floor,
        f"{confirmed} of {n} feedback rows confirm the prediction ({pct(accuracy)}), "
        f"{verdict} the floor {pct(cfg.live_accuracy_floor)}",
        {"feedback_rows": n, "confirmed": confirmed},
    )


def compare(
    live: pd.DataFrame,
    reference: pd.DataFrame,
    feedback: pd.DataFrame,
    cfg: MonitoringConfig,
    labels_of: LabelsOf = single_label,
) -> list[Check]:
    """Every check of live predictions against the reference.

    ``live`` and ``reference`` have ``text``, ``cell`` and ``confidence``;
    ``feedback`` has ``kind`` (``confirmation`` / ``correction``).
    """
    ref_counts = count_labels(reference["cell"], labels_of)
    live_counts = count_labels(live["cell"], labels_of)
    return [
        check_label_shift(ref_counts, live_counts, cfg),
        check_label_spike(ref_counts, live_counts, cfg),
        check_confidence(
            reference["confidence"].to_numpy(float), live["confidence"].to_numpy(float), cfg
        ),
        check_text_length(word_counts(reference["text"]), word_counts(live["text"]), cfg),
        check_live_accuracy(feedback, cfg),
    ]
