"""Metrics on predictions: headline scores, calibration, slices, plots.

Pure functions of labels, probabilities and predictions: no model and no I/O,
except :func:`plot_confusion_matrix` and :func:`plot_reliability`, which write
one PNG each. Every dict returned is JSON-serialisable (plain ``float``/``int``/
``str``/``None``; floats rounded to 6 decimals) so it can go straight into
``report.json``, ``metrics.json`` and the MLflow run.

Conventions:

- Predictions are the argmax of the probability rows; columns follow ``labels``.
- Per-class scores use ``zero_division=0``: a class never predicted has precision 0.
- Headline macro averages (``macro_f1``, ``macro_precision``, ``macro_recall``)
  are over the labels that occur in ``y_true`` or in the predictions, as
  scikit-learn does by default; with every class in the test split (BANKING77)
  that is all of ``labels``. Classes absent from both do not drag the mean down.
- Slice macro-F1 is over the labels present in that slice's ``y_true``.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

DECIMALS = 6


def rounded(value: float) -> float:
    """``value`` as a plain float rounded to the reports' decimals."""
    return round(float(value), DECIMALS)


def _check_known(values: Sequence[str], labels: Sequence[str], what: str) -> None:
    unknown = sorted(set(map(str, values)) - set(labels))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(f"{what} holds labels not in the label set: {shown}{more}")


