"""Production monitoring: is the champion still seeing the world its test set showed it?

The **live window** is the champion's recent predictions from the feedback store
(the last ``monitoring.window_hours``, at most ``monitoring.max_predictions``,
most recent first) with the feedback given on them. The **reference** is the
champion's own predictions on the frozen test split, as evaluation wrote them
(``eval/predictions.csv`` in the version's MLflow run): what the model said
when it was judged good enough to serve. Comparing predictions with
predictions needs no labels, so drift shows before anyone corrects an answer.

Checks (each: a value, a threshold, fired or not, and one line saying why):

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

Too few live predictions (``monitoring.min_predictions``) run no check and
alert nobody: the report says so. The report is written as HTML (one
self-contained file: inline CSS, charts as inline SVG, no external URL, no
user text) and JSON under ``monitoring.report_dir``; when a check fires, the
``notify`` webhook gets ``drift_detected`` and a Prefect event
``slmops.monitoring.alert`` is emitted for automations.

Task types: a prediction's label cell is the label itself for sequence
classification, a JSON list of entity spans for token classification. The
functions take ``labels_of`` (cell → the labels it counts as) from the caller.
"""

from __future__ import annotations

import html
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from slmops.tasks.core.config import MonitoringConfig, NotifyEvent, Params
from slmops.tasks.core.redact import redact_text
from slmops.tasks.data.dataset import write_json_atomic

log = logging.getLogger(__name__)

LabelsOf = Callable[[str], list[str]]
# emit(event name, resource, payload) -> event id or None (tests pass a recorder).
Emitter = Callable[[str, dict[str, str], dict[str, Any]], str | None]
CheckStatus = Literal["fired", "ok", "skipped"]
ReportStatus = Literal["alert", "ok", "insufficient"]

EVENT_NAME = "slmops.monitoring.alert"
REFERENCE_ARTIFACT = "eval/predictions.csv"  # where register_challenger logs evaluation
UNREADABLE = "(unreadable)"  # the label of a cell that labels_of could not read
RARE = "(rare labels)"  # chi-square bucket of labels with small expected counts
MIN_EXPECTED = 5.0  # textbook validity of the chi-square approximation
MONTE_CARLO_RESAMPLES = 999  # p-value resolution 0.001: enough for alpha >= 0.005
CONFIDENCE_BINS = 20
LATEST_HTML = "latest.html"
LATEST_JSON = "latest.json"


class MonitoringError(ValueError):
    """Monitoring cannot run: no champion, no reference predictions, a malformed file."""


def single_label(cell: str) -> list[str]:
    """Sequence classification: the label cell is the one label (the default ``labels_of``)."""
    return [cell]


# -- the data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The champion's predictions on the test split: ``text``, ``cell``, ``confidence``."""

    frame: pd.DataFrame
    source: str  # where it was read, for the report
    note: str | None = None  # a warning: a fallback was used


@dataclass(frozen=True)
class LiveWindow:
    """The champion's recent predictions and the feedback on them."""

    predictions: pd.DataFrame  # id, text, cell, confidence, created_at; most recent first
    feedback: pd.DataFrame  # prediction_id, label, kind
    start: datetime | None  # the window's start (None: no time limit)
    end: datetime


