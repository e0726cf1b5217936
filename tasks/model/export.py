"""Serving formats: export a fine-tuned model, check each format on the test split,
choose the one to serve, and store them with the registered version.

At promotion (:func:`slmops.tasks.pipeline.promote.export_version`, the ``retrain``
flow's ``export`` step) the promoted version is exported before the ``champion``
alias moves, so the service never sees a champion without its formats:

- ``onnx``: ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``:
  the dynamo one needs onnxscript) of the model with transformers' eager attention,
  dynamic batch and sequence axes, checked against torch on a few texts before
  anything else uses it; with ``export.fusion``, ONNX Runtime's transformer
  optimizer then fuses it (:func:`fuse_onnx`: attention, embedding LayerNorm,
  bias-GELU, LayerNorm) and the fused graph is checked against torch again;
- ``onnx-int8``: ONNX Runtime dynamic quantization of that graph, int8 weights
  (``QInt8``) of the op types in ``export.int8_op_types`` (and their fused
  counterparts, :data:`FUSED_OP_TYPES`);
- ``torch-int8`` and ``torch-bf16``: nothing to store (int8 is quantized from the
  fp32 safetensors when loaded, see :func:`tasks.model.inference.quantize_int8`; bf16
  is autocast), but their accuracy is checked all the same. ``torch-bf16`` is
  checked only on a CPU with native bf16: elsewhere torch emulates it.

Every format's accuracy on the frozen test split is measured (torch fp32's is
the version's own evaluation when it was made on the same split), and each is
timed briefly, interleaved: batch-1 latency (tokenization included) and
batch-32 throughput. **The choice** (``serve.format: auto``): among the formats
whose accuracy is at most ``export.max_accuracy_drop`` below torch fp32 (torch
fp32 itself always qualifies), the fastest by the geometric mean of its
batch-1 and batch-32 speed-ups over torch fp32; formats within
``export.speed_tolerance`` of the fastest count as equally fast and
``export.preference`` decides between them, so timing noise on a busy machine
does not flip the choice. With ``export.measure: false`` the first eligible
format of ``export.preference`` is chosen.

Token classifiers (NER) go through the same steps: the ONNX graph's output is
``[batch, sequence, tags]`` (batch and sequence axes dynamic), and each format
is scored by **entity micro-F1** (strict spans, the token type's ``entity_report``)
on the test rows instead of accuracy. The ``accuracy`` fields (``FormatCheck``,
``reference``, the ``format.<format>.accuracy`` tags) and
``export.max_accuracy_drop`` keep their names and then hold and bound that F1;
``formats.json`` says which in ``metric`` (``accuracy`` or ``entity_f1``).

Stored on the version's run: ``formats/formats.json`` (accuracy, size on disk,
latency and throughput per format, the choice and why) and
``formats/<format>/model.onnx``; on the version, the tags ``format.chosen``,
``format.export`` (``ok`` / ``failed``), ``format.<format>.accuracy`` and
``format.<format>.size_mb``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from slmops.tasks.core.config import ExportConfig, Params, ServeFormat
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.model.inference import (
    ONNX_FORMATS,
    BasePredictor,
    load_predictor,
    ort_session,
)
from slmops.tasks.model.runtime import native_bf16, softmax

log = logging.getLogger(__name__)

FORMATS_DIR = "formats"  # artifact folder of the version's run
FORMATS_FILE = "formats.json"
ONNX_FILE = "model.onnx"
REFERENCE = ServeFormat.torch.value  # torch fp32: what every other format is compared with
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TIMING_BATCH = 32
EXPORT_STATUS_TAG = "format.export"
CHOSEN_TAG = "format.chosen"
# Probabilities of the exported graph and of torch on the same texts may differ by
# float rounding only; more means the export is wrong.
ONNX_TOLERANCE = 1e-3
# Architectures (config.model_type) whose graphs ONNX Runtime's "bert" optimizer fuses;
# others are exported unfused.
FUSABLE_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "electra"})
# A fused graph keeps the linear layers' weights in Attention (Q, K and V together)
# and the embedding tables in EmbedLayerNormalization: quantizing MatMul or Gather
# quantizes those too, so export.int8_op_types means the same on either graph.
FUSED_OP_TYPES = {"MatMul": ("Attention",), "Gather": ("EmbedLayerNormalization",)}


class ModelFilesError(RuntimeError):
    """A downloaded model version is not laid out as ``slmops register`` logs it."""


# --------------------------------------------------------------------------- versions on disk


def model_folder(root: Path) -> Path:
    """The folder holding config.json and the weights, from the MLmodel file."""
    binary = "model"
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        flavor = (meta.get("flavors") or {}).get("transformers") or {}
        binary = flavor.get("model_binary") or binary
    folder = root / binary
    if not (folder / "config.json").is_file():
        raise ModelFilesError(
            f"{root}: no {binary}/config.json; not a transformers-flavour model "
            "(register versions with `slmops register`)"
        )
    return folder


def arrange_model_folder(root: Path) -> Path:
    """Make a downloaded version loadable as one model folder; return that folder.

    The transformers flavour keeps the tokenizer in ``components/tokenizer``;
    it is copied beside the weights. Weights are safetensors only: a version
    without them is refused rather than unpickled.
    """
    folder = model_folder(root)
    if not any(folder.glob("*.safetensors")):
        raise ModelFilesError(f"{folder}: no safetensors weights; refusing to load pickled weights")
    tokenizer = root / "components" / "tokenizer"
    if tokenizer.is_dir():
        for item in tokenizer.iterdir():
            target = folder / item.name
            # Copies, not links: the folder stays valid if moved or copied.
            if item.is_file() and not target.exists():
                shutil.copy2(item, target)
    if not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt", "tokenizer.model")):
        raise ModelFilesError(f"{root}: no tokenizer files in {folder} or components/tokenizer")
    return folder


# --------------------------------------------------------------------------- export


class _Logits(torch.nn.Module):
    """The classifier (sequence or token) with positional inputs and the logits as its
    only output:
    what the TorchScript exporter traces, whatever the model's forward signature."""

    def __init__(self, model, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def export_onnx(
    model_dir: str | Path,
    dest: str | Path,
    opset: int = 17,
    *,
    task: TaskType,
    fuse: bool = False,
) -> Path:
    """Export the fine-tuned ``model_dir`` (a model of type ``task``) to ONNX fp32 at
    ``dest``; return ``dest``.

    Inputs are the tokenizer's (``input_ids``, ``attention_mask`` and, for BERT,
    ``token_type_ids``) with dynamic batch and sequence axes; the output is
    ``logits`` ``[batch, labels]``, or ``[batch, sequence, tags]`` for a model that
    answers per token (both axes dynamic). The graph is checked with
    ``onnx.checker`` and against torch on a few padded texts. With ``fuse``, the
    checked graph is then fused (:func:`fuse_onnx`) and checked against torch again;
    a fusion that fails that check leaves the unfused graph (logged).
    """
    # onnx and transformers are heavy: loaded only when exporting
    import onnx
    from transformers import AutoTokenizer

    model_dir, dest = Path(model_dir), Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # Eager attention: the same result as SDPA, but a graph without SDPA's NaN guard
    # (IsNaN/Where after every softmax), cheaper as it is and the pattern ONNX Runtime's
    # attention fusion recognises (it matches transformers 5's eager mask).
    model = (
        task.auto_class()
        .from_pretrained(
            str(model_dir),
            use_safetensors=True,
            dtype=torch.float32,
            attn_implementation="eager",
        )
        .eval()
    )
    # A model that answers per token has the sequence axis in its output too.
    logits_axes = {0: "batch", 1: "sequence"} if task.per_token else {0: "batch"}
    sample = ["my card has not arrived yet, what should I do?", "top up"]
    encoded = tokenizer(sample, padding=True, return_tensors="pt")
    names = tuple(n for n in INPUT_NAMES if n in encoded)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode():
        # The tracer warns about Python branches on shapes in transformers' mask code;
        # the check against torch below is what tells whether the graph is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            # eval() on the wrapper too: the exporter restores the wrapper's mode
            # afterwards, recursively, and a new module starts in training mode.
            _Logits(model, names).eval(),
            tuple(encoded[n] for n in names),
            str(dest),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                "logits": logits_axes,
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(dest))
    # Another batch shape than the traced one, so a baked-in shape would show; one
    # text alone too (no padding: a fused graph takes another path for it).
    check = [*sample, "how do I change my PIN? " * 6]
    diff = max(_torch_diff(dest, model, tokenizer, texts) for texts in (check, check[:1]))
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"{dest}: ONNX and torch probabilities differ by {diff:.2e}")
    log.info("exported %s (opset %d, max probability difference %.1e)", dest, opset, diff)
    if fuse:
        _fuse_checked(dest, model, tokenizer, check)
    return dest


