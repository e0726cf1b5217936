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

import json
from pathlib import Path
from typing import Any

from slmops.tasks.core.config import Params, TaskName
from slmops.tasks.core.task_type import (
    NO_ENTITY,
    LabelError,
    Scored,
    TaskType,
    ValScorer,
)
from slmops.tasks.labels.sources import BASE_FORMATS, LabelFormat
from slmops.tasks.task_types.sequence.classification import (
    SequenceClassification,
    stratified_fraction,
)
from slmops.tasks.task_types.token.classification import TokenClassification

TASK_TYPES: dict[TaskName, TaskType] = {
    t.name: t for t in (SequenceClassification(), TokenClassification())
}

#: every export format a label file can be in, in detection order: whatever the
#: project's task, a file is read as what it is (and its labels then checked against
#: the task), so that importing the wrong kind of export says so
LABEL_FORMATS: tuple[LabelFormat, ...] = (
    *(f for t in TASK_TYPES.values() for f in t.label_formats),
    *BASE_FORMATS,
)


def task_type(of: Params | TaskType | TaskName | str) -> TaskType:
    """The task type of a params object, built with the settings its ``train`` section
    gives it (``train.label_all_subwords`` for token classification); by name, the
    type with its default settings (a :class:`TaskType` is returned as is)."""
    if isinstance(of, TaskType):
        return of
    if not isinstance(of, Params):
        return TASK_TYPES[TaskName(of)]
    registered = TASK_TYPES[of.task]
    # A type's settings change its training targets, so they are keys of its train section.
    settings = {key: getattr(of.train, key) for key in registered.settings()}
    if settings == registered.settings():
        return registered
    return type(registered)(**settings)


def task_of(config: Any) -> TaskType:
    """The task type a transformers model config was fine-tuned for, from its
    ``architectures`` (``...ForTokenClassification``: the type whose auto class is
    ``AutoModelForTokenClassification``); sequence classification when none says."""
    return _by_architectures(getattr(config, "architectures", None))


def task_of_model(folder: str | Path) -> TaskType:
    """:func:`task_of` the model in ``folder`` (read from its ``config.json``): what
    whoever loads a model (serving, export, evaluation) passes to the engines."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return _by_architectures(config.get("architectures"))


def _by_architectures(names: list[str] | None) -> TaskType:
    architectures = [str(a) for a in names or []]
    for t in TASK_TYPES.values():
        suffix = t.model_class.removeprefix("AutoModel")
        if any(a.endswith(suffix) for a in architectures):
            return t
    return TASK_TYPES[TaskName.sequence_classification]


__all__ = [
    "LABEL_FORMATS",
    "NO_ENTITY",
    "TASK_TYPES",
    "LabelError",
    "Scored",
    "SequenceClassification",
    "TaskType",
    "TokenClassification",
    "ValScorer",
    "stratified_fraction",
    "task_of",
    "task_of_model",
    "task_type",
]
