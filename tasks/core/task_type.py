"""The task type interface: what each step of the loop asks of a task type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from slmops.tasks.core.config import EvalConfig, Params, TaskName

if TYPE_CHECKING:
    from slmops.tasks.labels.sources import LabelFormat, VoteTable
    from slmops.tasks.model.evaluate import Predictions, TaskReport
    from slmops.tasks.validation.gate import ValidationResult

NO_ENTITY = "(no entity)"  # what a text without entities counts as in label statistics


class LabelError(ValueError):
    """A label cell that does not fit its text or the label set; the message says why."""

    def __init__(self, reason: str, known: Collection[str] = ()) -> None:
        super().__init__(reason)
        self.known = sorted(known)


class UnknownClass(LabelError):
    """A label cell that is one class, outside the label set (the cell is just wrong,
    not malformed)."""


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
    #: the transformers auto class (name) fine-tuned and served for this task
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

    # -- feedback: what a reviewer sends ------------------------------------------------

    #: the field of a ``POST /feedback`` body that carries a reviewer's answer, and
    #: what it holds, in words (for the error that names the wrong field)
    feedback_field: ClassVar[str] = "label"
    feedback_shape: ClassVar[str] = "a string"

    def feedback_cell(self, answer: Any) -> str:
        """The label cell of a reviewer's answer (the feedback field's JSON value);
        :meth:`canonical` then checks it and gives its stored form."""
        return str(answer)

    def feedback_answer(self, cell: str) -> Any:
        """The feedback field's value that gives the label cell ``cell`` as the right
        answer (the inverse of :meth:`feedback_cell`)."""
        return cell

    def shown(self, answer: dict[str, Any]) -> str:
        """One ``/predict`` answer in a line, for a console."""
        return f"{answer['label']} ({answer['confidence']:.2f})"

    # -- data -------------------------------------------------------------------------

    #: export formats this type reads besides the ones every type reads
    #: (:class:`~slmops.tasks.labels.sources.LabelFormat` entries)
    label_formats: ClassVar[tuple[LabelFormat, ...]] = ()

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
        as :func:`tasks.validation.gate.validate_frame`'s: ``dataset``, ``docs_dir``, ...)."""

    @abstractmethod
    def split_frame(
        self, df: pd.DataFrame, val_fraction: float, seed: int
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Carve ``val_fraction`` of the labeled rows out as the validation split."""

    # -- model: training ---------------------------------------------------------------

    #: what the label set is made of, for logs ("labels", "entity types")
    label_noun: ClassVar[str] = "labels"
    #: the model answers per token (its logits have a sequence axis), not per text
    per_token: ClassVar[bool] = False
    #: the validation metrics an epoch reports besides ``val_loss``, with their names
    #: in logs
    val_metrics: ClassVar[dict[str, str]]
    #: the one of them that picks the best epoch and drives early stopping
    best_metric: ClassVar[str]

    def settings(self) -> dict[str, Any]:
        """Options of this instance that change the training targets (part of a run's
        fingerprint and logged with its parameters); none by default."""
        return {}

    def auto_class(self):
        """The transformers auto class that loads and fine-tunes models of this type."""
        import transformers  # heavy: loaded only when a model is built

        return getattr(transformers, self.model_class)

    @abstractmethod
    def outputs(self, label_set: Sequence[str]) -> list[str]:
        """The model's output classes, in order, for ``label_set``."""

    @abstractmethod
    def label_set_of(self, outputs: Sequence[str]) -> list[str]:
        """The label set a model with these output classes was trained for."""

    @abstractmethod
    def sample(self, train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
        """A seeded share (``fraction`` < 1) of the training rows, in their order."""

    @abstractmethod
    def check_rows(self, name: str, df: pd.DataFrame, label_set: Collection[str]) -> None:
        """Raise :class:`tasks.core.errors.DataError` naming ``name`` (and the row) when a
        row of ``df`` cannot be trained on: a label cell outside ``label_set``..."""

    @abstractmethod
    def encode(
        self,
        tokenizer: Any,
        df: pd.DataFrame,
        output_index: dict[str, int],
        max_length: int,
    ) -> tuple[dict[str, list], np.ndarray | list[list[int]]]:
        """The rows tokenized (truncated to ``max_length``; the model's inputs and
        anything :meth:`val_scorer` reads) and their targets: a class id per row, or a
        list per row of ids per token (``-100``: no target)."""

    @abstractmethod
    def val_scorer(
        self, val: pd.DataFrame, encoded: dict[str, list], outputs: list[str]
    ) -> ValScorer:
        """What collects the validation predictions of one epoch into :attr:`val_metrics`."""

    # -- model: evaluation, export, serving ----------------------------------------------

    #: the one figure the serving formats are compared by (export), and its key in
    #: the evaluation's metrics
    format_metric: ClassVar[str]
    eval_metric: ClassVar[str]

    @abstractmethod
    def eval_predictions(self, predictor: Any, df: pd.DataFrame, batch_size: int) -> Predictions:
        """The predictor's answers for the rows of ``df`` (``text``, ``label``, maybe
        ``source``): the rows of ``predictions.csv`` and what :meth:`eval_report` reads
        (see :func:`slmops.tasks.model.evaluate.evaluate_model`)."""

    @abstractmethod
    def eval_report(
        self,
        test: Predictions,
        val: Predictions | None,
        outputs: list[str],
        cfg: EvalConfig,
    ) -> TaskReport:
        """This task's figures for the test predictions (source slices from ``val``'s,
        when given) of a model with these ``outputs``."""

    @abstractmethod
    def predict_call(self, predictor: Any) -> Callable[..., Any]:
        """What answers a list of texts (``batch_size=`` keyword) with ``predictor``, the
        answer users get (decoding included): what latency is timed on."""

    @abstractmethod
    def format_score(self, predictor: Any, test: pd.DataFrame, batch_size: int = 128) -> float:
        """:attr:`format_metric` of ``predictor`` on the test rows."""

    @abstractmethod
    def score(self, predictor: Any, texts: list[str], *, chunk: int, top_k: int) -> list[Scored]:
        """The served model's answers for ``texts``, in order."""


class ValScorer(ABC):
    """Collects one epoch's validation predictions, batch by batch."""

    @abstractmethod
    def add(self, idx: np.ndarray, probs: np.ndarray) -> None:
        """Probabilities (``[rows, outputs]`` or ``[rows, tokens, outputs]``, padded) of
        the validation rows at ``idx``."""

    @abstractmethod
    def result(self) -> dict[str, float | None]:
        """The task's :attr:`TaskType.val_metrics` over every row added."""
