"""Loading a fine-tuned model and running it, in each serving format: raw outputs.

The model folder is what :func:`slmops.tasks.model.train.train_model` writes:
``save_pretrained`` weights (safetensors only: nothing here unpickles a file),
the tokenizer and ``labels.json``. Every format shares the tokenizer and the
labels of that folder and differs only in what runs the network
(:class:`BasePredictor` is the one interface; :func:`load_predictor` builds one
by format name):

- ``torch``: :class:`Predictor`, the safetensors weights in fp32 (or autocast
  to ``train.precision`` on a GPU); ``torch-bf16``: the same under CPU bf16
  autocast; ``torch-int8``: every ``nn.Linear`` dynamically quantized to int8
  *when loaded*, from the fp32 safetensors (no quantized file is stored: torch
  can only save it as a pickle, which this project never loads);
- ``onnx`` / ``onnx-int8``: :class:`OnnxPredictor`, an ONNX Runtime session
  on a ``model.onnx`` made by :mod:`slmops.tasks.model.export`.

Texts are sorted by length and each batch is padded only to its own longest
text, so a batch of short texts does not pay for a long one.

A predictor answers with probabilities, nothing decoded: per text
(:meth:`BasePredictor.predict_proba`, ``[texts, outputs]``) for a model that
answers per text, or per token with each token's character offsets
(:meth:`BasePredictor.predict_token_proba`) for one that answers per token.
Which it is, how its model class is loaded and what its outputs mean is the
task type's (:class:`slmops.tasks.core.task_type.TaskType`), passed in by
whoever loads the model; the task type decodes the probabilities into labels
or entity spans. ``labels.json`` holds the outputs in order: the labels, or a
token classifier's BIO tag names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmops.tasks.core.config import ConfigError, Precision
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.model.runtime import (
    autocast,
    autocast_dtype,
    pad_arrays,
    pick_device,
    precision_name,
    softmax,
)

log = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
TORCH_FORMATS = ("torch", "torch-bf16", "torch-int8")
ONNX_FORMATS = ("onnx", "onnx-int8")


def read_labels(path: Path, num_labels: int, id2label: dict[int, str] | None = None) -> list[str]:
    """The labels in output order: ``labels.json`` beside the model, else the config's."""
    labels_file = path / LABELS_FILE
    if labels_file.is_file():
        labels = json.loads(labels_file.read_text(encoding="utf-8"))
    else:
        labels = [(id2label or {})[i] for i in range(num_labels)]
    if len(labels) != num_labels:
        raise ValueError(
            f"{labels_file}: {len(labels)} labels but the model has {num_labels} outputs"
        )
    return list(labels)


@dataclass(frozen=True)
class TokenProbs:
    """One text's answer from a model that answers per token.

    ``probs`` is ``[tokens, outputs]``: the text's own tokens (special tokens
    included, padding not; truncated to the predictor's ``max_length``);
    ``offsets`` are those tokens' character offsets into the text as given (the
    tokenizer's ``offset_mapping``; ``(0, 0)`` for a special token), what decoding
    maps tokens to words with.
    """

    probs: np.ndarray
    offsets: list[tuple[int, int]]


