"""Carve a validation split from the labeled data (never from the test split)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmops.tasks.core.config import Params
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.lock import project_lock
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.data.dataset import (
    LabeledPaths,
    read_labeled,
    write_csv_atomic,
    write_json_atomic,
)
from slmops.tasks.data.versioning import data_hash

# Beside train.csv and val.csv: the DVC versions of the data the split was carved from.
SPLIT_RECORD = "data.json"


@dataclass(frozen=True)
class SplitSummary:
    """Sizes and locations of the written splits."""

    train_rows: int
    val_rows: int
    train_path: Path
    val_path: Path


def data_versions(params: Params) -> dict[str, str]:
    """DVC hashes of the labeled data and the test split in the workspace now (empty
    when not tracked)."""
    paths = LabeledPaths(params)
    out = {}
    for key, folder in (("labeled", paths.dir), ("test", paths.test_dir)):
        try:
            out[key] = data_hash(folder)
        except DataError:
            out[key] = ""
    return out


def split_versions(params: Params) -> dict[str, str] | None:
    """The DVC hashes recorded with the split in ``data.splits_dir``: the data it was
    carved from (None for a split written before splits recorded them)."""
    try:
        return json.loads((params.path(params.data.splits_dir) / SPLIT_RECORD).read_text())
    except FileNotFoundError:
        return None


def write_splits(params: Params, task: TaskType) -> SplitSummary:
    """Split the labeled data into ``data/splits/train.csv`` and ``val.csv``: the task
    type's split (for classification ``val_fraction`` of each class, rounded; a class too
    small to spare a row stays in train), deterministic for a given seed.

    The data and its DVC version are read under the project lock, so an ingestion
    landing meanwhile cannot give a split of one version recorded as another; the
    version goes to ``data.json`` beside the split (:func:`split_versions`)."""
    with project_lock(params, "split"):
        df = read_labeled(params)
        versions = data_versions(params)
    train, val = task.split_frame(df, params.split.val_fraction, params.split.seed)
    out = params.path(params.data.splits_dir)
    # The old record goes first: a split cut short never carries another split's record.
    (out / SPLIT_RECORD).unlink(missing_ok=True)
    write_csv_atomic(train, out / "train.csv")
    write_csv_atomic(val, out / "val.csv")
    write_json_atomic(versions, out / SPLIT_RECORD)
    return SplitSummary(len(train), len(val), out / "train.csv", out / "val.csv")
