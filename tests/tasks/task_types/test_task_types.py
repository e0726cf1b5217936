"""The task type interface: lookup by name and by model config, the model side of
each type (outputs, sampling, row checks, targets, validation scores) and that a
new type is one subclass that the steps pick up."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer, BertConfig

from slmops.tasks.core.config import TaskName
from slmops.tasks.core.errors import DataError
from slmops.tasks.model.runtime import resolve_base_model
from slmops.tasks.task_types import (
    TASK_TYPES,
    SequenceClassification,
    TaskType,
    TokenClassification,
    stratified_fraction,
    task_of,
    task_of_model,
    task_type,
)
from slmops.tasks.task_types.token import spans as sp
from tests.tasks.tiny_model import WNUT_TYPES, tiny_ner_frames

SEQ, TOKEN = TASK_TYPES[TaskName.sequence_classification], TASK_TYPES[TaskName.token_classification]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_base_model("minilm"))


def test_every_name_has_a_type_and_lookup_keeps_settings():
    assert set(TASK_TYPES) == set(TaskName)
    assert task_type("token_classification") is TOKEN
    assert task_type(TaskName.sequence_classification) is SEQ
    custom = TokenClassification(label_all_subwords=True)
    assert task_type(custom) is custom and custom.settings() == {"label_all_subwords": True}
    assert SEQ.settings() == {} and TOKEN.settings() == {"label_all_subwords": False}
    with pytest.raises(ValueError):
        task_type("ner")


def test_task_of_reads_the_architecture():
    assert task_of(BertConfig(architectures=["BertForTokenClassification"])) is TOKEN
    assert task_of(BertConfig(architectures=["BertForSequenceClassification"])) is SEQ
    assert task_of(BertConfig()) is SEQ, "no architectures: the default type"
    assert TOKEN.auto_class().__name__ == "AutoModelForTokenClassification"


def test_task_of_model_reads_the_folder_config(tmp_path):
    BertConfig(architectures=["BertForTokenClassification"]).save_pretrained(tmp_path / "ner")
    BertConfig().save_pretrained(tmp_path / "plain")
    assert task_of_model(tmp_path / "ner") is TOKEN
    assert task_of_model(str(tmp_path / "plain")) is SEQ, "no architectures: the default type"


def test_outputs_and_label_sets_go_both_ways():
    labels = ["card_arrival", "pin_queries"]
    assert SEQ.outputs(labels) == labels == SEQ.label_set_of(labels)
    tags = TOKEN.outputs(WNUT_TYPES)
    assert tags[0] == "O" and len(tags) == 1 + 2 * len(WNUT_TYPES)
    assert TOKEN.label_set_of(tags) == WNUT_TYPES


def test_stratified_fraction_keeps_every_class():
    df = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(51)],
            "label": ["big"] * 40 + ["small"] * 10 + ["single"],
        }
    )
    sample = stratified_fraction(df, 0.1, seed=13)
    assert sample["label"].value_counts().to_dict() == {"big": 4, "small": 1, "single": 1}
    assert list(sample.index) == sorted(sample.index), "original order kept"
    assert sample.equals(stratified_fraction(df, 0.1, seed=13))
    assert stratified_fraction(df, 1.0, seed=13) is df
    assert SEQ.sample(df, 0.1, 13).equals(sample)


def test_row_checks_name_the_frame():
    df = pd.DataFrame({"text": ["a", "b"], "label": ["x", "zzz"]})
    SEQ.check_rows("train", df.iloc[:1], ["x"])
    with pytest.raises(DataError, match=r"^val: labels not in the label set: \['zzz'\]"):
        SEQ.check_rows("val", df, ["x"])
    with pytest.raises(DataError, match=r"^val row 1: not a JSON list"):
        TOKEN.check_rows("val", pd.DataFrame({"text": ["a", "b"], "label": ["[]", "x"]}), ["x"])


def test_targets_per_row_and_per_token(tokenizer):
    df = pd.DataFrame({"text": ["top up", "card"], "label": ["b", "a"]})
    enc, targets = SEQ.encode(tokenizer, df, {"a": 0, "b": 1}, 16)
    assert targets.tolist() == [1, 0] and len(enc["input_ids"]) == 2
    train, _ = tiny_ner_frames(8, 0)
    index = {t: i for i, t in enumerate(TOKEN.outputs(WNUT_TYPES))}
    enc, targets = TOKEN.encode(tokenizer, train, index, 64)
    assert "labels" not in enc, "targets are returned apart from the inputs"
    assert [len(t) for t in targets] == [len(x) for x in enc["input_ids"]]
    assert {"offset_mapping", "word_ids"} <= set(enc)


def test_validation_scorers(tokenizer):
    df = pd.DataFrame({"text": ["x"] * 4, "label": ["a", "a", "b", "b"]})
    scorer = SEQ.val_scorer(df, {}, ["a", "b"])
    scorer.add(np.array([0, 2]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    scorer.add(np.array([1, 3]), np.array([[0.1, 0.9], [0.3, 0.7]]))
    result = scorer.result()
    assert set(result) == set(SEQ.val_metrics) and result["val_accuracy"] == 0.75

    # A token classifier scored on its own gold tags, decoded: every entity found.
    train, _ = tiny_ner_frames(16, 0)
    outputs = TOKEN.outputs(WNUT_TYPES)
    index = {t: i for i, t in enumerate(outputs)}
    enc, targets = TOKEN.encode(tokenizer, train, index, 128)
    scorer = TOKEN.val_scorer(train, enc, outputs)
    width = max(len(t) for t in targets)
    probs = np.full((len(train), width, len(outputs)), 0.01)
    for i, row in enumerate(targets):
        for t, target in enumerate(row):
            probs[i, t, index["O"] if target == -100 else target] = 0.9
    scorer.add(np.arange(len(train)), probs)
    result = scorer.result()
    assert set(result) == set(TOKEN.val_metrics)
    assert result["val_f1"] == 1.0 and result["val_accuracy"] == 1.0
    assert sum(len(json.loads(c)) for c in train["label"]) > 5


def test_a_third_type_is_one_subclass():
    """Every step's part is abstract on TaskType: a subclass that leaves one out cannot
    be made, so a new type cannot be half-wired."""

    class Partial(SequenceClassification):
        pass

    assert Partial().outputs(["a"]) == ["a"]
    missing = {
        name for name, value in vars(TaskType).items() if getattr(value, "__isabstractmethod__", 0)
    }
    assert {
        "outputs", "encode", "val_scorer", "eval_predictions", "eval_report", "score",
        "format_score", "predict_call",
    } <= missing  # fmt: skip
    assert not hasattr(TaskType, "train"), "training is train_model(..., task=...)"
    with pytest.raises(TypeError, match="abstract"):
        type("Half", (TaskType,), {"outputs": lambda self, s: list(s)})()
    assert sp.tag_names(["x"]) == TOKEN.outputs(["x"])


def test_a_reviewer_answers_in_the_field_of_the_task_type():
    """A feedback body carries a label for a text classifier and spans for a token
    classifier; a label cell goes there and back unchanged."""
    assert (SEQ.feedback_field, TOKEN.feedback_field) == ("label", "entities")
    assert SEQ.feedback_answer("card_arrival") == "card_arrival"
    assert SEQ.feedback_cell("card_arrival") == "card_arrival"
    spans = [{"start": 0, "end": 12, "label": "person"}]
    assert TOKEN.feedback_answer('[[0,12,"person"]]') == spans
    assert TOKEN.feedback_answer("[]") == []
    assert sp.loads(TOKEN.feedback_cell(spans)) == sp.loads('[[0,12,"person"]]')


def test_answers_are_shown_as_entities_or_a_label():
    entity = {"text": "Taylor Swift", "label": "person", "score": 0.876}
    assert TOKEN.shown({"entities": [entity]}) == "'Taylor Swift' person (0.88)"
    assert TOKEN.shown({"entities": []}) == "no entities"
    assert SEQ.shown({"label": "card_arrival", "confidence": 0.5}) == "card_arrival (0.50)"