def read_reference_csv(path: Path) -> pd.DataFrame:
    """A predictions CSV as evaluation writes it → ``text``, ``cell`` (the ``pred`` column),
    ``confidence``. Raises :class:`MonitoringError` naming the file and what is wrong."""
    try:
        # keep_default_na off: a label "None" or an empty span list stays a string.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise MonitoringError(f"{path}: reference predictions not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MonitoringError(f"{path}: cannot read the reference predictions ({exc})") from None
    missing = [c for c in ("text", "pred", "confidence") if c not in raw.columns]
    if missing:
        raise MonitoringError(
            f"{path}: reference predictions lack the column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, raw.columns)) or 'none'}); expected the "
            "predictions.csv that evaluation writes (text, label, pred, confidence, correct)"
        )
    if raw.empty:
        raise MonitoringError(f"{path}: the reference predictions are empty")
    confidence = pd.to_numeric(raw["confidence"], errors="coerce")
    bad = confidence.isna() | (confidence < 0) | (confidence > 1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header is line 1
        raise MonitoringError(
            f"{path}: line {row}: confidence {raw['confidence'].iloc[row - 2]!r} is not a "
            "number between 0 and 1"
        )
    return pd.DataFrame(
        {"text": raw["text"], "cell": raw["pred"], "confidence": confidence.astype(float)}
    )


def champion_version(params: Params) -> str | None:
    """The version the ``champion`` alias of ``registry.model_name`` points to, or None."""
    from slmops.tasks.registry.promotion import CHAMPION, alias_version, client

    return alias_version(client(params), params.registry.model_name, CHAMPION)


def load_reference(params: Params, version: str) -> Reference:
    """The reference predictions of ``version``.

    ``monitoring.reference_file`` when set; else the version's
    ``eval/predictions.csv`` from its MLflow run; else (with a note in the
    report) the local ``<evaluate.output_dir>/predictions.csv``, which is the
    last evaluation made here and may be another version's. Neither: a
    :class:`MonitoringError` naming both places.
    """
    cfg = params.monitoring
    if cfg.reference_file:
        path = params.path(cfg.reference_file)
        return Reference(read_reference_csv(path), f"{path} (monitoring.reference_file)")
    name = params.registry.model_name
    why = _mlflow_reference(params, name, version)
    if isinstance(why, Reference):
        return why
    local = params.path(params.evaluate.output_dir) / "predictions.csv"
    if not local.is_file():
        raise MonitoringError(
            f"no reference predictions for {name} version {version}: {why}; and no local "
            f"{local}. Set monitoring.reference_file, or evaluate the version "
            "(`slmops evaluate`) to write it"
        )
    note = (
        f"The champion's own test-set predictions were not found ({why}); using the local "
        f"{local}, the last evaluation made on this machine, which may be another version's."
    )
    log.warning("%s", note)
    return Reference(read_reference_csv(local), str(local), note)


def _mlflow_reference(params: Params, name: str, version: str) -> Reference | str:
    """The version's reference from MLflow, or why it could not be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from slmops.tasks.registry.promotion import client

    try:
        mv = client(params).get_model_version(name, version)
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp
            )
            frame = read_reference_csv(Path(path))
    except MonitoringError as exc:
        return f"its run's {REFERENCE_ARTIFACT} is unusable: {exc}"
    except (MlflowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # The message may quote a tracking URI: never a password in the report.
        return f"its run has no {REFERENCE_ARTIFACT} ({redact_text(first[:200])})"
    return Reference(frame, f"models:/{name}/{version} (run {mv.run_id}, {REFERENCE_ARTIFACT})")


def read_live(
    store: Any,
    model_name: str,
    model_version: str,
    *,
    now: datetime,
    window_hours: float | None,
    limit: int,
) -> LiveWindow:
    """The most recent ``limit`` predictions of the version (within ``window_hours``
    before ``now``) and the feedback given on them; ``store`` is a FeedbackStore."""
    import sqlalchemy as sa

    from slmops.tasks.feedback.store import feedback_table, predictions_table

    p, f = predictions_table, feedback_table
    start = now - timedelta(hours=window_hours) if window_hours is not None else None
    where = [p.c.model_name == model_name, p.c.model_version == str(model_version)]
    if start is not None:
        where.append(p.c.created_at >= start.astimezone(UTC))
    where.append(p.c.created_at <= now.astimezone(UTC))

    def recent(*cols: Any) -> Any:
        return sa.select(*cols).where(*where).order_by(p.c.created_at.desc(), p.c.id).limit(limit)

    window = recent(p.c.id).subquery()
    with store.engine.connect() as conn:
        rows = conn.execute(recent(p.c.id, p.c.text, p.c.label, p.c.confidence, p.c.created_at))
        predictions = pd.DataFrame(
            rows.all(), columns=["id", "text", "cell", "confidence", "created_at"]
        )
        fb = conn.execute(
            sa.select(f.c.prediction_id, f.c.label, f.c.kind).join(
                window, window.c.id == f.c.prediction_id
            )
        )
        feedback = pd.DataFrame(fb.all(), columns=["prediction_id", "label", "kind"])
    predictions["confidence"] = predictions["confidence"].astype(float)
    return LiveWindow(predictions, feedback, start, now)


# -- statistics -------------------------------------------------------------------------


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
    from scipy import stats

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


# -- checks -----------------------------------------------------------------------------


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


def _pct(x: float) -> str:
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


def check_label_spike(
    reference: Mapping[str, int], live: Mapping[str, int], cfg: MonitoringConfig
) -> Check:
    """Fires when one label's live share jumped: by ``spike_share_gain`` (absolute) and
    ``spike_ratio`` times its reference share, significant by a binomial test."""
    from scipy import stats

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
            f"{s['label']}: {_pct(s['live_share'])} of live predictions vs "
            f"{_pct(s['reference_share'])} on the test set ({s['ratio']:.1f}x)"
            for s in spikes[:5]
        )
        why = f"{len(spikes)} label(s) spiked: {listed}"
    elif best is not None:
        why = (
            f"no label spiked; the largest gain is {best['label']} at "
            f"{_pct(best['live_share'])} vs {_pct(best['reference_share'])} "
            f"(needs +{_pct(cfg.spike_share_gain)} and {cfg.spike_ratio:g}x, significant)"
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
    from scipy import stats

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
    from scipy import stats

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
        f"{confirmed} of {n} feedback rows confirm the prediction ({_pct(accuracy)}), "
        f"{verdict} the floor {_pct(cfg.live_accuracy_floor)}",
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


# -- the report -------------------------------------------------------------------------


@dataclass
class MonitoringReport:
    """What one monitoring run found, and where it wrote it."""

    created_at: datetime
    model_name: str
    model_version: str
    status: ReportStatus
    message: str
    window_start: datetime | None
    window_end: datetime
    window_hours: float | None
    max_predictions: int
    live_predictions: int
    feedback_rows: int
    first_prediction_at: datetime | None
    last_prediction_at: datetime | None
    reference_rows: int
    reference_source: str
    reference_note: str | None
    checks: list[Check]
    labels: list[dict[str, Any]]
    confidence_histogram: dict[str, list[float]]
    length_buckets: dict[str, dict[str, int]]
    html_path: Path | None = None
    json_path: Path | None = None
    webhook_sent: bool = False
    event_id: str | None = None

    @property
    def fired(self) -> list[Check]:
        """The checks that fired."""
        return [c for c in self.checks if c.fired]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``latest.json`` holds."""
        out = asdict(self)
        out["checks"] = [asdict(c) | {"fired": c.fired} for c in self.checks]
        out["fired"] = [c.name for c in self.fired]
        for key in ("html_path", "json_path"):
            out[key] = str(out[key]) if out[key] is not None else None
        return _jsonable(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _histogram(values: np.ndarray, bins: int = CONFIDENCE_BINS) -> list[float]:
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def _svg_bars(
    names: list[str], reference: list[float], live: list[float], title: str, xlabel: str
) -> str:
    """A grouped bar chart (reference vs live shares) as inline SVG.

    Drawn by hand rather than with matplotlib: inline, the report stays one file
    that opens offline; it costs microseconds instead of a second per chart; and
    HTML5 needs no ``xmlns`` (no URL at all in the page).
    """
    e = html.escape
    width, height = 720, 250
    left, right, top, bottom = 48, 12, 34, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([*reference, *live, 1e-9])
    ymax = math.ceil(peak * 10) / 10 if peak > 0.1 else math.ceil(peak * 100) / 100
    group = plot_w / max(len(names), 1)
    bar = group * 0.38

    def y(v: float) -> float:
        return top + plot_h * (1 - v / ymax)

    out = [
        f'<svg class="chart" role="img" aria-label="{e(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f'<text x="{left}" y="18" font-size="13" font-weight="600">{e(title)}</text>',
        f'<rect x="{width - 250}" y="8" width="10" height="10" fill="#8aa2c8"/>'
        f'<text x="{width - 236}" y="17" font-size="11">reference (test set)</text>',
        f'<rect x="{width - 110}" y="8" width="10" height="10" fill="#d9822b"/>'
        f'<text x="{width - 96}" y="17" font-size="11">live</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        v = ymax * frac
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="#dde3ea"/><text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="10" '
            f'text-anchor="end">{100 * v:.0f}%</text>'
        )
    step = max(1, math.ceil(len(names) / 12))  # at most about 12 tick labels
    for i, name in enumerate(names):
        x0 = left + i * group + (group - 2 * bar) / 2
        for j, (v, colour) in enumerate(((reference[i], "#8aa2c8"), (live[i], "#d9822b"))):
            out.append(
                f'<rect x="{x0 + j * bar:.1f}" y="{y(v):.1f}" width="{bar:.1f}" '
                f'height="{top + plot_h - y(v):.1f}" fill="{colour}">'
                f"<title>{e(name)}: {100 * v:.1f}%</title></rect>"
            )
        if i % step == 0:
            out.append(
                f'<text x="{left + (i + 0.5) * group:.1f}" y="{top + plot_h + 14}" '
                f'font-size="10" text-anchor="middle">{e(name)}</text>'
            )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="11" '
        f'text-anchor="middle">{e(xlabel)}</text></svg>'
    )
    return "".join(out)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2530;line-height:1.45;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.5rem 0}