class BasePredictor:
    """What every serving format offers: labels, the length limit, the format's name,
    the task type it was loaded as, and probabilities for a list of texts
    (tokenization included): per text, or per token for a model that answers per
    token (the task type's :attr:`~slmops.tasks.core.task_type.TaskType.per_token`)."""

    #: ``torch``, ``torch-bf16``, ``torch-int8``, ``onnx`` or ``onnx-int8``.
    format: str = "torch"

    def __init__(self, tokenizer, labels: list[str], max_length: int, *, task: TaskType) -> None:
        self.tokenizer = tokenizer
        #: the outputs in order: labels, or the BIO tag names of a token classifier
        self.labels = list(labels)
        self.max_length = max_length
        #: the task type the model was loaded as: what decodes its probabilities
        self.task = task

    @property
    def per_token(self) -> bool:
        """Whether the model answers per token (:meth:`predict_token_proba`) rather than
        per text (:meth:`predict_proba`)."""
        return self.task.per_token

    @property
    def label_set(self) -> list[str]:
        """The label set the model was trained for: its labels, or the entity types of a
        token classifier."""
        return self.task.label_set_of(self.labels)

    def _probs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for one padded batch (int64 arrays) of the format's network:
        ``[batch, labels]``, or ``[batch, tokens, labels]`` per token."""
        raise NotImplementedError

    def _batches(self, encoded, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, probabilities)`` per batch of ``batch_size`` texts, the texts
        sorted by token count and each batch padded to its own longest."""
        lengths = np.array([len(x) for x in encoded["input_ids"]])
        order = np.argsort(lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, self._probs(pad_arrays(encoded, idx, pad_id))

    def _answers(self, per_token: bool) -> None:
        if self.per_token != per_token:
            kind, use = ("text", "predict_proba") if per_token else ("token", "predict_token_proba")
            raise TypeError(f"this model ({self.task.name.value}) answers per {kind}: use {use}")

    def predict_proba(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Probabilities per text, shape ``[len(texts), len(labels)]``, in input order
        (a model that answers per text)."""
        self._answers(per_token=False)
        texts = list(texts)  # a pandas Series or tuple works as well
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        for idx, probs in self._batches(encoded, batch_size):
            out[idx] = probs
        return out

    def predict(self, texts: Sequence[str], batch_size: int = 128) -> list[str]:
        """The most probable output of each text, in input order (a model that answers
        per text)."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def predict_token_proba(self, texts: Sequence[str], batch_size: int = 128) -> list[TokenProbs]:
        """Per text, its tokens' probabilities and character offsets, in input order (a
        model that answers per token). Texts are cut at ``max_length`` tokens: the
        tokens past the cut are not there. Needs a fast tokenizer (one that reports
        offsets)."""
        self._answers(per_token=True)
        texts = [str(t) for t in texts]
        if not texts:
            return []
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(self.tokenizer).__name__} is not a fast tokenizer: answers per token "
                "need character offsets (return_offsets_mapping)"
            )
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, return_offsets_mapping=True
        )
        out: list[TokenProbs] = [None] * len(texts)  # type: ignore[list-item]
        for idx, probs in self._batches(encoded, batch_size):
            for row, i in enumerate(idx):
                offsets = [(int(s), int(e)) for s, e in encoded["offset_mapping"][i]]
                out[i] = TokenProbs(probs[row, : len(offsets)], offsets)
        return out


def predict_proba_by_length(
    predictor: BasePredictor, texts: Sequence[str], chunk: int
) -> np.ndarray:
    """``predictor.predict_proba(texts)``, in chunks of ``chunk`` texts of similar length.

    A forward pass pads every text to the longest one in it, and a micro-batch of
    requests mixes short and long texts. Sorting by characters (a close proxy for
    tokens) and cutting into chunks costs one more call per chunk but pads far
    less (benchmarks/RESULTS.md, serving).
    """
    texts = list(texts)
    if len(texts) <= chunk:
        return predictor.predict_proba(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        probs = predictor.predict_proba([texts[i] for i in idx])
        if out is None:
            out = np.empty((len(texts), probs.shape[1]), dtype=probs.dtype)
        out[idx] = probs
    assert out is not None
    return out


def _max_length(*limits: Any) -> int:
    # Tokenizers without a limit report a huge sentinel (int(1e30)); ignore it.
    return min(int(x) for x in limits if x and x < 1_000_000)


def int8_linears(model) -> set[str]:
    """The ``nn.Linear`` layers that ``torch-int8`` quantizes: all but those that narrow
    their input (the feed-forward down projections and the classifier head).

    Their inputs (after GELU) have the widest ranges, which per-tensor int8 handles
    worst: quantizing every Linear cost more accuracy than the export rule allows,
    keeping these in fp32 stayed within it with most of the Linear FLOPs still in
    int8 (docs/architecture.md, the decisions).
    """
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features >= module.in_features
    }


def quantize_int8(model):
    """``model`` with its :func:`int8_linears` dynamically quantized to int8 (CPU only).

    int8 weights per tensor, activations quantized on the fly per batch. Done at
    load time from the fp32 weights: the quantized module can only be saved as a
    pickle, which this project never loads.
    """
    import warnings

    with warnings.catch_warnings():
        # torch.ao.quantization and quantized tensors are deprecated in favour of torchao
        # (not installed); the eager dynamic path works in the pinned torch and is what
        # the benchmark measured.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization")
        warnings.filterwarnings("ignore", message=r"(?s).*quantiz.*deprecated")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, int8_linears(model), dtype=torch.qint8)


