"""Serving formats: torch fp32 / int8 and ONNX fp32 / int8 (unfused and fused) vs a
``transformers.pipeline``.

Six sides predict with the same model on the CPU, in one process:

- ``pipeline``: ``transformers.pipeline("text-classification", model=<folder>,
  device="cpu", dtype=float32)``, what a user would otherwise run; truncation
  to the same ``max_length`` as our predictors, default ``top_k`` (the top
  label and its score);
- ``torch``, ``torch-int8``, ``onnx``, ``onnx-int8``: the project's predictors,
  :func:`tasks.model.inference.load_predictor` as the service loads them. The ONNX
  graph is exported fresh from the model folder (:func:`tasks.model.export.export_onnx`)
  and quantized with the shipped ``export`` settings
  (:func:`tasks.model.export.quantize_onnx`: ``int8_op_types``, ``int8_per_channel``,
  ``opset``), as promotion does; ``torch-int8`` is quantized when loaded;
- ``onnx-int8-fused``: the same, with ONNX Runtime's transformer fusions applied
  before quantization (:func:`tasks.model.export.fuse_onnx`: attention, embedding
  LayerNorm, bias-GELU). ``export.fusion`` says which of the two int8 sides promotion
  makes, the one the service serves (``served`` in the results): the speed target
  is judged on it, with its batch-1 p50 beside.

**The model**, in order: ``--model-dir`` / ``SLMOPS_BENCH_MODEL_DIR`` (a folder
written by ``slmops train``); else the ``champion`` of the checkout's registry,
downloaded like the service downloads it; else the base model with an
untrained head over the label set (the same cost as a fine-tuned model; its
accuracy figures are meaningless and its accuracy target is not judged).

**Timing**: torch threads and ONNX Runtime intra-op threads = ``os.cpu_count()``.
After a warm-up round, the sides alternate round by round
(:func:`benchmarks.common.alternate`); in each round every side gets the same
texts of the test split: ``singles`` batch-1 predictions, each timed on its own
(latency, tokenization included; the pipeline is given the bare string, its
cheapest single-text path), then ``batches`` calls of 32 texts each
(throughput; the pipeline gets the list with ``batch_size=32``, ours
``predict_proba(texts, batch_size=32)``: one padded batch per call on every
side, so padding is the same). One more entry in the rotation only tokenizes
the same texts, as our predictors do: the part of each call no format speeds up.
Reported: latency p50/p95/p99 (ms, every batch-1 call of every round),
throughput (examples/s, median over rounds) and its ratio to the pipeline's
(median of the per-round ratios) and to torch fp32's.

**Accuracy** on the frozen test split (quick mode: a stratified subset),
:func:`tasks.model.export.accuracy` for every side (the pipeline through a small
adapter), and the drop from torch fp32 in points. **Size on disk**: the
safetensors weights (torch fp32, and torch int8, which is quantized from them
when loaded) or the ``.onnx`` file; the tokenizer files, needed by all, are
left out. **Load peak RSS** (full mode): each side loaded and run on one batch
in a fresh process of its own (:func:`benchmarks.common.run_isolated`), read
as that process's ``VmHWM`` (interpreter and imports included).

``python -m benchmarks.bench_formats [--quick] [--model-dir DIR]`` prints the
payload; ``python -m benchmarks`` records it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import alternate, load_average, median, ratio, run_isolated, target

NAME = "formats"

PIPELINE = "pipeline"
FUSED_INT8 = "onnx-int8-fused"
FORMATS = ("torch", "torch-int8", "onnx", "onnx-int8", FUSED_INT8)
SIDES = (PIPELINE, *FORMATS)
TOKENIZE = "tokenize"  # timed like a side; not a way to serve
DESCRIPTIONS = {
    PIPELINE: "transformers.pipeline, torch fp32",
    "torch": "our predictor, torch fp32",
    "torch-int8": "our predictor, torch dynamic int8 (quantized on load)",
    "onnx": "our predictor, ONNX Runtime fp32",
    "onnx-int8": "our predictor, ONNX Runtime dynamic int8",
    FUSED_INT8: "our predictor, ONNX Runtime dynamic int8 of the fused graph",
}
BATCH = 32
ACCURACY_BATCH = 128  # slmops.tasks.model.export.accuracy's default for our predictors

# Targets of the performance issue ("Serving formats").
MIN_SPEEDUP_VS_PIPELINE = 2.4
MAX_ACCURACY_DROP_PT = 0.5
# CPU features that give int8 dot products their own instructions; without them ONNX
# Runtime and fbgemm emulate them with AVX2 multiply-adds, and int8 gains less.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Budget:
    """How much one mode measures."""

    label: str
    test_per_class: int | None  # rows per class of the test split (None: all of it)
    rounds: int  # interleaved timing rounds
    warmup: int  # rounds run first and discarded
    singles: int  # batch-1 predictions per side per round
    batches: int  # calls of BATCH texts per side per round
    memory: bool  # load peak RSS, each side in a process of its own


# Full: about 3 s per round for all sides on 2 quiet cores; 40 rounds give stable
# medians well within the ~12-minute budget with the accuracy passes over 3,079 rows.
FULL = Budget("full", None, rounds=40, warmup=1, singles=20, batches=4, memory=True)
# Quick: checks that every side runs and what the figures look like (one batch of 32 per
# side per round: noisy); the fresh-process loads (~6 s each) are left to full mode.
QUICK = Budget("quick", 5, rounds=3, warmup=1, singles=5, batches=1, memory=False)


@dataclass(frozen=True)
class Model:
    """The model folder every side loads, and what it is."""

    folder: Path
    description: str
    trained: bool


# --------------------------------------------------------------------------- inputs


def per_class(test: Any, n: int | None, seed: int = 13) -> Any:
    """Up to ``n`` rows of each label, in a fixed random draw (all rows when ``n`` is None)."""
    if n is None:
        return test.reset_index(drop=True)
    shuffled = test.sample(frac=1.0, random_state=seed)
    return shuffled.groupby("label", sort=False).head(n).sort_index().reset_index(drop=True)


def resolve(params: Any, workdir: Path, labels: Sequence[str], model_dir: str | None) -> Model:
    """The model (module doc): a given folder, the registry's champion, or an untrained head."""
    from benchmarks.bench_service import MODEL_DIR_ENV, registry_champion, untrained_model

    model_dir = model_dir or os.environ.get(MODEL_DIR_ENV)
    if model_dir:
        folder = Path(model_dir).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no config.json)")
        return Model(folder, f"model folder {folder}", True)
    if registry_champion(params) is not None:
        from slmops.serving.model_source import RegistrySource, fetch_version

        source = RegistrySource(params)
        ref = source.champion()
        folder = fetch_version(params, ref, source.registry)
        return Model(folder, f"models:/{ref.name}@champion (version {ref.version})", True)
    folder = untrained_model(params, workdir / "untrained", labels)
    return Model(
        folder,
        f"no champion in the registry: {params.train.base_model} with an untrained "
        f"{len(labels)}-label head (same cost as a fine-tuned model; accuracy meaningless)",
        False,
    )


