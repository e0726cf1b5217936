"""The promotion gate: a challenger replaces the champion only if every rule holds.

Rules, named by the task's metrics (thresholds from ``params.gate``:
:class:`~slmops.tasks.core.config.GateConfig` for sequence classification,
:class:`~slmops.tasks.core.config.TokenGateConfig` for token classification):

- absolute floors, always checked: ``min_accuracy`` and ``min_macro_f1``
  (sequence); ``min_entity_f1`` and ``min_exact_match`` (token: entity F1, and the
  share of texts whose entities are exactly right);
- with a champion, also
  - the gain in the compared score, challenger − champion ≥ the gain:
    ``min_macro_f1_gain`` (macro-F1) or ``min_entity_f1_gain`` (entity F1);
  - ``max_class_recall_drop`` / ``max_type_recall_drop``: no class's (entity
    type's) recall falls by more than the drop (those without test examples are
    skipped);
  - ``significance``: a paired test on the same test rows says the challenger is
    better, with p < ``alpha`` (McNemar on per-row correctness, for token
    classification on the texts each model gets exactly right; or, for sequence
    classification, a paired bootstrap of macro-F1); ``significance: none`` skips it.

Without a champion the challenger is promoted iff the floors hold. The decision
lists every rule it checked and why each failure failed, in words that name the
task's metrics, and :attr:`GateDecision.metrics` the values compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from slmops.tasks.core.config import GateConfig, GateRules, SignificanceTest, TokenGateConfig

# McNemar: exact binomial test below this many discordant pairs, chi-square above.
EXACT_BELOW = 25
# Rounding that removes float noise from differences of 6-decimal metrics.
_NOISE = 9


def mcnemar_test(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's test on paired per-row correctness of two models (same test rows).

    Only discordant rows count: ``b`` rows where only the challenger is right and
    ``c`` rows where only the champion is. With ``b + c < 25`` it is the exact
    two-sided binomial test of ``b`` out of ``b + c`` at p = 0.5 (statistic: ``b``);
    otherwise the chi-square with continuity correction, ``(|b − c| − 1)² / (b + c)``
    on 1 degree of freedom. No discordant rows gives p = 1. Returns::

        {"method": "exact binomial" | "chi-square (continuity-corrected)",
         "n", "only_challenger_correct", "only_champion_correct", "discordant",
         "statistic", "p_value"}
    """
    a = np.asarray(champion_correct)
    b = np.asarray(challenger_correct)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"champion_correct {a.shape} and challenger_correct {b.shape} must be "
            "1-D arrays over the same test rows"
        )
    a, b = a.astype(bool), b.astype(bool)
    only_b = int(np.sum(b & ~a))
    only_a = int(np.sum(a & ~b))
    discordant = only_a + only_b
    if discordant < EXACT_BELOW:
        method = "exact binomial"
        statistic = float(only_b)
        p_value = (
            float(stats.binomtest(only_b, discordant, 0.5, alternative="two-sided").pvalue)
            if discordant
            else 1.0
        )
    else:
        method = "chi-square (continuity-corrected)"
        statistic = max(abs(only_b - only_a) - 1, 0) ** 2 / discordant
        p_value = float(stats.chi2.sf(statistic, df=1))
    return {
        "method": method,
        "n": len(a),
        "only_challenger_correct": only_b,
        "only_champion_correct": only_a,
        "discordant": discordant,
        "statistic": round(float(statistic), 6),
        "p_value": min(1.0, p_value),
    }


def _encode(values: np.ndarray, index: dict[str, int]) -> np.ndarray:
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))


