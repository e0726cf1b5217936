"""`task_type(params)` builds the type with the settings the params give it:
`train.label_all_subwords` reaches the token classifier and the run's fingerprint."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from slmops.tasks.core.config import Params, TaskName, parse_params, with_overrides
from slmops.tasks.model.checkpoints import fingerprint
from slmops.tasks.task_types import TASK_TYPES, TokenClassification, task_type

TYPES = ["location", "person"]


def token_params(**train) -> Params:
    raw = {"task": "token_classification", "train": train}
    return parse_params(raw, Path("params.yaml"), root=Path("."))


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.DataFrame(
        {"text": ["Paris today", "ask Ann"], "label": ['[[0,5,"location"]]', "[]"]}
    )
    val = pd.DataFrame({"text": ["Rome"], "label": ['[[0,4,"location"]]']})
    return train, val


def test_label_all_subwords_from_params_reaches_the_task_type_and_the_fingerprint():
    every_piece = token_params(label_all_subwords=True)
    task = task_type(every_piece)
    assert isinstance(task, TokenClassification) and task.label_all_subwords is True
    assert task.settings() == {"label_all_subwords": True}

    default = token_params()
    assert task_type(default) is TASK_TYPES[TaskName.token_classification]

    train, val = frames()
    changed = fingerprint(train, val, TYPES, every_piece.train, task)
    before = fingerprint(train, val, TYPES, default.train, task_type(default))
    assert changed["config"]["label_all_subwords"] is True
    assert before["config"]["label_all_subwords"] is False
    assert changed != before  # a checkpoint of the other rule is not resumed


def test_a_profile_can_set_it_and_a_sequence_project_has_no_settings():
    every_piece = with_overrides(token_params(), {"train": {"label_all_subwords": True}})
    assert task_type(every_piece).settings() == {"label_all_subwords": True}
    assert task_type(Params()) is TASK_TYPES[TaskName.sequence_classification]
    assert task_type(Params()).settings() == {}
