"""Fine-tuning a token classifier (NER): the same loop as the sequence classifier,
on a tiny BERT and the first WNUT 2017 sentences, in seconds."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from slmops.tasks.core.config import ConfigError, TrainConfig
from slmops.tasks.core.errors import DataError
from slmops.tasks.model.checkpoints import LAST, TRAINER_FILE, fingerprint
from slmops.tasks.model.inference import LABELS_FILE, Predictor
from slmops.tasks.model.runtime import IGNORE_INDEX
from slmops.tasks.model.train import _batch_targets, _check_frames, _loss, train_model
from slmops.tasks.task_types import (
    SequenceClassification,
    TokenClassification,
    task_of_model,
    task_type,
)
from slmops.tasks.task_types.token import alignment
from slmops.tasks.task_types.token import spans as sp
from slmops.tasks.task_types.token.predict import predict_entities
from tests.tasks.tiny_model import WNUT_TYPES, make_tiny_model, tiny_ner_frames

TOKEN = "token_classification"
TOKENS = task_type(TOKEN)
SEQUENCE = SequenceClassification()
HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "val_macro_f1",
    "examples_per_s",
    "tokens_per_s",
    "seconds",
    "lr",
}


class Interrupt(RuntimeError):
    """Stands in for a kill after an epoch's checkpoint."""


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return tiny_ner_frames(64, 16)


