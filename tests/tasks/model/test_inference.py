"""Prediction from a saved model folder in each torch format: raw probabilities per
text, in input order, whatever the batching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slmops.tasks.core.config import ConfigError, Precision
from slmops.tasks.model.inference import (
    LABELS_FILE,
    BasePredictor,
    Predictor,
    int8_linears,
    load_predictor,
    predict_proba_by_length,
)
from slmops.tasks.task_types import task_type
from tests.tasks.tiny_model import TINY_LABELS, make_tiny_model, tiny_frames

# The engine is given the task type by whoever loads a model; these tests pick it.
SEQ = task_type("sequence_classification")

CPU = torch.device("cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "classifier", labels=TINY_LABELS)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_dir(model_dir, device="cpu", task=SEQ)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    _, val = tiny_frames()
    # Mixed lengths, so batches pad differently from one-at-a-time prediction.
    return [*val["text"].tolist(), "card?", "word " * 400]


def test_probabilities_sum_to_one(predictor, texts):
    probs = predictor.predict_proba(texts, batch_size=8)
    assert probs.shape == (len(texts), len(TINY_LABELS))
    assert probs.dtype == np.float32
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_predictions_come_back_in_input_order(predictor, texts):
    batched = predictor.predict_proba(texts, batch_size=8)
    one_by_one = np.concatenate([predictor.predict_proba([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    reversed_ = predictor.predict_proba(texts[::-1], batch_size=8)
    np.testing.assert_allclose(reversed_[::-1], batched, atol=1e-5)
    # A random model still tells texts apart: the check above is not vacuous.
    assert np.abs(batched - batched.mean(axis=0)).max() > 1e-2


def test_probabilities_by_length_chunks_keep_the_input_order(predictor, texts):
    want = predictor.predict_proba(texts)
    for chunk in (1, 3, len(texts)):
        got = predict_proba_by_length(predictor, texts, chunk)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_text_model_has_no_token_answers(predictor):
    assert not predictor.per_token
    with pytest.raises(TypeError, match="answers per text: use predict_proba"):
        predictor.predict_token_proba(["card"])


def test_predict_returns_the_most_probable_label(predictor, texts):
    labels = predictor.predict(texts, batch_size=4)
    probs = predictor.predict_proba(texts, batch_size=4)
    assert labels == [TINY_LABELS[i] for i in probs.argmax(axis=1)]
    assert set(labels) <= set(TINY_LABELS)


def test_no_texts_no_predictions(predictor):
    assert predictor.predict_proba([]).shape == (0, len(TINY_LABELS))
    assert predictor.predict([]) == []


def test_long_texts_are_truncated_to_the_model(predictor):
    assert predictor.max_length <= predictor.model.config.max_position_embeddings
    assert predictor.predict_proba(["money " * 2000]).shape == (1, len(TINY_LABELS))


def test_loaded_predictor_has_labels_model_tokenizer_device(predictor):
    assert predictor.labels == TINY_LABELS
    assert predictor.device == CPU
    assert not predictor.model.training
    assert predictor.tokenizer.pad_token_id is not None


def test_bf16_on_cpu_is_close_to_fp32(model_dir, predictor, texts):
    bf16 = Predictor.from_dir(model_dir, device="cpu", precision=Precision.bf16, task=SEQ)
    np.testing.assert_allclose(bf16.predict_proba(texts), predictor.predict_proba(texts), atol=0.05)


def test_labels_must_match_the_model(model_dir, tmp_path):
    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    (copy / LABELS_FILE).write_text(json.dumps(TINY_LABELS[:3]))
    with pytest.raises(ValueError, match="3 labels but the model has 5"):
        Predictor.from_dir(copy, device="cpu", task=SEQ)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        Predictor.from_dir(tmp_path, task=SEQ)


# --------------------------------------------------------------------------- formats


def test_every_torch_format_has_the_one_interface(model_dir, predictor, texts):
    for fmt in ("torch", "torch-bf16", "torch-int8"):
        p = load_predictor(fmt, model_dir, task=SEQ, device="cpu")
        assert isinstance(p, BasePredictor) and p.task is SEQ
        assert p.format == fmt
        assert p.labels == TINY_LABELS and p.max_length == predictor.max_length
        probs = p.predict_proba(texts)
        assert probs.shape == (len(texts), len(TINY_LABELS))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_torch_int8_quantizes_the_widening_linears_on_load(model_dir, predictor, texts):
    p = Predictor.from_dir(model_dir, device="cpu", int8=True, task=SEQ)
    quantized = {
        n
        for n, m in p.model.named_modules()
        if "quantized" in type(m).__module__ and type(m).__name__ == "Linear"
    }
    assert quantized and quantized == int8_linears(predictor.model)
    # The down projections (64 -> 32 here) and the head stay fp32.
    assert not any(n.endswith(".output.dense") and ".attention." not in n for n in quantized)
    assert "classifier" not in quantized
    np.testing.assert_allclose(p.predict_proba(texts), predictor.predict_proba(texts), atol=0.05)
    # The weights on disk are untouched: int8 exists only in memory.
    assert not any("int8" in f.name for f in model_dir.iterdir())


def test_torch_int8_is_cpu_fp32_only(model_dir):
    with pytest.raises(ConfigError, match="torch-int8 runs on the CPU"):
        Predictor.from_dir(model_dir, device="cpu", precision="bf16", int8=True, task=SEQ)


def test_unknown_or_fileless_formats_are_refused(model_dir):
    with pytest.raises(ConfigError, match="unknown serving format 'tflite'"):
        load_predictor("tflite", model_dir, task=SEQ)
    with pytest.raises(ValueError, match="onnx-int8 needs an ONNX file"):
        load_predictor("onnx-int8", model_dir, task=SEQ)
