"""What every benchmark uses: the machine description, interleaved comparisons,
robust summaries, peak memory and the result files.

Conventions (``benchmarks/README.md`` has the long form):

- A benchmark module ``benchmarks/bench_<x>.py`` exposes ``NAME`` and
  ``run(quick) -> dict``; the dict has ``results`` (tables, see
  :mod:`benchmarks.report`), ``targets`` (made with :func:`target`) and
  optionally ``notes`` (a list of sentences) and ``settings``.
- Every comparison runs its sides in the same process, interleaved
  (:func:`alternate`: A, B, C, A, B, C, ...), so a slow minute on a shared
  machine hits every side alike; figures are medians, comparisons ratios.
- Peak memory of one side is measured in a process of its own
  (:func:`run_isolated`): a peak only ever grows, so sides measured in one
  process would each report the largest peak so far.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Quick runs go to their own folder: `make bench-quick` (CI) must not overwrite the
# committed results of a full run.
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"

# Distributions whose versions describe a result (importlib.metadata names).
LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "onnxruntime",
    "mlflow",
    "prefect",
    "dvc",
    "great-expectations",
    "fastapi",
    "uvicorn",
    "numpy",
)

# CPU flags that decide which kernels torch can use (bf16 matmuls need avx512_bf16 or amx).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")

# Set in every benchmark process: nothing may reach the network (docs/architecture.md).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",  # MLflow reads only "true"
}


# --------------------------------------------------------------------------- machine


def _cpuinfo() -> dict[str, Any]:
    model, flags = platform.processor() or None, set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"model": model, "flags": []}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags]}


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The machine and software a result was measured on.

    CPU model and the flags that matter for kernels, cores, torch's thread count
    and CPU capability, RAM, the GPU (``None`` without CUDA), the OS, Python and
    the versions of the libraries involved (``None``: not installed).
    """
    cpu = _cpuinfo()
    info: dict[str, Any] = {
        "cpu": cpu["model"],
        "cpu_flags": cpu["flags"],
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "gpu": None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        info["torch_threads"] = None
    return info


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages: how busy the machine was around a measurement."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- comparisons


def alternate(
    fns: dict[str, Callable[[], T]], rounds: int, *, warmup: int = 0
) -> dict[str, list[T]]:
    """Run the sides interleaved, ``rounds`` times: A, B, C, A, B, C, ...

    Each call's return value (a time, a figure, or a dict of figures) is one
    sample. ``warmup`` extra rounds run first, interleaved the same way, and are
    discarded (first-call costs: lazy imports, allocator growth, caches).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    samples: dict[str, list[T]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            value = fn()
            if r >= warmup:
                samples[name].append(value)
    return samples


class Attempts:
    """Runs a benchmark's parts so that one that fails does not hide the others:
    ``attempts(key, fn)`` is ``fn()``, or None with the error kept in ``errors[key]``;
    every part's wall time goes to ``seconds[key]``."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, key: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None when it raised (the error recorded under ``key``)."""
        start = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # one failed measurement must not hide the others
            self.errors[key] = f"{type(exc).__name__}: {exc}"[-3000:]
            return None
        finally:
            self.seconds[key] = round(time.perf_counter() - start, 1)

    def record(self, results: dict[str, Any]) -> dict[str, Any]:
        """``results`` with each part's seconds, the load average now and any errors."""
        results["seconds_per_part"] = self.seconds
        results["load_average_after"] = load_average()
        if self.errors:
            results["errors"] = self.errors
        return results


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    """``fn`` as a side for :func:`alternate` whose sample is its wall time in seconds."""

    def side() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return side


def _values(xs: Sequence[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and not math.isnan(x)]


def median(xs: Sequence[float | None]) -> float | None:
    """The median of the samples (``None`` and NaN ignored; ``None`` if nothing is left)."""
    values = _values(xs)
    return statistics.median(values) if values else None


def percentile(xs: Sequence[float | None], p: float) -> float | None:
    """The ``p``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    values = sorted(_values(xs))
    if not values:
        return None
    pos = (len(values) - 1) * p / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def percentiles(xs: Sequence[float | None], ps: Sequence[float] = (50, 95, 99)) -> dict:
    """``{"p50": ..., "p95": ..., "p99": ...}`` for the samples."""
    return {f"p{p:g}": percentile(xs, p) for p in ps}


def summary(xs: Sequence[float | None]) -> dict[str, Any]:
    """Median, min, max and count of the samples: what a results table shows of them."""
    values = _values(xs)
    return {
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "n": len(values),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; ``None`` when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def target(what: str, goal: str, measured: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    """One entry of a payload's ``targets``: ``met`` is ``None`` when not measured,
    and ``note`` says why (always give one when the target is not met)."""
    return {"what": what, "target": goal, "measured": measured, "met": met, "note": note}


def matmul_gflops(
    dtype: str = "float32",
    n: int = 2048,
    *,
    device: str = "cpu",
    min_seconds: float = 1.0,
    max_seconds: float = 60.0,
) -> float:
    """Measured ``n x n`` matmul speed in GFLOP/s for ``dtype`` on ``device``.

    The practical ceiling for dense work in that precision: a model's tokens/s
    limit is this divided by its FLOPs per token. One untimed warm-up call, then
    calls until ``min_seconds`` have passed (at least one); ``max_seconds`` stops
    early where a dtype has no fast kernels (bf16 on a CPU without AVX-512 BF16
    takes tens of seconds per 2048² matmul).
    """
    import torch

    dt = getattr(torch, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).to(dt)
    b = torch.randn(n, n, generator=gen, device=device).to(dt)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    a @ b
    sync()
    warmup = time.perf_counter() - start
    calls, elapsed = 0, 0.0
    while calls == 0 or (elapsed < min_seconds and elapsed + warmup < max_seconds):
        start = time.perf_counter()
        a @ b
        sync()
        elapsed += time.perf_counter() - start
        calls += 1
    return 2 * n**3 * calls / elapsed / 1e9


# --------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    ``VmHWM`` of its own address space, not ``ru_maxrss``: Linux folds the
    forked image's peak into a spawned child's ``ru_maxrss`` at exec, so a
    child of a large process would report its parent's memory as its own.
    ``ru_maxrss`` only where ``/proc`` is unreadable.
    """
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mb() -> float:
    """The largest peak resident memory of this process's waited-for children, in MiB.

    The maximum over all of them, not a sum, and only of children that have
    exited and been waited for.
    """
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def rss_mb(pid: int | None = None) -> float | None:
    """The current resident memory of ``pid`` (default: this process), in MiB."""
    try:
        status = Path(f"/proc/{pid or os.getpid()}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


@dataclass
class Peak:
    """The peak resident memory seen by :func:`sample_peak_rss` (``None``: no sample)."""

    mb: float | None = None


@contextmanager
def sample_peak_rss(pid: int | None = None, interval_s: float = 0.05) -> Iterator[Peak]:
    """Sample ``pid``'s resident memory every ``interval_s`` while the block runs.

    For a block of this process or a process that keeps running (a server),
    where ``ru_maxrss`` cannot tell one block's peak from the process's. It can
    miss spikes shorter than the interval.
    """
    peak = Peak()
    stop = threading.Event()

    def sample() -> None:
        while True:
            mb = rss_mb(pid)
            if mb is not None and (peak.mb is None or mb > peak.mb):
                peak.mb = mb
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        sample_once = rss_mb(pid)
        if sample_once is not None and (peak.mb is None or sample_once > peak.mb):
            peak.mb = sample_once


@dataclass
class Isolated:
    """What :func:`run_isolated` returns: the function's result, its process's peak
    resident memory (MiB) and the call's wall time (seconds, process start excluded)."""

    result: Any
    peak_rss_mb: float
    seconds: float


def _call_measured(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, float, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    return result, peak_rss_mb(), seconds


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Isolated:
    """Call ``fn(*args, **kwargs)`` in a fresh process and measure its peak memory.

    The process is started with ``spawn`` (nothing inherited from this one's
    memory), so its peak (``VmHWM``) is this call's alone: the interpreter,
    the imports the call makes and what it allocates. ``fn`` and its arguments
    must be picklable (a module-level function) and so must its result.
    Exceptions in the child are raised here.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result, peak, seconds = pool.submit(_call_measured, fn, args, kwargs).result()
    return Isolated(result, round(peak, 1), seconds)


# --------------------------------------------------------------------------- results


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def results_dir(quick: bool) -> Path:
    """Where results of a full (``benchmarks/results``) or quick run are written."""
    return QUICK_RESULTS_DIR if quick else RESULTS_DIR


def command_line() -> str:
    """The command that produced a result: the runner passes its own in
    ``SLMOPS_BENCH_COMMAND``; else this process's command line."""
    return os.environ.get("SLMOPS_BENCH_COMMAND") or " ".join(
        ["python", *[a for a in sys.argv if a]]
    )


def write_result(
    name: str,
    payload: dict[str, Any],
    *,
    quick: bool,
    started: str | None = None,
    command: str | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Write ``<results>/<name>.json``: the payload (``results``, ``targets``, ``notes``,
    ...) with the name, command, mode, machine, load average and times around it."""
    record = {
        "name": name,
        "command": command or command_line(),
        "quick": quick,
        "machine": machine(),
        "started": started or now_iso(),
        "finished": now_iso(),
        "load_average_after": load_average(),
        **{k: v for k, v in payload.items() if k not in ("name", "command", "quick")},
    }
    record.setdefault("results", {})
    record.setdefault("targets", [])
    out = Path(out_dir) if out_dir is not None else results_dir(quick)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(record, indent=2, ensure_ascii=False, default=_json_default) + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)
    return path


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in payloads; write them as plain values.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
