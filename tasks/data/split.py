"""Carve a validation split from the labeled data (never from the test split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from slmops.tasks.core.config import Params, TaskName
from slmops.tasks.data.dataset import read_labeled, write_csv_atomic
from slmops.tasks.task_types import task_type


@dataclass(frozen=True)
class SplitSummary:
    """Sizes and locations of the written splits."""

    train_rows: int
    val_rows: int
    train_path: Path
    val_path: Path


def split_frame(
    df: pd.DataFrame,
    val_fraction: float,
    seed: int,
    task: TaskName = TaskName.sequence_classification,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The task type's split: for classification ``val_fraction`` of each class (rounded),
    a class too small to spare a row staying in train. Deterministic for a given seed."""
    return task_type(task).split_frame(df, val_fraction, seed)


def write_splits(params: Params) -> SplitSummary:
    """Split the labeled data into ``data/splits/train.csv`` and ``val.csv``."""
    df = read_labeled(params)
    train, val = split_frame(df, params.split.val_fraction, params.split.seed, params.task)
    out = params.path(params.data.splits_dir)
    write_csv_atomic(train, out / "train.csv")
    write_csv_atomic(val, out / "val.csv")
    return SplitSummary(len(train), len(val), out / "train.csv", out / "val.csv")
