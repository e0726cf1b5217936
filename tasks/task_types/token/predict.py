"""A token classifier's answers decoded: word tags and entity spans from the
per-token probabilities a predictor returns (:meth:`slmops.tasks.model.inference.
BasePredictor.predict_token_proba`, any serving format).

Each text's tokens are mapped to its words through their character offsets; a
word's tag distribution is that of its first sub-word and the tags are the most
probable well-formed BIO sequence (:func:`.alignment.word_tags`). Words past the
``max_length`` cut are tagged ``O`` with no score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slmops.tasks.model.inference import BasePredictor
from slmops.tasks.task_types.token import alignment
from slmops.tasks.task_types.token.alignment import WordTags


def predict_word_tags(
    predictor: BasePredictor, texts: Sequence[str], batch_size: int = 128
) -> list[WordTags]:
    """Per text, its words' predicted BIO tags and scores, in input order."""
    texts = [str(t) for t in texts]
    return [
        alignment.word_tags(text, out.offsets, None, out.probs, predictor.labels)
        for text, out in zip(
            texts, predictor.predict_token_proba(texts, batch_size=batch_size), strict=True
        )
    ]


def predict_entities(
    predictor: BasePredictor,
    texts: Sequence[str],
    batch_size: int = 128,
    *,
    with_confidence: bool = False,
) -> list:
    """Entities of each text, in input order: per text a list of ``{"start", "end",
    "label", "score", "text"}`` with character offsets into that text as given,
    ``label`` the entity type and ``score`` the mean over its words of the first
    sub-word's top probability.

    ``with_confidence``: ``(entities, confidence)`` pairs instead, the confidence
    being the mean over the text's words of that same probability (what
    monitoring compares live against the reference).
    """
    texts = [str(t) for t in texts]
    rows = predict_word_tags(predictor, texts, batch_size=batch_size)
    found: list[list[dict[str, Any]]] = [
        alignment.entities(t, w) for t, w in zip(texts, rows, strict=True)
    ]
    if with_confidence:
        return [(e, w.confidence) for e, w in zip(found, rows, strict=True)]
    return found
