"""The runtime below training and inference: base model, device, precision, padding."""

from pathlib import Path

import pytest
import torch

from slmops.tasks.core.config import ConfigError, Precision
from slmops.tasks.model.runtime import (
    autocast_dtype,
    pad_batch,
    pick_device,
    resolve_base_model,
)

CPU = torch.device("cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
