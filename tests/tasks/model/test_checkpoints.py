"""A run's checkpoints: its fingerprint, finding what resumes, clearing, RNG states."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from slmops.tasks.core.config import TrainConfig
from slmops.tasks.model.checkpoints import (
    BEST,
    FINGERPRINT_FILE,
    LAST,
    TRAINER_FILE,
    changes,
    clear_checkpoints,
    find_checkpoint,
    find_last,
    fingerprint,
    rng_states,
    set_rng_states,
)
from slmops.tasks.task_types import SequenceClassification
from tests.tasks.tiny_model import TINY_LABELS, tiny_frames

SEQUENCE = SequenceClassification()


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return tiny_frames()


def config(**overrides) -> TrainConfig:
    settings = {"base_model": "tiny", "epochs": 4, "batch_size": 8, "device": "cpu"}
    return TrainConfig(**{**settings, **overrides})


def test_fingerprint_covers_data_labels_and_training_settings(frames):
    train, val = frames
    cfg = config()
    fp = fingerprint(train, val, TINY_LABELS, cfg, SEQUENCE)
    assert fp == fingerprint(train.copy(), val.copy(), list(TINY_LABELS), cfg, SEQUENCE)
    # Where and how fast it runs does not change the weights: a resumption may differ.
    assert fp == fingerprint(train, val, TINY_LABELS, config(num_threads=1), SEQUENCE)
    assert fp == fingerprint(train, val, TINY_LABELS, config(output_dir="x"), SEQUENCE)
    edited = train.copy()
    edited.loc[0, "text"] = edited.loc[0, "text"] + "!"
    relabeled = train.copy()
    relabeled.loc[0, "label"] = TINY_LABELS[-1]
    for other in (
        fingerprint(edited, val, TINY_LABELS, cfg, SEQUENCE),
        fingerprint(relabeled, val, TINY_LABELS, cfg, SEQUENCE),
        fingerprint(train, val.iloc[1:], TINY_LABELS, cfg, SEQUENCE),
        fingerprint(train, val, [*TINY_LABELS, "extra"], cfg, SEQUENCE),
        fingerprint(train, val, TINY_LABELS, config(batch_size=4), SEQUENCE),
        fingerprint(train, val, TINY_LABELS, config(data_fraction=0.5), SEQUENCE),
    ):
        assert other != fp


def test_changes_name_what_differs(frames):
    fp = {**fingerprint(*frames, TINY_LABELS, config(), SEQUENCE), "world_size": 1}
    assert changes(fp, fp) == ""
    assert changes(None, fp) == "unreadable fingerprint"
    other = fingerprint(frames[0], frames[1].iloc[1:], TINY_LABELS, config(seed=7), SEQUENCE)
    assert changes(other, fp) == "val, config.seed"  # no world_size: a 1-process run
    assert changes({**other, "world_size": 2}, fp) == "val, world_size, config.seed"


def write_last(folder, fp) -> None:
    folder.mkdir(parents=True)
    (folder / TRAINER_FILE).write_text(json.dumps({"epoch": 2}))
    (folder / FINGERPRINT_FILE).write_text(json.dumps(fp))


def test_find_checkpoint_resumes_only_the_same_run(tmp_path):
    fp = {"train": "a", "val": "b", "labels": "c", "task": "t", "world_size": 1, "config": {}}
    assert find_checkpoint(tmp_path, fp) is None
    write_last(tmp_path / LAST, fp)
    found = find_checkpoint(tmp_path, fp)
    assert found.path == tmp_path / LAST and found.trainer == {"epoch": 2}
    other = find_checkpoint(tmp_path, {**fp, "labels": "d"})
    assert other.trainer is None and other.changed == "labels"
    (tmp_path / LAST / FINGERPRINT_FILE).write_text("{not json")
    assert find_checkpoint(tmp_path, fp).changed == "unreadable fingerprint"


def test_a_kill_between_the_renames_finds_the_previous_last(tmp_path):
    write_last(tmp_path / f".{LAST}.old", {})
    assert find_last(tmp_path) == tmp_path / f".{LAST}.old"
    (tmp_path / LAST).mkdir()  # the new one, not complete: no trainer.json
    assert find_last(tmp_path) == tmp_path / f".{LAST}.old"


def test_clearing_removes_only_the_checkpoints(tmp_path):
    for name in (LAST, BEST, f".{LAST}.old", f".{BEST}.tmp-x"):
        (tmp_path / "ck" / name).mkdir(parents=True)
    clear_checkpoints(tmp_path / "ck")
    assert not (tmp_path / "ck").exists(), "an emptied folder goes too"
    for name in (LAST, "notes"):
        (tmp_path / "ck" / name).mkdir(parents=True)
    clear_checkpoints(tmp_path / "ck")
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["notes"]
    clear_checkpoints(tmp_path / "missing")


def test_rng_states_round_trip_through_a_weights_only_save(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    torch.save(rng_states(), tmp_path / "rng.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want