def int8_cpu_flags() -> list[str]:
    """Which of :data:`INT8_FLAGS` this CPU has (from ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return [f for f in INT8_FLAGS if f in flags]
    return []


# --------------------------------------------------------------------------- sides


class PipelineSide:
    """A ``transformers.pipeline`` on torch fp32, with ``predict`` so that
    :func:`tasks.model.export.accuracy` scores it like our predictors."""

    format = PIPELINE

    def __init__(self, folder: Path, max_length: int) -> None:
        import torch
        from transformers import pipeline

        self.pipe = pipeline(
            "text-classification", model=str(folder), device="cpu", dtype=torch.float32
        )
        self.kwargs = {"truncation": True, "max_length": max_length}

    def one(self, text: str) -> Any:
        """One text, as a bare string: the pipeline's cheapest single-text path."""
        return self.pipe(text, **self.kwargs)

    def many(self, texts: Sequence[str], batch_size: int = BATCH) -> list[dict[str, Any]]:
        """The texts as a list, ``batch_size`` per forward pass (padded in input order)."""
        return self.pipe(list(texts), batch_size=batch_size, **self.kwargs)

    def predict(self, texts: Sequence[str], batch_size: int = BATCH) -> list[str]:
        """The top label of each text."""
        return [out["label"] for out in self.many(texts, batch_size)]


