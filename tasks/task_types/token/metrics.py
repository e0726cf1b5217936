"""Entity-level metrics on character spans: strict match, as seqeval's default mode.

An entity counts as found only when a predicted span has the same start, end
and type as a gold span; a span with the right type but one word too many is a
false positive *and* a false negative (seqeval, conlleval and the WNUT 2017
shared task score this way). Spans are compared as sets per row, so a
duplicated prediction counts once.

Pure functions, no model and no I/O; every dict returned is JSON-serialisable
(plain ``float``/``int``/``str``; floats rounded to 6 decimals, as
:mod:`tasks.model.metrics`), and every division by zero gives 0.0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from slmops.tasks.model.metrics import length_bucket_names, rounded
from slmops.tasks.task_types.token.spans import Span, words


def _sets(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]]):
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} rows but pred has {len(pred)}")
    return [
        ({(int(s), int(e), str(t)) for s, e, t in g}, {(int(s), int(e), str(t)) for s, e, t in p})
        for g, p in zip(gold, pred, strict=True)
    ]


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def row_counts(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]]) -> np.ndarray:
    """``(n, 3)`` int array: true positives, false positives, false negatives per row.

    Summed over any subset of rows these give that subset's micro scores, which
    is what a paired bootstrap or a per-slice score needs.
    """
    out = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (g, p) in enumerate(_sets(gold, pred)):
        tp = len(g & p)
        out[i] = (tp, len(p) - tp, len(g) - tp)
    return out


def entity_report(
    gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]], types: Sequence[str]
) -> dict[str, Any]:
    """Strict entity-level scores of predicted spans against gold spans, row by row.

    Returns::

        {"precision", "recall", "f1",          # micro, over all entities
         "macro_f1",                           # mean F1 over types in gold or pred
         "accuracy",                           # share of rows whose span set is exact
         "entities", "predicted",              # gold and predicted entity counts
         "per_class": {type: {"precision", "recall", "f1", "support", "predicted"}}}

    ``per_class`` holds every type of ``types`` in that order (support 0 included),
    then any other type found in gold or pred, sorted, so a prediction of an unknown
    type is visible rather than dropped. ``macro_f1`` averages over the types that
    occur in gold or pred, as scikit-learn and seqeval do: a type absent from both
    does not drag the mean down. An empty input gives zeros (accuracy 0.0).
    """
    pairs = _sets(gold, pred)
    tp: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    exact = 0
    for g, p in pairs:
        exact += g == p
        n_gold.update(t for _, _, t in g)
        n_pred.update(t for _, _, t in p)
        tp.update(t for _, _, t in g & p)

    known = [str(t) for t in types]
    extra = sorted((set(n_gold) | set(n_pred)) - set(known))
    per_class: dict[str, dict[str, Any]] = {}
    for kind in [*dict.fromkeys(known), *extra]:
        precision, recall, f1 = _prf(tp[kind], n_pred[kind], n_gold[kind])
        per_class[kind] = {
            "precision": rounded(precision),
            "recall": rounded(recall),
            "f1": rounded(f1),
            "support": int(n_gold[kind]),
            "predicted": int(n_pred[kind]),
        }
    occurring = [k for k in per_class if n_gold[k] or n_pred[k]]
    # Mean of the unrounded per-type F1s, so the rounding of each does not add up.
    f1s = [_prf(tp[k], n_pred[k], n_gold[k])[2] for k in occurring]
    precision, recall, f1 = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    return {
        "precision": rounded(precision),
        "recall": rounded(recall),
        "f1": rounded(f1),
        "macro_f1": rounded(sum(f1s) / len(f1s) if f1s else 0.0),
        "accuracy": rounded(exact / len(pairs) if pairs else 0.0),
        "entities": int(sum(n_gold.values())),
        "predicted": int(sum(n_pred.values())),
        "per_class": per_class,
    }


def length_slices(
    texts: Sequence[str],
    gold: Sequence[Sequence[Span]],
    pred: Sequence[Sequence[Span]],
    buckets: Sequence[int],
) -> dict[str, dict[str, Any]]:
    """Micro entity scores per text-length bucket.

    Length is the number of words of :func:`tasks.task_types.token.spans.words` (the words the
    model tags; ``@user`` is two); bucket names and bounds are those of
    :func:`tasks.model.metrics.length_bucket_names` (upper bounds inclusive, last bucket
    open). Returns ``{name: {"n", "entities", "precision", "recall", "f1"}}`` in
    increasing length, only buckets with at least one row.
    """
    if len(texts) != len(gold):
        raise ValueError(f"texts has {len(texts)} rows but gold has {len(gold)}")
    bounds = sorted({int(b) for b in buckets})
    names = length_bucket_names(bounds)
    counts = row_counts(gold, pred)
    lengths = np.asarray([len(words(str(t))) for t in texts], dtype=np.int64)
    bucket = np.searchsorted(np.asarray(bounds, dtype=np.int64), lengths, side="left")
    out: dict[str, dict[str, Any]] = {}
    for b, name in enumerate(names):
        mask = bucket == b
        if not mask.any():
            continue
        out[name] = micro_scores(counts[mask])
    return out


def micro_scores(counts: np.ndarray) -> dict[str, Any]:
    """Micro entity scores of a subset of rows from their :func:`row_counts`:
    ``{"n", "entities", "precision", "recall", "f1"}``."""
    tp, fp, fn = (int(x) for x in counts.sum(axis=0))
    precision, recall, f1 = _prf(tp, tp + fp, tp + fn)
    return {
        "n": len(counts),
        "entities": tp + fn,
        "precision": rounded(precision),
        "recall": rounded(recall),
        "f1": rounded(f1),
    }
