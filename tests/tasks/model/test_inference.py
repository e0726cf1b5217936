"""Prediction from a saved model folder, device and precision choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slmops.tasks.core.config import ConfigError, Precision
from slmops.tasks.model.inference import (
    LABELS_FILE,
    Predictor,
    autocast_dtype,
    pad_batch,
    pick_device,
    resolve_base_model,
)
from tests.tasks.tiny_model import TINY_LABELS, make_tiny_model, tiny_frames

CPU = torch.device("cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "classifier", labels=TINY_LABELS)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_dir(model_dir, device="cpu")


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
    bf16 = Predictor.from_dir(model_dir, device="cpu", precision=Precision.bf16)
    np.testing.assert_allclose(bf16.predict_proba(texts), predictor.predict_proba(texts), atol=0.05)


def test_labels_must_match_the_model(model_dir, tmp_path):
    import shutil

    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    (copy / LABELS_FILE).write_text(json.dumps(TINY_LABELS[:3]))
    with pytest.raises(ValueError, match="3 labels but the model has 5"):
        Predictor.from_dir(copy, device="cpu")


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        Predictor.from_dir(tmp_path)


def test_pad_batch_pads_to_the_longest_in_the_batch():
    encoded = {
        "input_ids": [[101, 5, 102], [101, 5, 6, 7, 102], [101, 102]],
        "token_type_ids": [[0, 0, 0], [0, 0, 0, 0, 0], [0, 0]],
    }
    batch = pad_batch(encoded, [0, 2], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].shape == (2, 3)


# --------------------------------------------------------------------------- device, precision


def test_resolve_base_model(tmp_path):
    minilm = Path(resolve_base_model("minilm"))
    assert (minilm / "config.json").is_file()
    assert resolve_base_model(str(tmp_path)) == str(tmp_path)
    assert resolve_base_model("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_pick_device():
    assert pick_device("cpu") == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        pick_device("cuda")


def test_autocast_dtype_on_cpu():
    assert autocast_dtype(CPU, "auto") is None
    assert autocast_dtype(CPU, Precision.fp32) is None
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        autocast_dtype(CPU, "fp16")
    with pytest.raises(ConfigError, match="expected one of"):
        autocast_dtype(CPU, "int8")


@cuda_only
def test_autocast_dtype_on_cuda():
    gpu = torch.device("cuda")
    best = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype(gpu, "auto") is best
    assert autocast_dtype(gpu, "fp16") is torch.float16
    assert autocast_dtype(gpu, "fp32") is None


# --------------------------------------------------------------------------- formats


def test_every_torch_format_has_the_one_interface(model_dir, predictor, texts):
    from slmops.tasks.model.inference import BasePredictor, load_predictor

    for fmt in ("torch", "torch-bf16", "torch-int8"):
        p = load_predictor(fmt, model_dir, device="cpu")
        assert isinstance(p, BasePredictor)
        assert p.format == fmt
        assert p.labels == TINY_LABELS and p.max_length == predictor.max_length
        probs = p.predict_proba(texts)
        assert probs.shape == (len(texts), len(TINY_LABELS))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_torch_int8_quantizes_the_widening_linears_on_load(model_dir, predictor, texts):
    from slmops.tasks.model.inference import int8_linears

    p = Predictor.from_dir(model_dir, device="cpu", int8=True)
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
        Predictor.from_dir(model_dir, device="cpu", precision="bf16", int8=True)


def test_unknown_or_fileless_formats_are_refused(model_dir):
    from slmops.tasks.model.inference import load_predictor

    with pytest.raises(ConfigError, match="unknown serving format 'tflite'"):
        load_predictor("tflite", model_dir)
    with pytest.raises(ValueError, match="onnx-int8 needs an ONNX file"):
        load_predictor("onnx-int8", model_dir)