th,td{border-bottom:1px solid #dde3ea;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .55rem;border-radius:.8rem;font-weight:600;
font-size:.8rem;color:#fff}.fired,.alert{background:#c62828}.ok{background:#2e7d32}
.skipped,.insufficient{background:#78909c}.note{background:#fff7e0;border-left:4px solid
#e0a800;padding:.5rem .8rem}.meta td:first-child{width:14rem;color:#52606d}
tr.spike td{background:#fdecea}.bar{display:block;height:.45rem;margin:1px 0;background:#d9822b}
.bar.ref{background:#8aa2c8}.muted{color:#52606d;font-size:.85rem}
svg.chart{max-width:100%;height:auto;font-family:inherit}
"""

HOW_TO_READ = """
<p>Every check compares the served model's <b>live predictions</b> in the window with its
own predictions on the frozen <b>test set</b> (the reference: what it said when the
promotion gate let it serve). No check needs labels except live accuracy. A check
<span class="badge fired">fired</span> only when its statistical test is significant at
the configured level <i>and</i> the effect reaches its threshold (<code>monitoring.*</code>
in <code>params.yaml</code>); <span class="badge ok">ok</span> means it did not;
<span class="badge skipped">skipped</span> means too little data to judge.</p>
<ul>
<li><b>Label distribution shift</b> (PSI of the predicted labels; chi-square test): users
ask about other things than the test set holds. Look at the label table: which labels
grew, which shrank. If the new mix is real and lasting, label recent traffic (the review
queue) and retrain so that the test set and the model follow it.</li>
<li><b>Label share spike</b>: one label's share jumped, for example complaints about one
product, or negative news about a company surging. Often a real-world event rather than
a model fault: tell the people who own that topic; check a sample of those predictions
(the review queue) to see whether the model is right about them.</li>
<li><b>Confidence drop</b>: the model is less sure than on the test set, the first sign of
texts unlike its training data (new products, a new language, a broken upstream that
sends empty or garbled text). Read the least confident predictions (<code>GET
/review</code>), label them, retrain.</li>
<li><b>Text length drift</b>: texts got longer or shorter (PSI over word-count buckets;
Kolmogorov-Smirnov test): a new channel (e-mail instead of chat), truncation upstream.
Accuracy on the new lengths is unknown: the test set's length slices in the evaluation
report show how the model did per length.</li>
<li><b>Live accuracy on feedback</b>: the share of reviewers' feedback that confirmed the
prediction, against a floor. Feedback is a biased sample (people correct wrong answers
more than they confirm right ones), so read it as a trend. Below the floor: ingest the
feedback (<code>slmops ingest-feedback</code>) and retrain.</li>
</ul>
<p>PSI (population stability index) is 0 for identical distributions; below 0.1 is
stable, 0.1-0.2 moderate, above 0.2 large. Two samples of one distribution still differ
by chance, more so with many labels and few predictions: the label-shift line gives that
noise level. "Not enough live predictions" means no check ran: wait for more traffic or
widen the window (<code>monitoring.window_hours</code>).</p>
"""


def render_html(report: MonitoringReport) -> str:
    """The report as one self-contained HTML page: inline CSS, inline SVG charts, no
    external URL and no user text (only labels, counts and statistics)."""
    e = html.escape

    def ts(value: datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"

    badge = {"alert": "ALERT", "ok": "OK", "insufficient": "NOT ENOUGH DATA"}[report.status]
    window = (
        f"last {report.window_hours:g} h ({ts(report.window_start)} to {ts(report.window_end)})"
        if report.window_hours is not None
        else f"no time limit (up to {ts(report.window_end)})"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Monitoring: {e(report.model_name)} v{e(report.model_version)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Monitoring report: {e(report.model_name)} version {e(report.model_version)} "
        f'<span class="badge {report.status}">{badge}</span></h1>',
        f"<p>{e(report.message)}</p>",
        '<table class="meta">',
        f"<tr><td>generated</td><td>{ts(report.created_at)}</td></tr>",
        f"<tr><td>live window</td><td>{e(window)}; at most {report.max_predictions} "
        "most recent predictions</td></tr>",
        f"<tr><td>live predictions</td><td>{report.live_predictions} (first "
        f"{ts(report.first_prediction_at)}, last {ts(report.last_prediction_at)})</td></tr>",
        f"<tr><td>feedback on them</td><td>{report.feedback_rows} row(s)</td></tr>",
        f"<tr><td>reference</td><td>{report.reference_rows} test-set predictions from "
        f"{e(report.reference_source)}</td></tr>",
        "</table>",
    ]
    if report.reference_note:
        parts.append(f'<p class="note">{e(report.reference_note)}</p>')
    parts.append("<h2>Checks</h2>")
    if report.checks:
        parts.append(
            "<table><tr><th>check</th><th>result</th><th>value</th><th>threshold</th>"
            "<th>what it means</th></tr>"
        )
        for c in report.checks:
            value = "-" if c.value is None else f"{c.value:.4g}"
            parts.append(
                f"<tr><td>{e(c.title)}</td><td><span class='badge {c.status}'>{c.status}"
                f"</span></td><td class='num'>{value}</td><td class='num'>{c.threshold:g}</td>"
                f"<td>{e(c.explanation)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No check ran: see above.</p>")
    if report.labels:
        spiked = {
            s["label"]
            for c in report.checks
            if c.name == "label_spike"
            for s in c.details.get("spikes", [])
        }
        top = max(
            [1e-9, *(r["live_share"] for r in report.labels)]
            + [r["reference_share"] for r in report.labels]
        )
        parts += [
            "<h2>Label shares, live vs reference</h2>",
            "<p class='muted'>Largest live gain first. Highlighted: a label that spiked.</p>",
            "<table><tr><th>label</th><th>reference</th><th>live</th><th>change</th><th></th></tr>",
        ]
        for r in report.labels:
            cls = " class='spike'" if r["label"] in spiked else ""
            ref_w = 120 * r["reference_share"] / top
            live_w = 120 * r["live_share"] / top
            parts.append(
                f"<tr{cls}><td>{e(r['label'])}</td>"
                f"<td class='num'>{_pct(r['reference_share'])} ({r['reference_count']})</td>"
                f"<td class='num'>{_pct(r['live_share'])} ({r['live_count']})</td>"
                f"<td class='num'>{100 * r['gain']:+.1f} pt</td>"
                f"<td><span class='bar ref' style='width:{ref_w:.1f}px'></span>"
                f"<span class='bar' style='width:{live_w:.1f}px'></span></td></tr>"
            )
        parts.append("</table>")
    hist = report.confidence_histogram
    if hist.get("live"):
        names = [f"{i / CONFIDENCE_BINS:.2f}" for i in range(CONFIDENCE_BINS)]
        chart = _svg_bars(
            names, hist["reference"], hist["live"], "Share of predictions", "confidence (bin start)"
        )
        parts += ["<h2>Confidence</h2>", chart]
    buckets = report.length_buckets
    if buckets.get("live"):
        names = list(buckets["reference"])
        ref_s, live_s = shares(buckets["reference"]), shares(buckets["live"])
        chart = _svg_bars(
            names,
            [ref_s[n] for n in names],
            [live_s[n] for n in names],
            "Share of texts",
            "words per text",
        )
        parts += ["<h2>Text length</h2>", chart]
    parts += ["<h2>How to read this report</h2>", HOW_TO_READ, "</body></html>"]
    return "\n".join(parts)


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: MonitoringReport, out_dir: Path) -> MonitoringReport:
    """Write ``report-<UTC time>.html``, ``latest.html`` and ``latest.json`` in ``out_dir``."""
    stamp = report.created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    report.html_path = out_dir / f"report-{stamp}.html"
    report.json_path = out_dir / LATEST_JSON
    page = render_html(report)
    _write_text_atomic(page, report.html_path)
    _write_text_atomic(page, out_dir / LATEST_HTML)
    write_json_atomic(report.to_dict(), report.json_path)
    return report


# -- alerting ---------------------------------------------------------------------------


def emit_prefect_event(event: str, resource: dict[str, str], payload: dict[str, Any]) -> str | None:
    """Emit a Prefect event (what a Prefect automation reacts to); its id, or None when
    Prefect emits nothing here. Never raises: the webhook and the report still stand."""
    try:
        from prefect.events import emit_event

        emitted = emit_event(event=event, resource=resource, payload=payload)
    except Exception as exc:
        log.warning("Prefect event %s not emitted: %s", event, type(exc).__name__)
        return None
    return str(emitted.id) if emitted is not None else None


def alert_payload(report: MonitoringReport) -> dict[str, Any]:
    """What the webhook and the Prefect event carry: the model, the window, the fired checks."""
    return _jsonable(
        {
            "model": report.model_name,
            "version": report.model_version,
            "window_start": report.window_start,
            "window_end": report.window_end,
            "live_predictions": report.live_predictions,
            "fired": [
                {
                    "check": c.name,
                    "value": c.value,
                    "threshold": c.threshold,
                    "explanation": c.explanation,
                }
                for c in report.fired
            ],
            "report": str(report.html_path) if report.html_path else None,
        }
    )


def send_alert(params: Params, report: MonitoringReport, emit: Emitter) -> None:
    """POST ``drift_detected`` to the notify webhook and emit :data:`EVENT_NAME`."""
    from slmops.tasks.core import notify

    payload = alert_payload(report)
    # notify.send never raises, checks notify.events and never logs the URL.
    report.webhook_sent = notify.send(params, NotifyEvent.drift_detected, payload)
    resource = {
        "prefect.resource.id": f"slmops.model.{report.model_name}",
        "prefect.resource.name": report.model_name,
        "slmops.model.version": str(report.model_version),
    }
    report.event_id = emit(EVENT_NAME, resource, payload)


# -- the entry point --------------------------------------------------------------------


def run_monitoring(
    params: Params,
    *,
    labels_of: LabelsOf = single_label,
    version: str | None = None,
    reference: Reference | None = None,
    now: datetime | None = None,
    alert: bool = True,
    emit: Emitter = emit_prefect_event,
) -> MonitoringReport:
    """Compare the champion's recent live predictions with its test-set predictions.

    ``version`` defaults to the ``champion`` alias, ``reference`` to
    :func:`load_reference`; ``labels_of`` maps a stored label cell to the labels
    it counts as (the task type's own; default: the cell itself). Writes the
    report under ``monitoring.report_dir``; when a check fires and ``alert``,
    sends the webhook and the Prefect event (``emit``). Raises
    :class:`MonitoringError` when there is no champion or no reference.
    """
    from slmops.tasks.feedback.store import FeedbackStore

    cfg = params.monitoring
    name = params.registry.model_name
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if version is None:
        version = champion_version(params)
        if version is None:
            raise MonitoringError(
                f"{name} has no champion version in the registry: nothing is served, so "
                "nothing to monitor (`slmops models` lists the versions)"
            )
    version = str(version)
    if reference is None:
        reference = load_reference(params, version)
    with FeedbackStore.from_params(params) as store:
        live = read_live(
            store,
            name,
            version,
            now=now,
            window_hours=cfg.window_hours,
            limit=cfg.max_predictions,
        )
    preds, ref = live.predictions, reference.frame
    n = len(preds)
    if n < cfg.min_predictions:
        status: ReportStatus = "insufficient"
        checks: list[Check] = []
        message = (
            f"Not enough live predictions: {n} of version {version} in the window, "
            f"{cfg.min_predictions} needed (monitoring.min_predictions). No check ran; "
            "nothing was alerted."
        )
    else:
        checks = compare(preds, ref, live.feedback, cfg, labels_of)
        fired = [c for c in checks if c.fired]
        status = "alert" if fired else "ok"
        message = (
            f"{len(fired)} check(s) fired: {', '.join(c.title for c in fired)}."
            if fired
            else f"No check fired on {n} live predictions."
        )
    ref_counts = count_labels(ref["cell"], labels_of)
    live_counts = count_labels(preds["cell"], labels_of)
    report = MonitoringReport(
        created_at=now,
        model_name=name,
        model_version=version,
        status=status,
        message=message,
        window_start=live.start,
        window_end=live.end,
        window_hours=cfg.window_hours,
        max_predictions=cfg.max_predictions,
        live_predictions=n,
        feedback_rows=len(live.feedback),
        first_prediction_at=_utc_or_none(preds["created_at"].min()) if n else None,
        last_prediction_at=_utc_or_none(preds["created_at"].max()) if n else None,
        reference_rows=len(ref),
        reference_source=reference.source,
        reference_note=reference.note,
        checks=checks,
        labels=label_table(ref_counts, live_counts, cfg.psi_epsilon) if n else [],
        confidence_histogram={
            "reference": _histogram(ref["confidence"].to_numpy(float)),
            "live": _histogram(preds["confidence"].to_numpy(float)) if n else [],
        },
        length_buckets={
            "reference": bucket_counts(word_counts(ref["text"]), cfg.length_buckets),
            "live": bucket_counts(word_counts(preds["text"]), cfg.length_buckets) if n else {},
        },
    )
    write_report(report, params.path(cfg.report_dir))
    log.info("monitoring %s version %s: %s (%s)", name, version, status, report.html_path)
    if report.fired and alert:
        send_alert(params, report, emit)
        assert report.json_path is not None
        write_json_atomic(report.to_dict(), report.json_path)  # with the alert's outcome
    return report


def _utc_or_none(value: Any) -> datetime | None:
    if value is None or pd.isna(value):
        return None
    value = pd.Timestamp(value).to_pydatetime()
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
