"""Task types: the parts of each step that depend on what the model learns.

``params.yaml``'s ``task`` picks one; every step (seed and label import,
validation, split, training, evaluation, export, serving, feedback,
monitoring) asks :func:`task_type` for its part instead of branching on the
task itself. The label cell of a data row is a string for every type: the
label for ``sequence_classification``, canonical span JSON
(:mod:`slmops.tasks.task_types.token.spans`) for ``token_classification``.

Adding a task type means one more :class:`TaskType` subclass (a module beside
:mod:`.sequence` and :mod:`.token`) and its entry in :data:`TASK_TYPES` (and
its name in :class:`slmops.tasks.core.config.TaskName`).
"""

from __future__ import annotations

from typing import Any

from slmops.tasks.core.config import Params, TaskName
from slmops.tasks.core.task_type import (
    NO_ENTITY,
    LabelError,
    Scored,
    TaskType,
    ValScorer,
    predict_proba_by_length,
)
from slmops.tasks.task_types.sequence.classification import (
    SequenceClassification,
    stratified_fraction,
)
from slmops.tasks.task_types.token.classification import TokenClassification

TASK_TYPES: dict[TaskName, TaskType] = {
    t.name: t for t in (SequenceClassification(), TokenClassification())
}


def task_type(of: Params | TaskType | TaskName | str) -> TaskType:
    """The task type of a params object, or by name (a :class:`TaskType` is returned
    as is, with its settings)."""
    if isinstance(of, TaskType):
        return of
    name = of.task if isinstance(of, Params) else of
    return TASK_TYPES[TaskName(name)]


def task_of(config: Any) -> TaskType:
    """The task type a transformers model config was fine-tuned for, from its
    ``architectures`` (``...ForTokenClassification``: the type whose auto class is
    ``AutoModelForTokenClassification``); sequence classification when none says."""
    architectures = [str(a) for a in getattr(config, "architectures", None) or []]
    for t in TASK_TYPES.values():
        suffix = t.model_class.removeprefix("AutoModel")
        if any(a.endswith(suffix) for a in architectures):
            return t
    return TASK_TYPES[TaskName.sequence_classification]


__all__ = [
    "NO_ENTITY",
    "TASK_TYPES",
    "LabelError",
    "Scored",
    "SequenceClassification",
    "TaskType",
    "TokenClassification",
    "ValScorer",
    "predict_proba_by_length",
    "stratified_fraction",
    "task_of",
    "task_type",
]