class Predictor(BasePredictor):
    """A fine-tuned model run by torch (formats ``torch``, ``torch-bf16``,
    ``torch-int8``)."""

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        max_length: int | None = None,
        format: str | None = None,
        *,
        task: TaskType,
    ) -> None:
        super().__init__(
            tokenizer,
            labels,
            _max_length(
                getattr(model.config, "max_position_embeddings", None),
                getattr(tokenizer, "model_max_length", None),
                max_length,
            ),
            task=task,
        )
        self.model = model.eval()
        self.device = device
        self.amp_dtype = amp_dtype
        self.format = format or ("torch-bf16" if amp_dtype is torch.bfloat16 else "torch")

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str | Precision = "auto",
        num_threads: int | None = None,
        int8: bool = False,
        *,
        task: TaskType,
    ) -> Predictor:
        """Load a model folder written by ``train_model`` (safetensors weights only) as a
        model of type ``task`` (its auto class; the caller reads the type from the
        folder's config).

        ``int8`` quantizes every ``nn.Linear`` dynamically when loading (the
        ``torch-int8`` format; CPU only, fp32 activations around int8 matmuls).
        """
        from transformers import AutoTokenizer  # heavy: loaded only with a model

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
        dev = pick_device(device)
        amp = autocast_dtype(dev, precision)
        if int8 and (dev.type != "cpu" or amp is not None):
            raise ConfigError(
                f"torch-int8 runs on the CPU in fp32 around int8 matmuls; got {dev}, "
                f"{precision_name(amp)}"
            )
        if dev.type == "cpu" and num_threads:
            torch.set_num_threads(num_threads)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = (
            task.auto_class()
            .from_pretrained(str(path), use_safetensors=True, dtype=torch.float32)
            .to(dev)
        )
        labels = read_labels(path, model.config.num_labels, model.config.id2label)
        fmt = None
        if int8:
            model, fmt = quantize_int8(model.eval()), "torch-int8"
        log.info("loaded %s on %s (%s, %s)", path, dev, fmt or precision_name(amp), task.name.value)
        return cls(model, tokenizer, labels, dev, amp, format=fmt, task=task)

    @torch.inference_mode()
    def _probs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        batch = {
            k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in arrays.items()
        }
        with autocast(self.device, self.amp_dtype):
            logits = self.model(**batch).logits
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Probabilities per text, shape ``[len(texts), len(labels)]``, in input order."""
        return super().predict_proba(texts, batch_size=batch_size)

    @torch.inference_mode()
    def predict_token_proba(self, texts: Sequence[str], batch_size: int = 128) -> list[TokenProbs]:
        """Per text, its tokens' probabilities and character offsets, in input order."""
        return super().predict_token_proba(texts, batch_size=batch_size)


