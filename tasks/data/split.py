"""Carve a validation split from the labeled data (never from the test split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmops.tasks.core.config import Params
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.data.dataset import read_labeled, write_csv_atomic


@dataclass(frozen=True)
class SplitSummary:
    """Sizes and locations of the written splits."""

    train_rows: int
    val_rows: int
    train_path: Path
    val_path: Path


def write_splits(params: Params, task: TaskType) -> SplitSummary:
    """Split the labeled data into ``data/splits/train.csv`` and ``val.csv``: the task
    type's split (for classification ``val_fraction`` of each class, rounded; a class too
    small to spare a row stays in train), deterministic for a given seed."""
    df = read_labeled(params)
    train, val = task.split_frame(df, params.split.val_fraction, params.split.seed)
    out = params.path(params.data.splits_dir)
    write_csv_atomic(train, out / "train.csv")
    write_csv_atomic(val, out / "val.csv")
    return SplitSummary(len(train), len(val), out / "train.csv", out / "val.csv")