def _torch_diff(path: Path, model, tokenizer, texts: list[str]) -> float:
    """Largest difference between the probabilities of the graph at ``path`` and of
    ``model`` on ``texts``, padded as one batch."""
    session = ort_session(path)
    names = [i.name for i in session.get_inputs()]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    got = softmax(session.run(["logits"], {n: enc[n].astype(np.int64) for n in names})[0])
    with torch.inference_mode():
        want = torch.softmax(
            model(**{n: torch.from_numpy(enc[n].astype(np.int64)) for n in names}).logits, -1
        ).numpy()
    return float(np.abs(got - want).max())


def _fuse_checked(path: Path, model, tokenizer, check: list[str]) -> None:
    """Fuse the checked graph at ``path`` in place (:func:`fuse_onnx`) if the fused
    graph matches torch on ``check`` (padded, and one text alone); else keep it as is."""
    config = model.config
    if config.model_type not in FUSABLE_MODEL_TYPES:
        log.warning(
            "%s: no ONNX Runtime fusion for %s models; kept unfused", path, config.model_type
        )
        return
    fused = path.with_name(f"{path.stem}.fused{path.suffix}")
    try:
        counts = fuse_onnx(path, fused, config.num_attention_heads, config.hidden_size)
        diff = max(_torch_diff(fused, model, tokenizer, t) for t in (check, check[:1]))
    except Exception as exc:  # an optimizer failure must not cost the export
        log.warning("%s: fusion failed (%s); kept unfused", path, exc)
        fused.unlink(missing_ok=True)
        return
    if diff > ONNX_TOLERANCE:
        log.warning("%s: fused graph differs from torch by %.2e; kept unfused", path, diff)
        fused.unlink()
        return
    fused.replace(path)
    log.info("fused %s (%s; max probability difference %.1e)", path, counts, diff)