def config(base_model: str, **overrides) -> TrainConfig:
    settings = {
        "base_model": base_model,
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.1,
        "early_stopping_patience": 0,
        "device": "cpu",
        "num_threads": 2,
    }
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(base_model, frames, tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    result = train_model(
        *frames, WNUT_TYPES, config(base_model), root / "model", root / "ck",
        progress=False, task=TOKENS,
    )  # fmt: skip
    return result, root


def test_a_token_classifier_trains_and_writes_its_tag_names(trained, frames):
    result, root = trained
    model_dir = root / "model"
    tags = sp.tag_names(WNUT_TYPES)
    assert json.loads((model_dir / LABELS_FILE).read_text()) == tags
    config_json = json.loads((model_dir / "config.json").read_text())
    assert config_json["architectures"] == ["BertForTokenClassification"]
    assert [config_json["id2label"][str(i)] for i in range(len(tags))] == tags
    assert not (root / "ck").exists()

    assert result.params["task"] == TOKEN
    assert result.params["num_labels"] == len(tags) == 13
    assert result.params["label_all_subwords"] is False
    assert [row["epoch"] for row in result.history] == [1, 2]
    for row in result.history:
        assert set(row) == HISTORY_KEYS
        assert 0.0 <= row["val_accuracy"] <= 1.0
        assert 0.0 <= row["val_f1"] <= 1.0 and 0.0 <= row["val_macro_f1"] <= 1.0
        assert row["val_loss"] > 0
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"], "it learns"
    # Most words are O: a model that learnt anything gets most word tags right.
    assert result.history[-1]["val_accuracy"] > 0.7
    best = max(result.history, key=lambda r: r["val_f1"])  # first of equals, as training
    assert result.best_epoch == best["epoch"]

    predictor = Predictor.from_dir(model_dir, device="cpu", task=task_of_model(model_dir))
    assert predictor.task.name == TOKEN
    assert predictor.label_set == WNUT_TYPES
    found = predict_entities(predictor, frames[1]["text"].tolist())
    assert len(found) == len(frames[1])


def test_resume_after_a_kill_ends_with_the_same_weights(
    trained, base_model, frames, tmp_path, caplog
):
    _, root = trained

    def kill_after_1(row: dict) -> None:
        if row["epoch"] == 1:
            raise Interrupt("killed")

    out, ck = tmp_path / "model", tmp_path / "ck"
    cfg = config(base_model)
    with pytest.raises(Interrupt):
        train_model(
            *frames, WNUT_TYPES, cfg, out, ck, on_epoch=kill_after_1, progress=False, task=TOKENS
        )
    assert json.loads((ck / LAST / TRAINER_FILE).read_text())["epoch"] == 1
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        resumed = train_model(*frames, WNUT_TYPES, cfg, out, ck, progress=False, task=TOKENS)
    assert "resuming from epoch 1" in caplog.text
    assert resumed.resumed_from_epoch == 1
    want = load_file(root / "model" / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_a_checkpoint_of_another_task_or_target_rule_is_not_resumed(
    base_model, frames, tmp_path, caplog
):
    out, ck = tmp_path / "model", tmp_path / "ck"

    def stop(row: dict) -> None:
        raise Interrupt("killed")

    with pytest.raises(Interrupt):
        train_model(
            *frames, WNUT_TYPES, config(base_model, epochs=1), out, ck, on_epoch=stop,
            progress=False, task=TOKENS,
        )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="slmops.tasks.model.train"):
        result = train_model(
            *frames, WNUT_TYPES, config(base_model, epochs=1), out, ck, progress=False,
            task=TokenClassification(label_all_subwords=True),
        )  # fmt: skip
    assert "starting fresh" in caplog.text and "config.label_all_subwords" in caplog.text
    assert result.resumed_from_epoch is None
    assert result.params["label_all_subwords"] is True


def test_fingerprint_includes_the_task(base_model, frames):
    train, val = frames
    cfg = config(base_model)
    token = fingerprint(train, val, WNUT_TYPES, cfg, TOKENS)
    assert token["task"] == TOKEN
    assert token != fingerprint(train, val, WNUT_TYPES, cfg, SEQUENCE)
    assert fingerprint(train, val, WNUT_TYPES, cfg, SEQUENCE)["task"] == "sequence_classification"
    every_piece = TokenClassification(label_all_subwords=True)
    assert token != fingerprint(train, val, WNUT_TYPES, cfg, every_piece)
    assert fingerprint(train, val, WNUT_TYPES, cfg, every_piece)["config"]["label_all_subwords"]
    assert token == fingerprint(train.copy(), val.copy(), list(WNUT_TYPES), cfg, TOKENS)


def test_a_task_name_instead_of_a_task_type_is_a_config_error(base_model, frames, tmp_path):
    with pytest.raises(ConfigError, match="task 'ner': expected a TaskType"):
        train_model(
            *frames, WNUT_TYPES, config(base_model), tmp_path / "m", tmp_path / "c", task="ner"
        )


def test_bad_span_cells_are_named_with_frame_and_row(frames):
    train, val = frames
    _check_frames(train, val, WNUT_TYPES, TOKENS)  # the real rows pass
    bad = val.copy()
    bad.loc[3, "label"] = "person"
    with pytest.raises(DataError, match=r"^val row 3: not a JSON list"):
        _check_frames(train, bad, WNUT_TYPES, TOKENS)
    bad = train.copy()
    bad.loc[5, "label"] = json.dumps([[0, 2, "person"]])  # "4Dbling": cuts the word
    with pytest.raises(DataError, match=r"^train row 5: span \[0, 2, 'person'\] .*cuts a word"):
        _check_frames(bad, val, WNUT_TYPES, TOKENS)
    bad = train.copy()
    bad.loc[4, "label"] = json.dumps([[0, 7, "animal"]])
    with pytest.raises(DataError, match=r"^train row 4: entity types not in the label set"):
        _check_frames(bad, val, WNUT_TYPES, TOKENS)
    shifted = train.iloc[10:]
    shifted.loc[12, "label"] = '[[0, 999, "person"]]'
    with pytest.raises(DataError, match=r"^train row 2 \(index 12\): span .* outside the text"):
        _check_frames(shifted, val, WNUT_TYPES, TOKENS)
    with pytest.raises(DataError, match="the label list is empty"):
        _check_frames(train, val, [], TOKENS)


def test_the_token_targets_ignore_what_the_loss_ignores():
    assert alignment.IGNORE_INDEX == IGNORE_INDEX == -100


def test_targets_and_loss_for_tokens_and_classes():
    tokens = _batch_targets([[IGNORE_INDEX, 1, 2, IGNORE_INDEX], [IGNORE_INDEX, 0]], [1, 0])
    assert tokens.tolist() == [[IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX], [-100, 1, 2, -100]]
    classes = _batch_targets(np.array([3, 1, 2]), np.array([2, 0]))
    assert classes.tolist() == [2, 3]

    logits = torch.randn(2, 4, 3)
    loss, count = _loss(logits, tokens)
    assert int(count) == 3
    mask = tokens != IGNORE_INDEX
    want = torch.nn.functional.cross_entropy(logits[mask], tokens[mask])
    torch.testing.assert_close(loss, want)
    flat = torch.randn(2, 4)
    torch.testing.assert_close(
        _loss(flat, classes)[0], torch.nn.functional.cross_entropy(flat, classes)
    )
    # A batch with nothing to learn from: zero loss, still differentiable.
    empty, none = _loss(logits.requires_grad_(), torch.full((2, 4), IGNORE_INDEX))
    assert int(none) == 0 and float(empty.detach()) == 0.0
    empty.backward()


def test_data_fraction_of_ner_rows_is_a_random_share(frames):
    train, _ = frames
    sample = task_type(TOKEN).sample
    half = sample(train, 0.5, 13)
    assert len(half) == 32
    assert list(half.index) == sorted(half.index)
    assert half.equals(sample(train, 0.5, 13))
    assert sample(train, 1.0, 13) is train