def _macro_f1_weighted(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 per row of ``weights`` (times each test row is drawn).

    F1 of a class is 2·TP / (support + predicted), the harmonic mean of
    precision and recall (0 when either is 0); classes neither present nor
    predicted in a resample are left out of the mean, as scikit-learn does.
    """
    eye = np.eye(k)
    onehot_true = eye[y]
    support = weights @ onehot_true
    predicted = weights @ eye[pred]
    tp = weights @ (onehot_true * (y == pred)[:, None])
    denom = support + predicted
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    counted = (denom > 0).sum(axis=1)
    return f1.sum(axis=1) / np.maximum(counted, 1)


def paired_bootstrap_test(
    y_true: Sequence[str],
    champion_pred: Sequence[str],
    challenger_pred: Sequence[str],
    labels: Sequence[str],
    *,
    samples: int,
    seed: int = 0,
    chunk: int = 250,
) -> dict[str, Any]:
    """Paired bootstrap of the challenger's macro-F1 gain over the champion.

    Resamples test rows with replacement (the same rows for both models), and
    computes both macro-F1s on each resample from class counts, vectorised over
    chunks of resamples, so thousands of resamples stay cheap.
    ``p_value`` is the one-sided share of resamples where the gain is ≤ 0 (is
    the challenger better?). Labels in the predictions but not in ``labels`` are
    added as extra classes. Returns::

        {"method": "paired bootstrap (macro-F1)", "n", "samples", "seed",
         "champion_macro_f1", "challenger_macro_f1", "gain",
         "ci_low", "ci_high", "p_value"}

    with ``gain`` on the full test set and ``ci_low``/``ci_high`` the 2.5th and
    97.5th percentiles of the resampled gains.
    """
    y = np.asarray([str(v) for v in y_true], dtype=object)
    pa = np.asarray([str(v) for v in champion_pred], dtype=object)
    pb = np.asarray([str(v) for v in challenger_pred], dtype=object)
    if not (len(y) == len(pa) == len(pb)):
        raise ValueError(
            f"y_true ({len(y)}), champion_pred ({len(pa)}) and challenger_pred ({len(pb)}) "
            "must cover the same test rows"
        )
    if len(y) == 0:
        raise ValueError("no test rows to resample")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    vocab = [str(label) for label in dict.fromkeys(labels)]
    known = set(vocab)
    vocab += sorted({*y, *pa, *pb} - known)
    index = {label: i for i, label in enumerate(vocab)}
    k, n = len(vocab), len(y)
    yi, ai, bi = _encode(y, index), _encode(pa, index), _encode(pb, index)

    full = np.ones((1, n))
    f1_a = float(_macro_f1_weighted(full, yi, ai, k)[0])
    f1_b = float(_macro_f1_weighted(full, yi, bi, k)[0])
    rng = np.random.default_rng(seed)
    gains = np.empty(samples)
    offsets = None
    for start in range(0, samples, chunk):
        m = min(chunk, samples - start)
        draws = rng.integers(0, n, size=(m, n))
        if offsets is None or len(offsets) != m:
            offsets = (np.arange(m) * n)[:, None]
        weights = np.bincount((draws + offsets).ravel(), minlength=m * n).reshape(m, n)
        weights = weights.astype(float)
        gains[start : start + m] = _macro_f1_weighted(weights, yi, bi, k) - _macro_f1_weighted(
            weights, yi, ai, k
        )
    low, high = np.percentile(gains, [2.5, 97.5])
    return {
        "method": "paired bootstrap (macro-F1)",
        "n": n,
        "samples": samples,
        "seed": seed,
        "champion_macro_f1": round(f1_a, 6),
        "challenger_macro_f1": round(f1_b, 6),
        "gain": round(f1_b - f1_a, 6),
        "ci_low": round(float(low), 6),
        "ci_high": round(float(high), 6),
        "p_value": float(np.mean(gains <= 0)),
    }


@dataclass
class GateDecision:
    """Outcome of the gate.

    ``reasons`` has one line per failed rule (empty when promoted); ``checks``
    has every rule checked, as ``{"rule", "passed", "value", "threshold",
    "detail"}``; ``summary`` is one line starting ``promote:`` or ``refuse:``;
    ``significance`` is the full paired-test result when one ran; ``metrics``
    the values compared, under the task's metric names (``{"entity_f1":
    {"challenger": 0.45, "champion": 0.44}, ...}``; champion None without one).
    """

    promote: bool
    reasons: list[str]
    checks: list[dict[str, Any]]
    summary: str
    significance: dict[str, Any] | None = field(default=None)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)


@dataclass(frozen=True)
class Metric:
    """A metric the gate compares: its name in decisions, its key in the evaluation
    report, and how messages spell it."""

    name: str  # key in GateDecision.metrics
    report_key: str  # key in the evaluation's report.json
    words: str  # in messages


@dataclass(frozen=True)
class Terms:
    """What the gate compares for one task and how it names it: the rule (a key of
    the task's gate config) of each floor, the score whose gain is required, and the
    words for a class and for the rows McNemar pairs."""

    floors: tuple[tuple[str, Metric], ...]  # (rule, metric), checked in this order
    score: Metric
    gain_rule: str
    recall_rule: str
    unit: str
    units: str
    rows: str
    right: str


_MACRO_F1 = Metric("macro_f1", "macro_f1", "macro-F1")
_ENTITY_F1 = Metric("entity_f1", "f1", "entity F1")  # micro: every entity counts once

SEQUENCE_TERMS = Terms(
    floors=(
        ("min_accuracy", Metric("accuracy", "accuracy", "accuracy")),
        ("min_macro_f1", _MACRO_F1),
    ),
    score=_MACRO_F1,
    gain_rule="min_macro_f1_gain",
    recall_rule="max_class_recall_drop",
    unit="class",
    units="classes",
    rows="rows",
    right="right",
)
# The token evaluation's "accuracy" is the share of texts whose entities are exactly right.
TOKEN_TERMS = Terms(
    floors=(
        ("min_entity_f1", _ENTITY_F1),
        ("min_exact_match", Metric("exact_match", "accuracy", "exact match")),
    ),
    score=_ENTITY_F1,
    gain_rule="min_entity_f1_gain",
    recall_rule="max_type_recall_drop",
    unit="entity type",
    units="entity types",
    rows="texts",
    right="exactly right",
)


def terms(rules: GateRules) -> Terms:
    """The metrics and words of the task whose gate config ``rules`` is."""
    return TOKEN_TERMS if isinstance(rules, TokenGateConfig) else SEQUENCE_TERMS


def _metric(report: dict[str, Any], key: str, side: str) -> float:
    try:
        return float(report[key])
    except KeyError:
        raise ValueError(f"{side} report has no {key!r}") from None


def _check(
    rule: str, passed: bool, value: float | None, threshold: float | None, detail: str
) -> dict[str, Any]:
    return {
        "rule": rule,
        "passed": bool(passed),
        "value": None if value is None else round(float(value), 6),
        "threshold": None if threshold is None else float(threshold),
        "detail": detail,
    }


def _floors(
    report: dict[str, Any], rules: GateRules, words: Terms
) -> list[tuple[dict[str, Any], str]]:
    out = []
    for rule, metric in words.floors:
        value = _metric(report, metric.report_key, "challenger")
        floor = getattr(rules, rule)
        passed = value >= floor
        detail = f"{metric.words} {value:.4f} {'≥' if passed else 'below'} floor {floor:.4f}"
        out.append((_check(rule, passed, value, floor, detail), detail))
    return out


def _compared(
    challenger: dict[str, Any], champion: dict[str, Any] | None, words: Terms
) -> dict[str, dict[str, float | None]]:
    def value(report: dict[str, Any] | None, key: str) -> float | None:
        return None if report is None or report.get(key) is None else float(report[key])

    return {
        metric.name: {
            "challenger": value(challenger, metric.report_key),
            "champion": value(champion, metric.report_key),
        }
        for _, metric in words.floors
    }


def _recall_drops(
    challenger: dict[str, Any], champion: dict[str, Any]
) -> list[tuple[float, str, float, float]]:
    """(drop, class, champion recall, challenger recall) per class, largest drop first."""
    new = challenger.get("per_class")
    old = champion.get("per_class")
    if not isinstance(new, dict) or not isinstance(old, dict):
        raise ValueError("both reports need 'per_class' for the recall rule")
    drops = []
    for label, now in new.items():
        before = old.get(label)
        if before is None or not now.get("support") or not before.get("support"):
            continue
        r_old, r_new = float(before["recall"]), float(now["recall"])
        drops.append((round(r_old - r_new, _NOISE), label, r_old, r_new))
    return sorted(drops, key=lambda d: (-d[0], d[1]))


def _recall_check(
    challenger: dict[str, Any], champion: dict[str, Any], allowed: float, words: Terms
) -> tuple[dict[str, Any], str | None]:
    """The recall rule's check, and its reason when it failed."""
    drops = _recall_drops(challenger, champion)
    failed = [d for d in drops if d[0] > allowed]
    worst = drops[0] if drops else None
    if failed:
        parts = [f"{c} fell {d:.3f} ({old:.3f} → {new:.3f})" for d, c, old, new in failed[:5]]
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        if len(failed) == 1:
            detail = f"recall of {words.unit} {parts[0]}, more than {allowed:.3f} allowed"
        else:
            detail = (
                f"recall fell more than {allowed:.3f} in {len(failed)} {words.units}: "
                + ", ".join(parts)
                + more
            )
    elif worst is not None and worst[0] > 0:
        detail = (
            f"largest recall drop {worst[0]:.3f} ({words.unit} {worst[1]}: {worst[2]:.3f} → "
            f"{worst[3]:.3f}) within {allowed:.3f}"
        )
    else:
        detail = f"no {words.unit} recall fell ({len(drops)} {words.units} compared)"
    value = max(worst[0], 0.0) if worst else 0.0
    check = _check(words.recall_rule, not failed, value, allowed, detail)
    return check, detail if failed else None


def _significance(
    rules: GateRules,
    words: Terms,
    challenger_correct: np.ndarray | None,
    champion_correct: np.ndarray | None,
    y_true: Sequence[str] | None,
    challenger_pred: Sequence[str] | None,
    champion_pred: Sequence[str] | None,
    labels: Sequence[str] | None,
) -> tuple[dict[str, Any], bool, str]:
    """Run the configured test; (result, challenger significantly better, detail)."""
    have_preds = y_true is not None and challenger_pred is not None and champion_pred is not None
    alpha = rules.alpha
    if rules.significance == SignificanceTest.mcnemar:
        if challenger_correct is None or champion_correct is None:
            if not have_preds:
                raise ValueError(
                    "significance 'mcnemar' needs challenger_correct and champion_correct, "
                    "or y_true with challenger_pred and champion_pred"
                )
            y = np.asarray(y_true, dtype=object)
            challenger_correct = np.asarray(challenger_pred, dtype=object) == y
            champion_correct = np.asarray(champion_pred, dtype=object) == y
        res = mcnemar_test(champion_correct, challenger_correct)
        b, c, p = res["only_challenger_correct"], res["only_champion_correct"], res["p_value"]
        counts = f"challenger alone {words.right} on {b} {words.rows}, champion alone on {c}"
        if p >= alpha:
            return (
                res,
                False,
                (
                    f"McNemar p={p:.3g} ≥ alpha {alpha:g}: the difference is not significant "
                    f"({counts})"
                ),
            )
        if b <= c:
            return (
                res,
                False,
                (f"McNemar p={p:.3g} < alpha {alpha:g} but in the champion's favour ({counts})"),
            )
        return res, True, f"McNemar ({res['method']}) p={p:.3g} < alpha {alpha:g} ({counts})"

    if not have_preds:
        raise ValueError("significance 'bootstrap' needs y_true, challenger_pred and champion_pred")
    if not isinstance(rules, GateConfig):  # TokenGateConfig refuses it when loaded
        raise ValueError("significance 'bootstrap' is for sequence classification only")
    res = paired_bootstrap_test(
        y_true, champion_pred, challenger_pred, labels or [], samples=rules.bootstrap_samples
    )
    p = res["p_value"]
    gain = (
        f"macro-F1 gain {res['gain']:+.4f} "
        f"(95% CI {res['ci_low']:+.4f} to {res['ci_high']:+.4f}, {res['samples']} resamples)"
    )
    if p >= alpha:
        return (
            res,
            False,
            (f"paired bootstrap p={p:.3g} ≥ alpha {alpha:g}: the {gain} is not significant"),
        )
    return res, True, f"paired bootstrap p={p:.3g} < alpha {alpha:g}: {gain}"


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    rules: GateRules,
    *,
    challenger_correct: np.ndarray | None = None,
    champion_correct: np.ndarray | None = None,
    y_true: Sequence[str] | None = None,
    challenger_pred: Sequence[str] | None = None,
    champion_pred: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> GateDecision:
    """Decide whether ``challenger`` may replace ``champion``.

    ``challenger``/``champion`` are the evaluation reports (``report.json``) of the
    same frozen test rows (extra keys are ignored); ``rules`` is the task's gate
    config, which also picks the metrics compared and their names (:func:`terms`).
    The paired test needs per-row data: McNemar takes ``challenger_correct`` and
    ``champion_correct`` (boolean, row-aligned) or derives them from ``y_true``
    and both predictions; the bootstrap takes ``y_true`` and both predictions
    (``labels`` defaults to the challenger's ``per_class`` keys). Missing per-row
    data for the configured test raises ``ValueError``; it is not read as a
    refusal. Every rule is checked and every failure reported.
    """
    words = terms(rules)
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []
    for check, detail in _floors(challenger, rules, words):
        checks.append(check)
        if not check["passed"]:
            reasons.append(detail)
    compared = _compared(challenger, champion, words)

    if champion is None:
        ok = not reasons
        lead = "first model: no champion to compare"
        summary = (
            f"promote: {lead}; " + "; ".join(c["detail"] for c in checks)
            if ok
            else f"refuse: {lead}, and it fails the floors: " + "; ".join(reasons)
        )
        return GateDecision(ok, reasons, checks, summary, metrics=compared)

    score = words.score
    new = _metric(challenger, score.report_key, "challenger")
    old = _metric(champion, score.report_key, "champion")
    gain = round(new - old, _NOISE)
    need = getattr(rules, words.gain_rule)
    passed = gain >= need
    detail = (
        f"{score.words} gain {gain:+.4f} ({old:.4f} → {new:.4f}) "
        f"{'meets' if passed else 'below'} the required {need:+.4f}"
    )
    checks.append(_check(words.gain_rule, passed, gain, need, detail))
    if not passed:
        reasons.append(
            f"{score.words} gain {gain:+.4f} below the required {need:+.4f} ({old:.4f} → {new:.4f})"
        )

    allowed = getattr(rules, words.recall_rule)
    check, reason = _recall_check(challenger, champion, allowed, words)
    checks.append(check)
    if reason:
        reasons.append(reason)

    significance = None
    if rules.significance == SignificanceTest.none:
        checks.append(_check("significance", True, None, None, "skipped: significance is 'none'"))
    else:
        if labels is None and rules.significance == SignificanceTest.bootstrap:
            labels = list(challenger.get("per_class", {}))
        significance, passed, detail = _significance(
            rules,
            words,
            challenger_correct,
            champion_correct,
            y_true,
            challenger_pred,
            champion_pred,
            labels,
        )
        checks.append(_check("significance", passed, significance["p_value"], rules.alpha, detail))
        if not passed:
            reasons.append(detail)

    ok = not reasons
    if ok:
        summary = (
            f"promote: {score.words} {new:.4f} vs champion {old:.4f} ({gain:+.4f}), "
            f"all {len(checks)} checks passed"
        )
    else:
        summary = "refuse: " + "; ".join(reasons)
    return GateDecision(ok, reasons, checks, summary, significance, compared)
