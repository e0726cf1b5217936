"""Carve a stratified validation split from the labeled data (never from the test split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.config import Params
from tasks.dataset import read_labeled, write_csv_atomic


@dataclass(frozen=True)
class SplitSummary:
    """Sizes and locations of the written splits."""

    train_rows: int
    val_rows: int
    train_path: Path
    val_path: Path


def split_frame(
    df: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split: ``val_fraction`` of each class (rounded) goes to validation.

    Deterministic for a given seed; a class too small to spare a row stays in train.
    """
    val = df.groupby("label", sort=True).sample(frac=val_fraction, random_state=seed)
    train = df.drop(index=val.index)
    return train.reset_index(drop=True), val.sort_index().reset_index(drop=True)


def write_splits(params: Params) -> SplitSummary:
    """Split the labeled data into ``data/splits/train.csv`` and ``val.csv``."""
    df = read_labeled(params)
    train, val = split_frame(df, params.split.val_fraction, params.split.seed)
    out = params.path(params.data.splits_dir)
    write_csv_atomic(train, out / "train.csv")
    write_csv_atomic(val, out / "val.csv")
    return SplitSummary(len(train), len(val), out / "train.csv", out / "val.csv")