def classification_report(
    y_true: Sequence[str], probs: np.ndarray, labels: list[str], *, ece_bins: int = 15
) -> dict[str, Any]:
    """Headline and per-class metrics of probabilistic predictions.

    ``probs`` is ``(n, len(labels))``; column ``j`` is the probability of
    ``labels[j]`` and the prediction is the argmax of each row. Returns::

        {"accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall",
         "ece", "n",
         "per_class": {label: {"precision", "recall", "f1", "support"}}}

    ``per_class`` holds every label in ``labels``, in that order, support-0 ones
    included. Raises ``ValueError`` when shapes disagree, the label set has
    duplicates, ``y_true`` holds a label outside ``labels``, or ``probs`` is not
    probabilities.
    """
    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels):
        raise ValueError("labels has duplicates")
    y = np.asarray([str(v) for v in y_true], dtype=object)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (examples × labels), got shape {probs.shape}")
    if probs.shape != (len(y), len(labels)):
        raise ValueError(
            f"probs has shape {probs.shape} but there are {len(y)} examples "
            f"and {len(labels)} labels: expected ({len(y)}, {len(labels)})"
        )
    if len(y) == 0:
        raise ValueError("no examples to evaluate")
    _check_known(y, labels, "y_true")
    if not np.isfinite(probs).all() or probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError("probs must be finite probabilities in [0, 1] (got logits?)")

    y_pred = np.asarray(labels, dtype=object)[probs.argmax(axis=1)]
    correct = y_pred == y
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0
    )
    present = np.isin(np.asarray(labels, dtype=object), np.concatenate([y, y_pred]))
    ece, _ = expected_calibration_error(probs.max(axis=1), correct, ece_bins)
    return {
        "accuracy": rounded(correct.mean()),
        "macro_f1": rounded(f1[present].mean()),
        "weighted_f1": rounded(np.average(f1, weights=support)),
        "macro_precision": rounded(precision[present].mean()),
        "macro_recall": rounded(recall[present].mean()),
        "ece": ece,
        "n": len(y),
        "per_class": {
            label: {
                "precision": rounded(precision[j]),
                "recall": rounded(recall[j]),
                "f1": rounded(f1[j]),
                "support": int(support[j]),
            }
            for j, label in enumerate(labels)
        },
    }


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int
) -> tuple[float, list[dict[str, Any]]]:
    """ECE over ``bins`` equal-width bins of [0, 1], and the reliability-diagram rows.

    A confidence ``c`` falls in bin ``(lower, upper]`` (the first bin also takes
    0). ECE = Σ_bins (count / n) · |accuracy − mean confidence|. Rows, one per
    bin, empty ones included: ``{"bin_lower", "bin_upper", "count", "accuracy",
    "confidence"}``; an empty bin has ``accuracy`` and ``confidence`` ``None``.
    With no examples the ECE is 0.
    """
    conf = np.asarray(confidence, dtype=float).ravel()
    ok = np.asarray(correct).ravel().astype(bool)
    if conf.shape != ok.shape:
        raise ValueError(
            f"confidence has {conf.size} values but correct has {ok.size}: they must pair up"
        )
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidence must be finite and within [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=bins)
    hits = np.bincount(idx, weights=ok.astype(float), minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    rows: list[dict[str, Any]] = []
    ece = 0.0
    for b in range(bins):
        acc = hits[b] / count[b] if count[b] else None
        mean_conf = conf_sum[b] / count[b] if count[b] else None
        if count[b]:
            ece += count[b] / conf.size * abs(acc - mean_conf)
        rows.append(
            {
                "bin_lower": rounded(edges[b]),
                "bin_upper": rounded(edges[b + 1]),
                "count": int(count[b]),
                "accuracy": None if acc is None else rounded(acc),
                "confidence": None if mean_conf is None else rounded(mean_conf),
            }
        )
    return rounded(ece), rows


def length_bucket_names(length_buckets: Sequence[int]) -> list[str]:
    """Readable names of the word-count buckets, e.g. ``[6, 10, 15]`` →
    ``["<=6 words", "7-10 words", "11-15 words", ">15 words"]``.

    Bounds are upper bounds (inclusive), sorted and de-duplicated; the last
    bucket is open. No bounds gives one bucket, ``"all lengths"``.
    """
    bounds = sorted({int(b) for b in length_buckets})
    if bounds and bounds[0] < 1:
        raise ValueError(f"length bucket bounds must be at least 1, got {bounds[0]}")
    if not bounds:
        return ["all lengths"]
    names = [f"<={bounds[0]} words"]
    for lo, hi in itertools.pairwise(bounds):
        names.append(f"{hi} words" if lo + 1 == hi else f"{lo + 1}-{hi} words")
    names.append(f">{bounds[-1]} words")
    return names


def _slice_scores(y: pd.Series, pred: pd.Series) -> dict[str, Any]:
    present = sorted(set(y))
    return {
        "n": len(y),
        "accuracy": rounded((y.to_numpy() == pred.to_numpy()).mean()),
        "macro_f1": rounded(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
    }


def slice_metrics(frame: pd.DataFrame, *, length_buckets: list[int]) -> dict[str, Any]:
    """Accuracy and macro-F1 per text-length bucket and, when present, per ``source``.

    ``frame`` has columns ``text``, ``label`` and ``pred`` (``source`` optional).
    Length is the number of whitespace-separated words; bucket names come from
    :func:`length_bucket_names`. Returns ``{"length": {name: {"n", "accuracy",
    "macro_f1"}}, "source": {...}}``, buckets in increasing length and sources by
    name; only slices with at least one row appear. Missing sources are
    ``"unknown"``. Macro-F1 is over the labels present in the slice's ``label``.
    """
    missing = [c for c in ("text", "label", "pred") if c not in frame.columns]
    if missing:
        raise ValueError(f"slice_metrics: frame lacks column(s) {', '.join(missing)}")
    bounds = sorted({int(b) for b in length_buckets})
    names = length_bucket_names(bounds)
    y = frame["label"].astype(str)
    pred = frame["pred"].astype(str)
    words = frame["text"].fillna("").astype(str).str.split().str.len().to_numpy(dtype=int)
    bucket = np.searchsorted(np.asarray(bounds, dtype=int), words, side="left")
    out: dict[str, Any] = {"length": {}}
    for b, name in enumerate(names):
        mask = bucket == b
        if mask.any():
            out["length"][name] = _slice_scores(y[mask], pred[mask])
    if "source" in frame.columns:
        source = frame["source"].astype(object).where(frame["source"].notna(), "unknown")
        source = source.astype(str)
        out["source"] = {
            name: _slice_scores(y[source == name], pred[source == name])
            for name in sorted(source.unique())
        }
    return out


def confusion_rows(y_true: Sequence[str], y_pred: Sequence[str]) -> list[dict[str, str]]:
    """One ``{"actual", "predicted"}`` row per example, for dvc's confusion template."""
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} values but y_pred has {len(y_pred)}")
    return [{"actual": str(a), "predicted": str(p)} for a, p in zip(y_true, y_pred, strict=True)]


def reliability_rows(bins: list[dict[str, Any]]) -> list[dict[str, float]]:
    """``{"confidence", "accuracy"}`` per non-empty calibration bin, for ``dvc plots``."""
    return [
        {"confidence": float(b["confidence"]), "accuracy": float(b["accuracy"])}
        for b in bins
        if b["count"]
    ]


def _save_png(fig: Any, path: Path) -> Path:
    # Agg canvas on a bare Figure: no pyplot, no global backend state, headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: list[str], path: Path
) -> Path:
    """Row-normalised confusion matrix as a PNG (each row: where that class went).

    The figure grows with the number of labels and the tick font shrinks, so 77
    classes stay legible; cells are annotated up to 20 classes. Rows of classes
    with no examples stay 0. Returns ``path``.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    labels = [str(label) for label in labels]
    y_true = [str(v) for v in y_true]
    y_pred = [str(v) for v in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} values but y_pred has {len(y_pred)}")
    _check_known(y_true, labels, "y_true")
    _check_known(y_pred, labels, "y_pred")
    k = len(labels)
    cm = confusion_matrix(y_true, y_pred, labels=labels).astype(float)
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)

    side = max(6.0, 2.5 + 0.2 * k)
    # Cells are 0.2 in (14 pt) apart, so a 5–6 pt tick label fits each row.
    font = 9.0 if k <= 20 else max(5.0, 9.0 - 0.05 * (k - 20))
    fig = Figure(figsize=(side + 1.5, side), dpi=120)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    ax.set_xticks(range(k), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix (row-normalised, n={len(y_true)})")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=font,
                        color=color,
                    )
    return _save_png(fig, path)


def plot_reliability(bins: list[dict[str, Any]], path: Path) -> Path:
    """Reliability diagram as a PNG: accuracy per confidence bin against the diagonal.

    ``bins`` are the rows of :func:`expected_calibration_error`; the title gives
    the ECE computed from them and the number of examples. Returns ``path``.
    """
    from matplotlib.figure import Figure

    total = sum(int(b["count"]) for b in bins)
    filled = [b for b in bins if b["count"]]
    ece = sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in filled)
    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.add_subplot()
    lower = [float(b["bin_lower"]) for b in filled]
    width = [float(b["bin_upper"]) - float(b["bin_lower"]) for b in filled]
    ax.bar(
        lower,
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    ax.bar(
        lower,
        [abs(b["confidence"] - b["accuracy"]) for b in filled],
        width=width,
        bottom=[min(b["accuracy"], b["confidence"]) for b in filled],
        align="edge",
        facecolor="none",
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.4f}, n={total})")
    ax.legend(loc="upper left")
    return _save_png(fig, path)