def fuse_onnx(
    src: str | Path, dest: str | Path, num_heads: int, hidden_size: int
) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer on the fp32 graph ``src`` (exported with
    eager attention, :func:`export_onnx`), written to ``dest``; the fused operators
    and how many of each.

    Fused: attention (one ``Attention`` op per layer: Q, K, V in one weight, the mask
    as sequence lengths, which our predictors' right padding allows), the embeddings
    and their LayerNorm (``EmbedLayerNormalization``), bias + GELU and LayerNorm.
    Not fused: residual Add + LayerNorm into ``SkipLayerNormalization``, whose CPU
    kernel in ONNX Runtime 1.32 ran 7x slower than Add + LayerNormalization on our
    shapes (2.4 vs 0.34 ms for [32, 45, 384]); :func:`ort_session` keeps ONNX Runtime
    from making it at load too. Offline and deterministic: no download, same graph
    for the same input.
    """
    # The optimizer is heavy and only needed here; importing it puts its folder on sys.path.
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the optimizer logs each step at INFO on the root logger
    try:
        optimized = optimize_model(
            str(src),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,  # the fusions only: ONNX Runtime applies its own when it loads
        )
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        optimized.save_model_to_file(str(dest))
        counts = optimized.get_fused_operator_statistics()
    finally:
        quiet.setLevel(level)
    return {k: v for k, v in counts.items() if v}


def quantize_onnx(
    src: str | Path,
    dest: str | Path,
    op_types: list[str] | None = None,
    per_channel: bool = False,
) -> Path:
    """ONNX Runtime dynamic int8 quantization of ``src`` (int8 weights, ``QInt8``):
    the ``op_types`` (all the quantizer knows when None) and, in a fused graph, their
    fused counterparts (:data:`FUSED_OP_TYPES`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if op_types:
        # Types absent from the graph (the fused ones in an unfused graph) are ignored.
        fused = [f for t in op_types for f in FUSED_OP_TYPES.get(t, ()) if f not in op_types]
        op_types = [*op_types, *fused]
    quiet = logging.getLogger()
    level = quiet.level
    # The quantizer logs a suggestion to pre-process the model at WARNING on the root logger.
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src),
            str(dest),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=per_channel,
            # ONNX shape inference cannot type the outputs of fused (com.microsoft)
            # ops; they are all float here.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        quiet.setLevel(level)
    return dest


# --------------------------------------------------------------------------- checks


@dataclass
class FormatCheck:
    """One format's figures at export."""

    format: str
    accuracy: float | None = None
    accuracy_source: str = "measured"  # or "evaluation": the version's own test metrics
    size_bytes: int | None = None  # on disk; None: nothing stored (quantized when loaded)
    file: str | None = None  # relative to the formats folder
    latency_p50_ms: float | None = None  # batch 1, tokenization included
    latency_p95_ms: float | None = None
    throughput: float | None = None  # examples/s in batches of 32
    speedup: float | None = None  # geometric mean of both speed-ups over torch fp32
    eligible: bool = False  # accuracy within the rule
    note: str = ""


def measure_speed(
    predictors: dict[str, BasePredictor],
    texts: list[str],
    rounds: int,
    per_round: int,
    *,
    task: TaskType,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency (p50/p95, ms) and batch-32 throughput (examples/s, median) per
    predictor, the predictors interleaved round by round so load hits all alike; each
    timed as ``task`` answers (:meth:`~slmops.tasks.core.task_type.TaskType.predict_call`:
    decoding included)."""
    rng = np.random.default_rng(0)
    lat: dict[str, list[float]] = {k: [] for k in predictors}
    thr: dict[str, list[float]] = {k: [] for k in predictors}
    calls = {name: task.predict_call(p) for name, p in predictors.items()}
    for predict in calls.values():  # warm-up: first calls allocate and initialise
        predict(texts[:2], batch_size=1)
        predict(texts[:TIMING_BATCH], batch_size=TIMING_BATCH)
    for _ in range(rounds):
        singles = [texts[i] for i in rng.choice(len(texts), per_round)]
        batch = [texts[i] for i in rng.choice(len(texts), min(TIMING_BATCH, len(texts)))]
        for name, predict in calls.items():
            for text in singles:
                start = time.perf_counter()
                predict([text], batch_size=1)
                lat[name].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            predict(batch, batch_size=TIMING_BATCH)
            thr[name].append(len(batch) / (time.perf_counter() - start))
    return {
        k: {
            "latency_p50_ms": float(np.percentile(lat[k], 50)),
            "latency_p95_ms": float(np.percentile(lat[k], 95)),
            "throughput": float(np.median(thr[k])),
        }
        for k in predictors
    }


def speedup(check: FormatCheck, reference: FormatCheck) -> float | None:
    """Geometric mean of the batch-1 latency and batch-32 throughput speed-ups over
    ``reference`` (None when either side was not timed)."""
    if None in (check.latency_p50_ms, check.throughput, reference.latency_p50_ms):
        return None
    if not reference.throughput or not check.latency_p50_ms:
        return None
    return math.sqrt(
        (check.throughput / reference.throughput)
        * (reference.latency_p50_ms / check.latency_p50_ms)
    )


def choose_format(
    checks: dict[str, FormatCheck],
    preference: list[str],
    speed_tolerance: float = 0.10,
) -> tuple[str, str]:
    """The format to serve and why (module doc): the fastest eligible one, ties
    within ``speed_tolerance`` going to the earlier in ``preference``; without
    timings, the first eligible in ``preference``. torch fp32 when nothing else is."""
    eligible = {k: c for k, c in checks.items() if c.eligible or k == REFERENCE}
    eligible.setdefault(REFERENCE, FormatCheck(REFERENCE))  # always servable
    rank = {f: i for i, f in enumerate(preference)}

    def order(name: str) -> int:
        return rank.get(name, len(rank))

    timed = {k: c.speedup for k, c in eligible.items() if c.speedup is not None}
    if len(timed) == len(eligible) and timed:
        best = max(timed.values())
        ties = sorted((k for k, s in timed.items() if s >= best * (1 - speed_tolerance)), key=order)
        pick = ties[0]
        fastest = max(timed, key=lambda k: timed[k])
        why = f"{pick}: {timed[pick]:.2f}x torch fp32"
        if pick != fastest:
            why += (
                f", within {speed_tolerance:.0%} of the fastest ({fastest}, "
                f"{best:.2f}x) and earlier in export.preference"
            )
        else:
            why += ", the fastest"
        return pick, why + " among the formats within the accuracy rule"
    pick = sorted(eligible, key=order)[0]
    return pick, f"{pick}: the first format of export.preference within the accuracy rule"


def check_formats(
    model_dir: str | Path,
    out_dir: str | Path,
    test: pd.DataFrame,
    cfg: ExportConfig,
    *,
    task: TaskType,
    fp32_accuracy: float | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Export ``cfg.formats`` of ``model_dir`` (a model of type ``task``) into
    ``out_dir``, check each on ``test`` (columns ``text``, ``label``), choose one,
    write ``out_dir/formats.json``; return it.

    Formats are scored by the task type's
    :meth:`~slmops.tasks.core.task_type.TaskType.format_score`: accuracy, or entity
    micro-F1 for a token classifier (``metric`` in the report; ``max_accuracy_drop``
    then bounds the F1 drop). ``fp32_accuracy`` is torch fp32's score on the same rows
    when already known (the version's evaluation); else it is measured here.
    """
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [ServeFormat(f).value for f in cfg.formats]
    checks: dict[str, FormatCheck] = {
        REFERENCE: FormatCheck(
            REFERENCE,
            size_bytes=sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
            note="the fine-tuned safetensors weights",
        )
    }
    onnx_files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="slmops-export-") as tmp:
        if any(f in ONNX_FORMATS for f in wanted):
            # int8 is quantized from the fp32 graph, which is kept only if wanted itself.
            fp32 = Path(tmp) / ONNX_FILE
            export_onnx(model_dir, fp32, cfg.opset, task=task, fuse=cfg.fusion)
            if "onnx" in wanted:
                (out_dir / "onnx").mkdir(exist_ok=True)
                onnx_files["onnx"] = Path(shutil.copy2(fp32, out_dir / "onnx" / ONNX_FILE))
            if "onnx-int8" in wanted:
                onnx_files["onnx-int8"] = quantize_onnx(
                    fp32,
                    out_dir / "onnx-int8" / ONNX_FILE,
                    cfg.int8_op_types,
                    cfg.int8_per_channel,
                )
    for fmt, path in onnx_files.items():
        checks[fmt] = FormatCheck(
            fmt,
            size_bytes=path.stat().st_size,
            file=path.relative_to(out_dir).as_posix(),
            note="ONNX Runtime, fp32" if fmt == "onnx" else "ONNX Runtime, dynamic int8 weights",
        )
    if "torch-int8" in wanted:
        checks["torch-int8"] = FormatCheck(
            "torch-int8", note="nn.Linear quantized to int8 when loaded from the fp32 weights"
        )
    skipped: dict[str, str] = {}
    if "torch-bf16" in wanted:
        if native_bf16():
            checks["torch-bf16"] = FormatCheck("torch-bf16", note="bf16 autocast of the weights")
        else:
            skipped["torch-bf16"] = (
                "not checked: this CPU has no native bf16 (torch emulates it, several times "
                "slower than fp32)"
            )

    predictors: dict[str, BasePredictor] = {}
    for fmt in checks:
        predictors[fmt] = load_predictor(
            fmt, model_dir, onnx_files.get(fmt), task=task, device="cpu", num_threads=num_threads
        )
    for fmt, check in checks.items():
        if fmt == REFERENCE and fp32_accuracy is not None:
            check.accuracy, check.accuracy_source = float(fp32_accuracy), "evaluation"
        else:
            check.accuracy = task.format_score(predictors[fmt], test)
    reference = checks[REFERENCE].accuracy or 0.0
    for check in checks.values():
        # A hair of slack: 0.9094 - 0.005 must admit 0.9044 despite float rounding.
        check.eligible = check.accuracy is not None and (
            check.accuracy >= reference - cfg.max_accuracy_drop - 1e-9
        )
    if cfg.measure:
        timings = measure_speed(
            predictors, test["text"].tolist(), cfg.measure_rounds, cfg.measure_texts, task=task
        )
        for fmt, figures in timings.items():
            for key, value in figures.items():
                setattr(checks[fmt], key, round(value, 3))
        for check in checks.values():
            s = speedup(check, checks[REFERENCE])
            check.speedup = round(s, 3) if s is not None else None
    chosen, reason = choose_format(
        checks, [ServeFormat(f).value for f in cfg.preference], cfg.speed_tolerance
    )
    report = {
        "schema": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "test_rows": len(test),
        "task": task.name.value,
        # What the "accuracy" fields hold: accuracy, or entity micro-F1.
        "metric": task.format_metric,
        "reference": {"format": REFERENCE, "accuracy": reference},
        "rule": {
            "max_accuracy_drop": cfg.max_accuracy_drop,
            "measured": cfg.measure,
            "speed_tolerance": cfg.speed_tolerance,
            "preference": [ServeFormat(f).value for f in cfg.preference],
            "timing": (
                f"{cfg.measure_rounds} interleaved rounds of {cfg.measure_texts} batch-1 "
                f"predictions and one batch of {TIMING_BATCH} per format"
            ),
        },
        "formats": {k: asdict(c) for k, c in checks.items()},
        "skipped": skipped,
        "chosen": chosen,
        "reason": reason,
        "threads": num_threads,
        "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / FORMATS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("formats of %s: %s (%s)", model_dir, chosen, reason)
    return report


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# --------------------------------------------------------------------------- at promotion


def export_threads(params: Params) -> int | None:
    """Threads for the export's checks: ``export.num_threads``, else the serving ones."""
    return params.export.num_threads or params.serve.num_threads or params.train.num_threads
