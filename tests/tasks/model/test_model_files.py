"""Models load from safetensors (or ONNX) only: a folder whose weights are a pickle
(``pytorch_model.bin``) is refused, and the pickle is never opened."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from slmops.tasks.core.config import TrainConfig
from slmops.tasks.model.inference import Predictor, load_predictor
from slmops.tasks.model.train import train_model
from slmops.tasks.task_types import SequenceClassification
from tests.tasks.tiny_model import TINY_LABELS, make_tiny_model, tiny_frames


class _Payload:
    """Unpickling this creates a file: proof that the pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def pickle_only_model(tmp_path: Path) -> tuple[Path, Path]:
    folder = make_tiny_model(tmp_path / "model", TINY_LABELS)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return folder, marker


@pytest.mark.parametrize("fmt", ["torch", "torch-int8"])
def test_pickle_weights_are_refused_and_never_unpickled(pickle_only_model, fmt):
    folder, marker = pickle_only_model
    with pytest.raises(OSError, match=r"model\.safetensors"):
        load_predictor(fmt, folder, task=SequenceClassification(), device="cpu")
    assert not marker.exists()


def test_safetensors_weights_load(tmp_path):
    folder = make_tiny_model(tmp_path / "model", TINY_LABELS)
    loaded = Predictor.from_dir(folder, device="cpu", task=SequenceClassification())
    assert loaded.labels == TINY_LABELS


def test_a_pickle_only_base_model_is_refused_for_training(pickle_only_model, tmp_path):
    folder, marker = pickle_only_model
    cfg = TrainConfig(base_model=str(folder), epochs=1, device="cpu", num_threads=1)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        train_model(*tiny_frames(), TINY_LABELS, cfg, tmp_path / "out", tmp_path / "ck",
                    progress=False, task=SequenceClassification())  # fmt: skip
    assert not marker.exists()