# ONNX Runtime graph optimizations left out of every session: SkipLayerNormFusion
# makes residual Add + LayerNormalization one SkipLayerNormalization, whose CPU kernel
# (1.32) ran 7x slower than the two ops on our shapes (2.4 vs 0.34 ms for [32, 45, 384],
# one thread); without it the existing unfused int8 graph ran 1.18x faster in batches
# of 32 and 1.15x at batch 1 (interleaved, one thread, AVX-512 VNNI CPU).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def ort_session(onnx_path: str | Path, num_threads: int | None = None):
    """An ONNX Runtime CPU session on ``onnx_path`` (a graph as exported, fused or not):
    all graph optimizations on but :data:`DISABLED_OPTIMIZERS`, ``num_threads``
    intra-op threads (default: ONNX Runtime's, one per physical core) that do not spin
    while idle, one inter-op thread (a BERT graph is a chain: nothing runs side by side)."""
    import onnxruntime as ort  # heavy: loaded only for the ONNX formats

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(num_threads or 0)
    options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning. Spinning workers take the CPU the
    # event loop, the tokenizer and torch's threads need: on 2 cores (one process per
    # setting, alternated 3 times) spinning off gave 1.1-2.3x the batch-32 throughput
    # with 12-47% less CPU per batch, at load 1.5 and at load 4 alike; it cost batch-1
    # latency when a core was free (p50 2.1 vs 1.6 ms at load 1.5, within 5% at load 4).
    # In one process with torch (benchmarks/bench_formats.py) spinning ONNX Runtime
    # threads slowed the pipeline's batch-1 p50 from 7 to 337 ms (two quick runs, load
    # 2-3). force_spinning_stop (spin within a call only) was slower than either.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Memory patterns (on by default) and ORT_ENABLE_ALL are kept: turning either off
    # changed nothing measurable on the fused or the unfused graph.
    options.log_severity_level = 3  # errors only: the optimizer's notes are not news
    return ort.InferenceSession(
        str(onnx_path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


class OnnxPredictor(BasePredictor):
    """A fine-tuned model exported to ONNX, run by ONNX Runtime on the CPU (formats
    ``onnx`` and ``onnx-int8``); tokenizer and labels from the model folder. The
    graph's output is ``[batch, labels]``, or ``[batch, sequence, labels]`` for a
    model that answers per token."""

    def __init__(
        self,
        session,
        tokenizer,
        labels: list[str],
        max_length: int,
        format: str,
        *,
        task: TaskType,
    ):
        super().__init__(tokenizer, labels, max_length, task=task)
        self.session = session
        self.format = format
        self._inputs = [i.name for i in session.get_inputs()]
        outputs = session.get_outputs()
        if len(outputs[0].shape) != (3 if self.per_token else 2):
            want = "[batch, sequence, labels]" if self.per_token else "[batch, labels]"
            raise ValueError(
                f"ONNX model output {outputs[0].name} is not {want} ({task.name.value})"
            )
        self._output = outputs[0].name

    @classmethod
    def from_files(
        cls,
        onnx_path: str | Path,
        model_dir: str | Path,
        format: str = "onnx",
        num_threads: int | None = None,
        *,
        task: TaskType,
    ) -> OnnxPredictor:
        """``onnx_path`` (see :func:`slmops.tasks.model.export.export_onnx`) with the
        tokenizer, labels and length limit of the fine-tuned ``model_dir`` (of type
        ``task``) it was exported from."""
        from transformers import AutoConfig, AutoTokenizer  # heavy: loaded only with a model

        model_dir, onnx_path = Path(model_dir), Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path}: no such ONNX model")
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a model folder (no config.json)")
        config = AutoConfig.from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        labels = read_labels(model_dir, config.num_labels, config.id2label)
        session = ort_session(onnx_path, num_threads)
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(labels):
            raise ValueError(f"{onnx_path}: {width} outputs but {len(labels)} labels")
        limit = _max_length(
            getattr(config, "max_position_embeddings", None),
            getattr(tokenizer, "model_max_length", None),
        )
        log.info("loaded %s (%s, ONNX Runtime)", onnx_path, format)
        return cls(session, tokenizer, labels, limit, format, task=task)

    def _probs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: arrays[name] for name in self._inputs}
        (logits,) = self.session.run([self._output], feeds)
        return softmax(logits)


def load_predictor(
    fmt: str,
    model_dir: str | Path,
    onnx_path: str | Path | None = None,
    *,
    task: TaskType,
    device: str = "auto",
    precision: str | Precision = "auto",
    num_threads: int | None = None,
) -> BasePredictor:
    """A predictor in format ``fmt`` for the fine-tuned ``model_dir``, a model of type
    ``task`` (whoever loads it reads the type from the folder's config:
    :func:`slmops.tasks.task_types.task_of_model`).

    ``torch`` keeps ``precision`` (autocast on a GPU; fp32 on the CPU by default);
    ``torch-bf16`` forces bf16 autocast; ``torch-int8`` quantizes on load, on
    the CPU; the ONNX formats need ``onnx_path`` and run on the CPU.
    """
    if fmt == "torch":
        return Predictor.from_dir(model_dir, device, precision, num_threads, task=task)
    if fmt == "torch-bf16":
        return Predictor.from_dir(model_dir, device, Precision.bf16, num_threads, task=task)
    if fmt == "torch-int8":
        return Predictor.from_dir(
            model_dir, "cpu", Precision.fp32, num_threads, int8=True, task=task
        )
    if fmt in ONNX_FORMATS:
        if onnx_path is None:
            raise ValueError(f"format {fmt} needs an ONNX file")
        return OnnxPredictor.from_files(onnx_path, model_dir, fmt, num_threads, task=task)
    known = ", ".join((*TORCH_FORMATS, *ONNX_FORMATS))
    raise ConfigError(f"unknown serving format {fmt!r} (known: {known})")
