"""Task types: the parts of each step that depend on what the model learns.

``params.yaml``'s ``task`` picks one; every step (seed and label import,
validation, split, training, evaluation, serving, feedback, monitoring) asks
:func:`task_type` for its part instead of branching on the task itself. The
label cell of a data row is a string for every type: the label for
``sequence_classification``, canonical span JSON (:mod:`tasks.ner.spans`) for
``token_classification``. Adding a task type means one more :class:`TaskType`
subclass, registered in :data:`TASK_TYPES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from tasks.config import Params, TaskName
from tasks.dataset import read_table

if TYPE_CHECKING:
    from tasks.evaluate import EvalResult
    from tasks.label_sources import VoteTable
    from tasks.validate import ValidationResult

NO_ENTITY = "(no entity)"  # what a text without entities counts as in label statistics


class LabelError(ValueError):
    """A label cell that does not fit its text or the label set; the message says why."""

    def __init__(self, reason: str, known: Collection[str] = ()) -> None:
        super().__init__(reason)
        self.known = sorted(known)


@dataclass(frozen=True)
class Scored:
    """One text's answer from the served model, before it is logged.

    ``label`` is a label cell (stored and compared as is); ``confidence`` ranks
    answers for review and feeds the monitoring; ``top_k`` holds the runner-up
    labels and ``entities`` the spans (each for the task type that has them).
    """

    label: str
    confidence: float
    top_k: list[dict[str, Any]] = field(default_factory=list)
    entities: list[dict[str, Any]] | None = None


class TaskType(ABC):
    """What one task type does at each step of the loop."""

    name: ClassVar[TaskName]
    #: the Hugging Face model class fine-tuned and served for this task
    model_class: ClassVar[str]
    #: the transformers pipeline task MLflow logs the model for
    pipeline_task: ClassVar[str]

    # -- labels: import, feedback, validation, monitoring ----------------------------

    @abstractmethod
    def classes(self, cell: str) -> list[str]:
        """The members of the label set a label cell names (for label-in-set checks)."""

    @abstractmethod
    def canonical(self, text: str, cell: str, label_set: Collection[str]) -> str:
        """The label cell in its one stored form; :class:`LabelError` when it is invalid
        for ``text`` or names a label outside ``label_set``."""

    def observed(self, cell: str) -> list[str]:
        """What a label cell counts as in label distributions (monitoring)."""
        return self.classes(cell)

    def strip(self, text: str, cell: str) -> tuple[str, str]:
        """The text without surrounding whitespace (how the data keeps it) and its label
        cell to match."""
        return text.strip(), cell

    # -- data -------------------------------------------------------------------------

    @abstractmethod
    def read_seed(self, params: Params, rel: str) -> VoteTable:
        """The rows of one seed file (``text``, ``label``, ``source_id`` votes) and the
        items that could not become rows, with the reason."""

    @abstractmethod
    def validate_frame(
        self,
        df: pd.DataFrame,
        params: Params,
        label_set: list[str],
        test_texts: pd.Series | None = None,
        **kw: Any,
    ) -> ValidationResult:
        """Run the validation gate's checks for this task on ``df`` (keyword arguments
        as :func:`tasks.validate.validate_frame`'s: ``dataset``, ``docs_dir``, ...)."""

    @abstractmethod
    def split_frame(
        self, df: pd.DataFrame, val_fraction: float, seed: int
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Carve ``val_fraction`` of the labeled rows out as the validation split."""

    # -- model ------------------------------------------------------------------------

    def train(self, train: pd.DataFrame, val: pd.DataFrame, label_set: list[str], *a, **kw):
        """Fine-tune the base model (see :func:`tasks.train.train_model`)."""
        from tasks.train import train_model

        return train_model(train, val, label_set, *a, task=self.name.value, **kw)

    def evaluate(self, predictor: Any, test: pd.DataFrame, *a, **kw) -> EvalResult:
        """Evaluate a predictor on the test split (see :func:`tasks.evaluate.evaluate_model`)."""
        from tasks.evaluate import evaluate_model

        return evaluate_model(predictor, test, *a, **kw)

    @abstractmethod
    def score(self, predictor: Any, texts: list[str], *, chunk: int, top_k: int) -> list[Scored]:
        """The served model's answers for ``texts``, in order."""


class SequenceClassification(TaskType):
    """One label per text, from a fixed label set (intents, topics, sentiment)."""

    name = TaskName.sequence_classification
    model_class = "AutoModelForSequenceClassification"
    pipeline_task = "text-classification"

    def classes(self, cell: str) -> list[str]:
        """The label itself."""
        return [cell]

    def canonical(self, text: str, cell: str, label_set: Collection[str]) -> str:
        """The label, if it is in the label set."""
        if cell not in label_set:
            raise LabelError(f"label {cell!r} is not in the label set", label_set)
        return cell

    def read_seed(self, params: Params, rel: str) -> VoteTable:
        """A CSV with the configured text and label columns."""
        from tasks.label_sources import REJECTED_COLUMNS, VoteTable

        d = params.data
        df = read_table(params.path(rel), (d.seed_text_column, d.seed_label_column))
        df = df.rename(columns={d.seed_text_column: "text", d.seed_label_column: "label"})
        # Surrounding newlines/spaces in a few seed texts carry no meaning.
        df["text"] = df["text"].str.strip()
        df["source_id"] = [f"row {i}" for i in range(1, len(df) + 1)]
        df["annotator"] = "seed"
        return VoteTable(df, pd.DataFrame(columns=list(REJECTED_COLUMNS)), "csv")

    def validate_frame(self, df, params, label_set, test_texts=None, **kw):
        """The classification checks of :func:`tasks.validate.validate_frame`."""
        from tasks.validate import validate_frame

        return validate_frame(df, params, label_set, test_texts, **kw)

    def split_frame(self, df, val_fraction, seed):
        """Stratified: ``val_fraction`` of each class (a class too small stays in train)."""
        val = df.groupby("label", sort=True).sample(frac=val_fraction, random_state=seed)
        train = df.drop(index=val.index)
        return train.reset_index(drop=True), val.sort_index().reset_index(drop=True)

    def score(self, predictor, texts, *, chunk, top_k):
        """Most probable label, its probability and the ``top_k`` labels."""
        probs = predict_proba_by_length(predictor, texts, chunk)
        labels = predictor.labels
        k = min(top_k, len(labels))
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[:k]
            top = [{"label": labels[i], "score": float(p[i])} for i in order]
            out.append(Scored(top[0]["label"], top[0]["score"], top))
        return out


class TokenClassification(TaskType):
    """Entity spans in a text (named-entity recognition), BIO-tagged per word."""

    name = TaskName.token_classification
    model_class = "AutoModelForTokenClassification"
    pipeline_task = "token-classification"

    def classes(self, cell: str) -> list[str]:
        """The entity types of the spans, once each, in order of first appearance."""
        from tasks.ner.spans import SpanError, loads

        try:
            return list(dict.fromkeys(kind for _, _, kind in loads(cell)))
        except SpanError as exc:
            raise LabelError(str(exc)) from None

    def canonical(self, text: str, cell: str, label_set: Collection[str]) -> str:
        """Canonical span JSON, after checking the spans fit ``text`` and their types."""
        from tasks.ner.spans import SpanError, check, dumps, loads

        try:
            spans = loads(cell)
            check(text, spans)
        except SpanError as exc:
            raise LabelError(str(exc)) from None
        unknown = sorted({kind for _, _, kind in spans} - set(label_set))
        if unknown:
            raise LabelError(f"entity type(s) {unknown} not in the label set", label_set)
        return dumps(spans)

    def strip(self, text: str, cell: str) -> tuple[str, str]:
        """The stripped text, and the spans moved left by the whitespace cut off its start
        (a cell that is not span JSON is left for the gate to reject)."""
        from tasks.ner.spans import SpanError, dumps, loads

        shift = len(text) - len(text.lstrip())
        try:
            spans = loads(cell)
        except SpanError:
            return text.strip(), cell
        return text.strip(), dumps([(s - shift, e - shift, kind) for s, e, kind in spans])

    def observed(self, cell: str) -> list[str]:
        """Entity types, one per entity; a text without entities counts as ``(no entity)``."""
        from tasks.ner.spans import loads

        return [kind for _, _, kind in loads(cell)] or [NO_ENTITY]

    def read_seed(self, params: Params, rel: str) -> VoteTable:
        """A CoNLL file (one token and its BIO tag per line)."""
        from tasks.ner.conll import read_conll

        return read_conll(params.path(rel))

    def validate_frame(self, df, params, label_set, test_texts=None, **kw):
        """Span, tag-set and length checks (:func:`tasks.ner.validate.validate_entities_frame`)."""
        from tasks.ner.validate import validate_entities_frame

        bounds = params.validation
        kw.setdefault("token_min", bounds.token_min_words)
        kw.setdefault("token_max", bounds.token_max_words)
        return validate_entities_frame(df, params, label_set, test_texts, **kw)

    def split_frame(self, df, val_fraction, seed):
        """A seeded random share of the rows (a row holds entities of several types)."""
        val = df.sample(frac=val_fraction, random_state=seed)
        train = df.drop(index=val.index)
        return train.reset_index(drop=True), val.sort_index().reset_index(drop=True)

    def score(self, predictor, texts, *, chunk, top_k):
        """Entity spans with character offsets into each text and their scores."""
        from tasks.ner.spans import dumps

        out = []
        for entities, confidence in predictor.predict_entities(
            texts, batch_size=chunk, with_confidence=True
        ):
            label = dumps([(e["start"], e["end"], e["label"]) for e in entities])
            out.append(Scored(label, confidence, [], entities))
        return out


TASK_TYPES: dict[TaskName, TaskType] = {
    t.name: t for t in (SequenceClassification(), TokenClassification())
}


def task_type(params_or_name: Params | TaskName | str) -> TaskType:
    """The task type of a params object or by name."""
    name = params_or_name.task if isinstance(params_or_name, Params) else params_or_name
    return TASK_TYPES[TaskName(name)]


def predict_proba_by_length(predictor: Any, texts: Sequence[str], chunk: int) -> np.ndarray:
    """``predictor.predict_proba(texts)``, in chunks of ``chunk`` texts of similar length.

    A forward pass pads every text to the longest one in it; a micro-batch mixes
    texts of 3 and 60 tokens. Sorting by characters (a close proxy for tokens)
    and cutting into chunks costs one more call per chunk but far less padding:
    measured on MiniLM (1 thread, test-split texts), 32 texts in chunks of 8 or 16
    took 0.5 to 0.7x the time of one 32-text pass, which itself padded so much
    that it was barely faster per text than batches of 8.
    """
    texts = list(texts)
    if len(texts) <= chunk:
        return predictor.predict_proba(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        probs = predictor.predict_proba([texts[i] for i in idx])
        if out is None:
            out = np.empty((len(texts), probs.shape[1]), dtype=probs.dtype)
        out[idx] = probs
    assert out is not None
    return out