def load_side(
    side: str, folder: Path, onnx_files: dict[str, Path], threads: int, max_length: int
) -> Any:
    """``side`` loaded as it is timed: a :class:`PipelineSide` (truncating to our
    predictors' ``max_length``) or our predictor."""
    import torch

    from slmops.tasks.model.inference import load_predictor
    from slmops.tasks.task_types import SequenceClassification

    torch.set_num_threads(threads)
    if side == PIPELINE:
        return PipelineSide(folder, max_length)
    return load_predictor(
        "onnx-int8" if side == FUSED_INT8 else side,
        folder,
        onnx_files.get(side),
        task=SequenceClassification(),
        device="cpu",
        num_threads=threads,
    )


def load_and_predict(
    side: str, folder: str, onnx_files: dict[str, str], threads: int, max_length: int
) -> dict[str, float | None]:
    """Load ``side`` and predict one batch; the seconds that took. Run in a fresh process
    by :func:`benchmarks.common.run_isolated`, which measures its peak memory."""
    quiet_transformers()
    start = time.perf_counter()
    files = {k: Path(v) for k, v in onnx_files.items()}
    obj = load_side(side, Path(folder), files, threads, max_length)
    texts = ["my card has not arrived yet", "how do I top up by bank transfer?"] * (BATCH // 2)
    if isinstance(obj, PipelineSide):
        obj.many(texts)
    else:
        obj.predict_proba(texts, batch_size=BATCH)
    return {"seconds": time.perf_counter() - start}


def calls(side: Any) -> tuple[Callable[[str], Any], Callable[[list[str]], Any]]:
    """The batch-1 and batch-32 calls that are timed for a side."""
    if isinstance(side, PipelineSide):
        return side.one, side.many
    return (
        lambda text: side.predict_proba([text], batch_size=1),
        lambda texts: side.predict_proba(texts, batch_size=BATCH),
    )


def tokenize_calls(tokenizer: Any, max_length: int) -> tuple[Callable, Callable]:
    """Tokenization alone, as our predictors do it (no padding: they pad in numpy)."""
    return (
        lambda text: tokenizer([text], truncation=True, max_length=max_length),
        lambda texts: tokenizer(texts, truncation=True, max_length=max_length),
    )


# --------------------------------------------------------------------------- timing


Plan = list[tuple[list[str], list[list[str]]]]


def plan_rounds(texts: Sequence[str], budget: Budget, seed: int = 0) -> Plan:
    """For every round (warm-up included): its batch-1 texts and its batches of 32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    small = len(texts) < BATCH
    plan: Plan = []
    for _ in range(budget.warmup + budget.rounds):
        singles = [texts[i] for i in rng.choice(len(texts), budget.singles)]
        batches = [
            [texts[i] for i in rng.choice(len(texts), BATCH, replace=small)]
            for _ in range(budget.batches)
        ]
        plan.append((singles, batches))
    return plan


def timed_side(
    one: Callable[[str], Any], many: Callable[[list[str]], Any], plan: Plan
) -> Callable[[], dict[str, Any]]:
    """A side for :func:`alternate`: each call runs the next round of ``plan`` and
    returns its batch-1 latencies (s) and its batch-32 throughput (examples/s)."""
    rounds = iter(plan)

    def side() -> dict[str, Any]:
        singles, batches = next(rounds)
        latencies = []
        for text in singles:
            start = time.perf_counter()
            one(text)
            latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        for batch in batches:
            many(batch)
        seconds = time.perf_counter() - start
        return {"latencies": latencies, "throughput": sum(map(len, batches)) / seconds}

    return side


class Phases:
    """Wall time of the benchmark's phases, in order (where a run's minutes went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Record the time since the previous lap as ``phase``."""
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 1)
        self._last = now


def quiet_transformers() -> None:
    """No progress bars or load reports from transformers in the benchmark's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _round(x: float | None, digits: int) -> float | None:
    return round(x, digits) if x is not None else None


def speed_rows(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Latency percentiles, throughput and its ratios per side, from :func:`alternate`'s samples."""
    from benchmarks.bench_service import latency_ms

    def per_round(side: str, base: str) -> float | None:
        pairs = zip(samples[side], samples[base], strict=True)
        return median([ratio(a["throughput"], b["throughput"]) for a, b in pairs])

    out = {}
    for side, rounds in samples.items():
        out[side] = {
            **latency_ms([x for r in rounds for x in r["latencies"]]),
            "throughput_per_s": _round(median([r["throughput"] for r in rounds]), 1),
            "vs_pipeline": _round(per_round(side, PIPELINE), 3),
            "vs_torch_fp32": _round(per_round(side, "torch"), 3),
        }
    return out


# --------------------------------------------------------------------------- the benchmark


def _mb(paths: Sequence[Path]) -> float:
    return round(sum(p.stat().st_size for p in paths) / 1e6, 1)


def measure(
    model: Model, test: Any, export_cfg: Any, budget: Budget, workdir: Path
) -> dict[str, Any]:
    """Everything in the module doc: the ``results`` of the payload."""
    from slmops.tasks.model.export import ONNX_FILE, export_onnx, quantize_onnx
    from slmops.tasks.model.inference import load_predictor
    from slmops.tasks.task_types import SequenceClassification

    task = SequenceClassification()
    accuracy = task.format_score

    quiet_transformers()
    threads = os.cpu_count() or 1
    folder = model.folder
    clock = Phases()

    fp32 = export_onnx(folder, workdir / "onnx" / ONNX_FILE, export_cfg.opset, task=task)
    fused = export_onnx(
        folder, workdir / "onnx-fused" / ONNX_FILE, export_cfg.opset, task=task, fuse=True
    )
    clock.lap("onnx export")
    onnx_files = {"onnx": fp32}
    for side, graph in (("onnx-int8", fp32), (FUSED_INT8, fused)):
        onnx_files[side] = quantize_onnx(
            graph,
            workdir / side / ONNX_FILE,
            export_cfg.int8_op_types,
            export_cfg.int8_per_channel,
        )
    clock.lap("int8 quantization")
    served = FUSED_INT8 if export_cfg.fusion else "onnx-int8"
    weights = sorted(folder.glob("*.safetensors"))
    sizes = {
        PIPELINE: _mb(weights),
        "torch": _mb(weights),
        "torch-int8": _mb(weights),  # quantized when loaded: the fp32 file is what is stored
        "onnx": _mb([fp32]),
        "onnx-int8": _mb([onnx_files["onnx-int8"]]),
        FUSED_INT8: _mb([onnx_files[FUSED_INT8]]),
    }

    # torch fp32 first: the pipeline truncates to the length our predictors use.
    reference = load_predictor("torch", folder, task=task, device="cpu", num_threads=threads)
    max_length = reference.max_length
    sides: dict[str, Any] = {}
    for side in SIDES:
        sides[side] = (
            reference
            if side == "torch"
            else load_side(side, folder, onnx_files, threads, max_length)
        )
    clock.lap("loading the sides")

    # Accuracy first: it also warms every side up (allocators, kernels, caches).
    accuracies = {
        side: accuracy(obj, test, batch_size=BATCH if side == PIPELINE else ACCURACY_BATCH)
        for side, obj in sides.items()
    }
    clock.lap("accuracy passes")

    plan = plan_rounds(test["text"].astype(str).tolist(), budget)
    fns = {side: timed_side(*calls(obj), plan) for side, obj in sides.items()}
    fns[TOKENIZE] = timed_side(*tokenize_calls(reference.tokenizer, max_length), plan)
    load_before = load_average()
    samples = alternate(fns, budget.rounds, warmup=budget.warmup)
    load_timing = [load_before, load_average()]
    speed = speed_rows(samples)
    clock.lap("timing rounds")

    memory: dict[str, Any] = {}
    if budget.memory:
        paths = {k: str(v) for k, v in onnx_files.items()}
        for side in SIDES:
            iso = run_isolated(load_and_predict, side, str(folder), paths, threads, max_length)
            memory[side] = {
                "load_peak_rss_mb": iso.peak_rss_mb,
                "load_s": round(iso.result["seconds"], 2),
            }
        clock.lap("fresh-process loads")

    ref_acc = accuracies["torch"]
    rows = []
    for side in SIDES:
        rows.append(
            {
                "format": side,
                "runs": DESCRIPTIONS[side],
                **speed[side],
                "accuracy": round(accuracies[side], 4),
                "accuracy_drop_pt": round((ref_acc - accuracies[side]) * 100, 2),
                "size_mb": sizes[side],
                **memory.get(side, {}),
            }
        )
    tok, q8 = speed[TOKENIZE], speed[served]
    tokenization = {
        "batch-1 p50 ms": tok["p50_ms"],
        "batch-32 examples/s": tok["throughput_per_s"],
        # Shares of the int8 side served (export.fusion picks it).
        "share of ONNX int8 batch-1 p50": _round(ratio(tok["p50_ms"], q8["p50_ms"]), 3),
        "share of ONNX int8 batch-32 time": _round(
            ratio(q8["throughput_per_s"], tok["throughput_per_s"]), 3
        ),
        # With a free network a side could go no faster than its tokenizer.
        "ceiling vs pipeline (tokenization only)": tok["vs_pipeline"],
    }
    return {
        "model": model.description,
        "trained": model.trained,
        "test_rows": len(test),
        "rounds": budget.rounds,
        "threads": threads,
        "max_length": max_length,
        "int8_cpu_flags": int8_cpu_flags() or "none",
        # 1-minute load average before and after the timing rounds.
        "load_average_timing": [x[0] if x else None for x in load_timing],
        "formats": rows,
        # The int8 side promotion makes with these export settings: what is served.
        "served": served,
        "tokenization": tokenization,
        "export": {
            "fusion": export_cfg.fusion,
            "opset": export_cfg.opset,
            "int8_op_types": list(export_cfg.int8_op_types or []),
            "int8_per_channel": export_cfg.int8_per_channel,
        },
        "seconds": clock.seconds,
    }


def _rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["format"]: row for row in results.get("formats", [])}


def served_side(results: dict[str, Any]) -> str:
    """The int8 side the service serves (``served``; ``onnx-int8`` in older results)."""
    return results.get("served") or "onnx-int8"


def why_slow(results: dict[str, Any]) -> str:
    """Where ONNX int8's speed-up over the pipeline comes from, and what limits it."""
    rows = _rows(results)
    tok = results.get("tokenization", {})
    thr = {k: r["throughput_per_s"] for k, r in rows.items()}
    parts = [
        # Ratios of medians, so that the three steps multiply to the whole.
        f"step by step, our torch predictor runs {ratio_text(thr['torch'], thr[PIPELINE])}x "
        f"the pipeline, ONNX Runtime fp32 {ratio_text(thr['onnx'], thr['torch'])}x torch "
        f"fp32 and int8 {ratio_text(thr[served_side(results)], thr['onnx'])}x ONNX fp32",
    ]
    share = tok.get("share of ONNX int8 batch-32 time")
    ceiling = tok.get("ceiling vs pipeline (tokenization only)")
    if share is not None and ceiling is not None:
        parts.append(
            f"tokenization takes {share:.0%} of ONNX int8's batch-32 time (tokenizing alone "
            f"runs {ceiling:.0f}x the pipeline's rate)"
        )
    flags = results.get("int8_cpu_flags")
    if not flags or flags == "none":
        parts.append(
            "this CPU has no AVX-512 VNNI, AVX-VNNI or AMX: int8 dot products run as AVX2 "
            "multiply-adds, so int8 matmuls gain far less over fp32 than on a VNNI CPU"
        )
    else:
        parts.append(f"int8 CPU features: {', '.join(flags)}")
    return "; ".join(parts)


def busy_note(results: dict[str, Any]) -> str:
    """A warning when other work shared the cores during the timing rounds, else ``""``."""
    loads = [x for x in results.get("load_average_timing") or [] if x is not None]
    cores = results.get("threads") or 1
    if not loads or max(loads) <= cores / 2:
        return ""
    return (
        f"the machine was busy (1-minute load average up to {max(loads)} on {cores} cores): "
        "torch's OpenMP threads spin at barriers waiting for descheduled peers, which slows "
        "the torch sides (the pipeline included) far more than ONNX Runtime; rerun on a quiet "
        "machine before trusting the ratio"
    )


def ratio_text(a: float | None, b: float | None) -> str:
    """``a / b`` to two decimals, or ``?``."""
    r = ratio(a, b)
    return f"{r:.2f}" if r is not None else "?"


def targets(results: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """The issue's two targets for serving formats, with what was measured."""
    rows = _rows(results)
    served = served_side(results)
    q8, pipe, ref = rows.get(served), rows.get(PIPELINE), rows.get("torch")
    name = "ONNX int8" + (" (fused graph)" if served == FUSED_INT8 else "")
    out = []
    if q8 and pipe:
        x = q8["vs_pipeline"]
        met = x is not None and x >= MIN_SPEEDUP_VS_PIPELINE
        note = (
            f"{served} (served): {q8['throughput_per_s']} vs {pipe['throughput_per_s']} "
            f"examples/s in batches of {BATCH}, median of per-round ratios over "
            f"{results.get('rounds', '?')} interleaved rounds, {results.get('threads')} "
            f"threads; batch-1 p50 {q8['p50_ms']} vs {pipe['p50_ms']} ms"
        )
        other = rows.get(FUSED_INT8 if served == "onnx-int8" else "onnx-int8")
        if other:
            note += (
                f"; {other['format']} (not served): {other['vs_pipeline']}x, batch-1 p50 "
                f"{other['p50_ms']} ms"
            )
        if not met and ref:
            note += "; " + why_slow(results)
        busy = busy_note(results)
        if busy:
            note += "; " + busy
        out.append(
            target(
                f"{name} throughput vs transformers.pipeline (torch fp32)",
                f">= {MIN_SPEEDUP_VS_PIPELINE:g}x",
                f"{x}x" if x is not None else None,
                met,
                note,
            )
        )
    if q8 and ref:
        drop = q8["accuracy_drop_pt"]
        rows_text = f"{results.get('test_rows')} test rows"
        if not results.get("trained", False):
            met, why = None, f"not judged: the model is untrained ({rows_text})"
        elif quick:
            met, why = None, f"not judged in quick mode: a stratified subset of {rows_text}"
        else:
            # A hair of slack for float rounding, as the export eligibility rule has.
            met, why = drop <= MAX_ACCURACY_DROP_PT + 1e-9, f"on all {rows_text}"
        out.append(
            target(
                f"{name} accuracy drop vs torch fp32",
                f"<= {MAX_ACCURACY_DROP_PT:g} pt",
                f"{drop} pt",
                met,
                f"{why}; {served} {q8['accuracy']:.4f} vs torch fp32 {ref['accuracy']:.4f} "
                f"({results.get('model')})",
            )
        )
    return out


NOTES = [
    "All six sides load the same model folder and run in one process on the CPU, "
    "alternating round by round after a warm-up round, with the same texts in each round; "
    "torch and ONNX Runtime use os.cpu_count() threads.",
    "Latency: one text per call, tokenization included (the pipeline gets the bare string, "
    "its cheapest path). Throughput: calls of 32 texts, one padded batch each on every side "
    "(our predictors would also sort longer lists by length; this comparison does not use "
    "that). Percentiles pool every call of every round; throughput is the median over rounds.",
    "Sizes are the weights on disk (safetensors or .onnx), tokenizer files excluded; torch "
    "int8 is quantized from the fp32 safetensors when loaded, so that file is what it stores. "
    "load_peak_rss_mb (full mode) is a fresh process's VmHWM after loading and predicting "
    "one batch (interpreter, torch and transformers imports included: the ONNX predictors "
    "import them too, for the tokenizer).",
]


def run(quick: bool, model_dir: str | None = None, budget: Budget | None = None) -> dict:
    """The payload the harness records: ``results``, ``targets``, ``notes``, ``settings``."""
    from benchmarks.bench_service import bench_params
    from slmops.tasks.data.dataset import load_label_set, read_test

    budget = budget or (QUICK if quick else FULL)
    quiet_transformers()
    workdir = Path(tempfile.mkdtemp(prefix="slmops-bench-formats-"))
    try:
        # The checkout's registry, but any download lands in workdir.
        params = bench_params(workdir / "params", {})
        test = per_class(read_test(params), budget.test_per_class)
        model = resolve(params, workdir, load_label_set(params), model_dir)
        results = measure(model, test, params.export, budget, workdir)
    finally:
        if not os.environ.get("SLMOPS_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "results": results,
        "targets": targets(results, quick),
        "notes": NOTES,
        "settings": {**asdict(budget), "batch_size": BATCH, "accuracy_batch": ACCURACY_BATCH},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_formats``: the payload as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_formats")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model-dir", help="a model folder (env SLMOPS_BENCH_MODEL_DIR)")
    ns = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(run(ns.quick, ns.model_dir), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
