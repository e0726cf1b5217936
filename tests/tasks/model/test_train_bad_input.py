"""A label set that changes between the data and the model is named before training starts."""

from __future__ import annotations

import pandas as pd
import pytest

from slmops.tasks.core.errors import DataError
from slmops.tasks.model.train import _check_frames
from slmops.tasks.task_types import SequenceClassification


def test_training_names_split_labels_missing_from_the_label_set() -> None:
    sequence = SequenceClassification()
    train = pd.DataFrame({"text": ["where is my card"], "label": ["card_arrival"]})
    val = pd.DataFrame({"text": ["what is my pin"], "label": ["pin_queries"]})
    with pytest.raises(DataError, match=r"^val: labels not in the label set: \['pin_queries'\]"):
        _check_frames(train, val, ["card_arrival"], sequence)
    with pytest.raises(DataError, match="the label list has duplicates"):
        _check_frames(train, val, ["card_arrival", "card_arrival"], sequence)
    with pytest.raises(DataError, match=r"^train: no column 'label'"):
        _check_frames(train[["text"]], val, ["card_arrival", "pin_queries"], sequence)
