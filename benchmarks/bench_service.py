"""Service throughput: ``/predict`` with micro-batching on vs off, under load on 127.0.0.1.

What runs where:

- **Three services**, each ``serving.app.run`` (uvicorn, one worker, the
  shipped ``params.yaml``) in its own subprocess, so none shares a GIL with the
  load generator: batching on, batching off, and batching on with the other
  torch thread count (1 when the model uses all cores, else all cores; on two
  cores the model's threads compete with the event loop and the generator,
  so which is faster under load is measured, not assumed). All stay up for
  the whole run; one at a time is under load (an idle service costs no CPU).
  Each logs its predictions to a feedback store of its own in a temporary
  folder (SQLite, WAL: the real write path).
- **The model** both serve (and the in-process measurement loads) is, in
  order: ``--model-dir`` / ``SLMOPS_BENCH_MODEL_DIR`` (a folder written by
  ``slmops train``); else the ``champion`` of this checkout's MLflow registry
  (``params.yaml``'s ``registry``, or ``MLFLOW_TRACKING_URI``), loaded through
  :class:`serving.model_source.RegistrySource`, so in the served format;
  else the base model (``train.base_model``) with an untrained classification
  head over the 77 labels, which costs exactly what a fine-tuned MiniLM costs
  (its answers are meaningless, its speed is not). The results say which.
- **The load generator** is this process: closed-loop clients (``c``
  connections, each sending its next request when the previous answer is in)
  on a minimal HTTP/1.1 keep-alive client over asyncio streams, request bytes
  prepared in advance. Its own ceiling is measured against a trivial HTTP
  server in a subprocess (fixed 200 answer, no framework) and against the
  service's ``GET /health``; its CPU time during every run is recorded.
- **Requests**: one text each (``{"text": ...}``), texts of the frozen test
  split in a fixed shuffled order.

Comparisons alternate (:func:`benchmarks.common.alternate`): at each
concurrency (1, 8, 32), ``rounds`` rounds each run every service for the same
number of requests; at concurrency 1 the in-process latency of the same model
(``predictor.predict_proba([text])`` in this process, same torch threads)
joins the rotation, and at the highest concurrency the same model's in-process
throughput on batches of the sizes the batching-on service formed in the run
just before (its ceiling: what the service would do with no HTTP, no queue and
no logging). Reported: requests/s (median over rounds), latency
p50/p95/p99 (all requests of all rounds), errors, mean batch size (from the
service's ``/stats``), CPU ms per request of the service and the generator.

``python -m benchmarks.bench_service run [--quick] [--model-dir DIR] [...]``
prints the payload; ``python -m benchmarks`` records it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, alternate, median, percentiles, ratio, target
from slmops.serving.background import free_port

NAME = "service"
HOST = "127.0.0.1"
CONCURRENCY = (1, 8, 32)

# Targets. At concurrency 32 the service is held to the model's own ceiling on this
# machine rather than to fixed figures: its throughput against the same model called
# in-process on batches of the sizes the service formed, and its p95 against the
# Little's-law bound (a closed loop of c clients at X requests/s waits c / X on average).
MIN_CEILING_SHARE_C32 = 0.9
MAX_P95_OVER_LITTLE_C32 = 1.5
MAX_C1_OVERHEAD_MS = 1.5

READY_TIMEOUT_S = 300.0
MODEL_DIR_ENV = "SLMOPS_BENCH_MODEL_DIR"


@dataclass(frozen=True)
class Budget:
    """How much load one mode sends."""

    label: str
    requests: dict[int, int]  # concurrency -> requests per side per round
    rounds: int
    warmup: int  # requests per service before measuring, at concurrency 8
    ceiling_requests: int  # generator ceiling runs, at concurrency 32


FULL = Budget(
    label="full",
    requests={1: 400, 8: 1200, 32: 2400},
    rounds=3,
    warmup=200,
    ceiling_requests=5000,
)
QUICK = Budget(
    label="quick",
    requests={1: 60, 8: 160, 32: 320},
    rounds=2,
    warmup=64,
    ceiling_requests=1500,
)


@dataclass(frozen=True)
class Tuning:
    """Service settings to try instead of ``params.yaml``'s (None: as shipped)."""

    threads: int | None = None  # train.num_threads (torch threads of the served model)
    max_batch: int | None = None
    max_wait_ms: float | None = None
    concurrency: tuple[int, ...] = CONCURRENCY

    def overrides(self, batching: bool) -> dict[str, Any]:
        """``params.yaml`` overrides for a service with batching on or off."""
        out: dict[str, Any] = {"serve": {"batching": {"enabled": batching}}}
        if self.max_batch is not None:
            out["serve"]["batching"]["max_batch"] = self.max_batch
        if self.max_wait_ms is not None:
            out["serve"]["batching"]["max_wait_ms"] = self.max_wait_ms
        if self.threads is not None:
            section, key = threads_key()
            out.setdefault(section, {})[key] = self.threads
        return out


def threads_key() -> tuple[str, str]:
    """Where the served model's thread count is set: ``serve.num_threads`` when the
    config has it, else ``train.num_threads`` (what the registry source used before)."""
    from slmops.tasks.core.config import ServeConfig

    if "num_threads" in ServeConfig.model_fields:
        return "serve", "num_threads"
    return "train", "num_threads"


def served_threads(params: Any) -> int | None:
    """The thread count the served model is loaded with (None: all cores)."""
    return getattr(params.serve, "num_threads", None) or params.train.num_threads


# -- statistics --------------------------------------------------------------------------


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 of latencies given in seconds, in milliseconds."""
    out = {}
    for key, value in percentiles([x * 1000.0 for x in seconds]).items():
        out[f"{key}_ms"] = round(value, 3) if value is not None else None
    return out


# -- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Which model the services serve: a folder, or the registry's champion."""

    kind: str  # "folder" | "registry"
    path: str | None
    description: str

    def to_json(self) -> str:
        """The spec as JSON (handed to the service subprocesses)."""
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """The spec back from :meth:`to_json`."""
        return cls(**json.loads(text))


class FolderSource:
    """A :class:`serving.model_source.ModelSource` serving one model folder (torch fp32,
    or bf16 autocast where ``train.precision`` says so)."""

    def __init__(self, folder: Path, params: Any) -> None:
        self.folder = folder
        self.params = params

    def champion(self):
        """The folder as version ``folder`` (it never moves)."""
        from slmops.serving.model_source import ModelRef

        return ModelRef(self.params.registry.model_name, "folder", "")

    def load(self, ref):
        """Load the folder like the registry source loads a version (warm-up included)."""
        from slmops.serving.model_source import WARMUP_TEXT, LoadedModel
        from slmops.tasks.model.inference import Predictor
        from slmops.tasks.task_types import task_of_model

        train = self.params.train
        predictor = Predictor.from_dir(
            self.folder,
            task=task_of_model(self.folder),
            device=train.device,
            precision=train.precision,
            num_threads=served_threads(self.params),
        )
        predictor.predict_proba([WARMUP_TEXT])
        return LoadedModel(
            ref.name, ref.version, ref.run_id, predictor, str(self.folder), self.folder
        )


def model_source(spec: ModelSpec, params: Any):
    """The model source the services (and the in-process measurement) load from."""
    if spec.kind == "folder":
        return FolderSource(Path(spec.path or ""), params)
    from slmops.serving.model_source import RegistrySource

    return RegistrySource(params)


def registry_champion(params: Any) -> str | None:
    """The champion version in the configured registry, or None (never creates a store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri
    if uri.startswith("sqlite:///"):
        # Opening a missing SQLite store would create an empty one in the checkout.
        db = uri.removeprefix("sqlite:///")
        if not (Path(db) if db.startswith("/") else params.path(db)).is_file():
            return None
    from slmops.serving.model_source import RegistrySource

    try:
        return RegistrySource(params).champion().version
    except Exception:  # no champion, no model, registry unreachable: fall back
        return None


def untrained_model(params: Any, folder: Path, labels: Sequence[str]) -> Path:
    """The base model with an untrained head over ``labels``, saved like ``slmops train``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slmops.tasks.model.inference import LABELS_FILE
    from slmops.tasks.model.runtime import resolve_base_model

    base = resolve_base_model(params.train.base_model)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / LABELS_FILE).write_text(json.dumps(list(labels)), encoding="utf-8")
    return folder


def resolve_model(
    params: Any, model_dir: str | None, workdir: Path, labels: Sequence[str]
) -> ModelSpec:
    """The model to serve (module doc): a given folder, the champion, or an untrained head."""
    model_dir = model_dir or os.environ.get(MODEL_DIR_ENV)
    if model_dir:
        folder = Path(model_dir).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no config.json)")
        return ModelSpec("folder", str(folder), f"model folder {folder} (torch)")
    version = registry_champion(params)
    if version is not None:
        name = params.registry.model_name
        return ModelSpec("registry", None, f"models:/{name}@champion (version {version})")
    folder = untrained_model(params, workdir / "untrained", labels)
    return ModelSpec(
        "folder",
        str(folder),
        f"no champion in the registry: {params.train.base_model} with an untrained "
        f"{len(labels)}-label head (torch; same cost as a fine-tuned model)",
    )


def bench_params(workdir: Path, overrides: dict[str, Any]) -> Any:
    """The checkout's ``params.yaml`` with stores moved into ``workdir`` and ``overrides``."""
    from slmops.tasks.core.config import load_params, with_overrides
    from slmops.tasks.registry.tracking import tracking_uri

    params = load_params(REPO / "params.yaml")
    base = {
        # Absolute: the registry stays the checkout's while the rest moves to workdir.
        "registry": {"tracking_uri": tracking_uri(params)},
        "serve": {"poll_seconds": 0, "model_cache_dir": str(workdir / "model-cache")},
        "feedback": {"db_url": f"sqlite:///{workdir / 'feedback.db'}"},
    }
    params = with_overrides(params, base, "benchmark")
    return with_overrides(params, overrides, "benchmark tuning")


# -- processes ---------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        }
    )
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Service:
    """A service subprocess and where it answers."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path


@contextmanager
def started(cmds: dict[str, list[str]], workdir: Path) -> Iterator[dict[str, Service]]:
    """Start the commands (each serves HTTP on the port given in its ``--port``), all at
    once; yield once each answers ``GET /health`` with 200; stop them after."""
    import httpx

    services: dict[str, Service] = {}
    try:
        for name, cmd in cmds.items():
            log = workdir / f"{name}.log"
            port = int(cmd[cmd.index("--port") + 1])
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT
            )
            services[name] = Service(name, proc, f"http://{HOST}:{port}", port, log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for s in services.values():
            while True:
                if s.proc.poll() is not None:
                    tail = s.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{s.name} exited with {s.proc.returncode}:\n{tail}")
                try:
                    if httpx.get(f"{s.url}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{s.name} not ready after {READY_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
        yield services
    finally:
        for s in services.values():
            if s.proc.poll() is None:
                s.proc.send_signal(signal.SIGINT)
        for s in services.values():
            try:
                s.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()


def serve_cmd(spec: ModelSpec, workdir: Path, port: int, overrides: dict[str, Any]) -> list[str]:
    """The command line of one service subprocess."""
    return [
        sys.executable,
        "-m",
        "benchmarks.bench_service",
        "serve",
        "--spec",
        spec.to_json(),
        "--workdir",
        str(workdir),
        "--port",
        str(port),
        "--overrides",
        json.dumps(overrides),
    ]


def serve_main(ns: argparse.Namespace) -> int:
    """A service subprocess: ``serving.app.run`` (as ``slmops serve`` runs it) on the model."""
    import logging

    from slmops.serving.app import run

    logging.basicConfig(level=logging.WARNING)
    workdir = Path(ns.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = bench_params(workdir, json.loads(ns.overrides))
    spec = ModelSpec.from_json(ns.spec)
    run(params, host=HOST, port=ns.port, model_loader=model_source(spec, params))
    return 0


async def _trivial_server(port: int) -> None:
    body = b'{"status":"ok"}'
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GET requests only: no body
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, HOST, port)
    async with server:
        await server.serve_forever()


def trivial_main(ns: argparse.Namespace) -> int:
    """The generator's ceiling target: a fixed 200 answer to every GET, nothing else."""
    with suppress(KeyboardInterrupt):
        asyncio.run(_trivial_server(ns.port))
    return 0


# -- the load generator ------------------------------------------------------------------


@dataclass
class LoadRun:
    """What one closed-loop run measured."""

    concurrency: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: Counter[str] = field(default_factory=Counter)
    generator_cpu_s: float = 0.0
    service_cpu_s: float | None = None

    def summary(self) -> dict[str, Any]:
        """Requests/s, latency percentiles and errors of this run."""
        ok = len(self.latencies)
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": ok,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(ok / self.seconds, 1) if self.seconds > 0 else None,
            **latency_ms(self.latencies),
            "generator_cpu_ms_per_request": round(1000 * self.generator_cpu_s / max(ok, 1), 3),
            "service_cpu_ms_per_request": (
                round(1000 * self.service_cpu_s / max(ok, 1), 3)
                if self.service_cpu_s is not None
                else None
            ),
        }


def post_bytes(port: int, path: str, body: dict[str, Any]) -> bytes:
    """One complete HTTP/1.1 POST request with a JSON body."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    ).encode()
    return head + data


def get_bytes(port: int, path: str) -> bytes:
    """One complete HTTP/1.1 GET request."""
    return f"GET {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\n\r\n".encode()


def _content_length(head: bytes) -> int:
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i < 0:
        raise ValueError("response without content-length")
    end = lower.index(b"\r\n", i + 2)
    return int(lower[i + 17 : end])


async def _client(
    port: int, requests: Sequence[bytes], next_index: Iterator[int], run: LoadRun
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for i in next_index:
            start = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                run.errors[type(exc).__name__] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            elapsed = time.perf_counter() - start
            status = head[9:12].decode()
            if status == "200":
                run.latencies.append(elapsed)
            else:
                run.errors[status] += 1
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
    finally:
        writer.close()


async def _load(
    port: int, requests: Sequence[bytes], n: int, concurrency: int, offset: int
) -> LoadRun:
    run = LoadRun(concurrency, n, 0.0)
    # One shared iterator: whichever client is free takes the next request.
    next_index = iter(range(offset, offset + n))
    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, requests, next_index, run) for _ in range(concurrency)))
    run.seconds = time.perf_counter() - start
    run.generator_cpu_s = time.process_time() - cpu
    return run


def load(
    service: Service | None,
    port: int,
    requests: Sequence[bytes],
    n: int,
    concurrency: int,
    offset: int = 0,
) -> LoadRun:
    """``n`` requests (``requests`` in turn from ``offset``) by ``concurrency`` clients."""
    before = cpu_seconds(service.proc.pid) if service else None
    run = asyncio.run(_load(port, requests, n, concurrency, offset))
    if service is not None and before is not None:
        run.service_cpu_s = cpu_seconds(service.proc.pid) - before
    return run


def in_process(predictor: Any, texts: Sequence[str], offset: int, n: int) -> list[float]:
    """Latency (s) of ``predictor.predict_proba([text])`` for ``n`` texts from ``offset``."""
    out = []
    for i in range(offset, offset + n):
        text = texts[i % len(texts)]
        start = time.perf_counter()
        predictor.predict_proba([text])
        out.append(time.perf_counter() - start)
    return out


def in_process_batches(
    predictor: Any, texts: Sequence[str], offset: int, sizes: Counter[int]
) -> LoadRun:
    """The model's ceiling at given batch sizes: ``predictor.predict_proba`` on ``sizes``
    (batch size -> count, as a service's batcher formed them), texts from ``offset``."""
    batches = [k for k, m in sorted(sizes.items()) for _ in range(m)]
    random.Random(offset).shuffle(batches)  # sizes interleaved, as the service met them
    run = LoadRun(32, sum(batches), 0.0)
    start = time.perf_counter()
    i = offset
    for k in batches:
        t0 = time.perf_counter()
        predictor.predict_proba([texts[j % len(texts)] for j in range(i, i + k)])
        run.latencies.append(time.perf_counter() - t0)
        i += k
    run.seconds = time.perf_counter() - start
    return run


def batch_stats(service: Service) -> dict[str, Any]:
    """The service's micro-batching counters."""
    import httpx

    return httpx.get(f"{service.url}/stats", timeout=10).json()["batching"]


# -- the benchmark -----------------------------------------------------------------------


def test_texts(params: Any, seed: int = 13) -> tuple[list[str], list[str]]:
    """The test split's texts in a fixed shuffled order, and its sorted labels."""
    from slmops.tasks.data.dataset import read_test

    frame = read_test(params)
    texts = frame["text"].astype(str).tolist()
    random.Random(seed).shuffle(texts)
    return texts, sorted(frame["label"].astype(str).unique())


def merge(runs: Sequence[LoadRun]) -> LoadRun:
    """The runs of one side as one (latencies pooled, times and CPU summed)."""
    out = LoadRun(runs[0].concurrency, 0, 0.0, service_cpu_s=0.0)
    for r in runs:
        out.requests += r.requests
        out.seconds += r.seconds
        out.latencies += r.latencies
        out.errors.update(r.errors)
        out.generator_cpu_s += r.generator_cpu_s
        out.service_cpu_s = (out.service_cpu_s or 0.0) + (r.service_cpu_s or 0.0)
    return out


SIDES = {"on": "batching on", "off": "batching off"}
IN_PROCESS_BATCHES = "in-process predict_proba, the service's batch sizes"


def size_counts(stats: dict[str, Any]) -> Counter[int]:
    """``/stats``' histogram of batch sizes (requests per batch -> batches) as a Counter."""
    return Counter({int(k): v for k, v in stats.get("batch_requests", {}).items()})


@dataclass(frozen=True)
class Side:
    """One service configuration under comparison."""

    key: str
    label: str
    overrides: dict[str, Any]
    batching: bool


def sides_for(tuning: Tuning, threads: int) -> list[Side]:
    """Batching on and off as configured; plus batching on with the other sensible torch
    thread count (1 when the model uses several, else all cores) to choose the default."""
    out = [
        Side("on", SIDES["on"], tuning.overrides(True), True),
        Side("off", SIDES["off"], tuning.overrides(False), False),
    ]
    cores = os.cpu_count() or 1
    alt = 1 if threads != 1 else cores
    if cores > 1:
        plural = "s" if alt > 1 else ""
        out.append(
            Side(
                "alt",
                f"batching on, {alt} torch thread{plural}",
                replace(tuning, threads=alt).overrides(True),
                True,
            )
        )
    return out


def measure(budget: Budget, tuning: Tuning, model_dir: str | None, workdir: Path) -> dict[str, Any]:
    """Everything in the module doc: the ``results`` of the payload."""
    parent = bench_params(workdir / "parent", tuning.overrides(True))
    texts, labels = test_texts(parent)
    spec = resolve_model(parent, model_dir, workdir, labels)
    batching = parent.serve.batching
    threads = served_threads(parent) or os.cpu_count() or 1
    sides = sides_for(tuning, threads)
    results: dict[str, Any] = {
        "model": spec.description,
        "budget": budget.label,
        "torch_threads": threads,
        "uvicorn_workers": 1,
        "max_batch": batching.max_batch,
        "chunk_size": getattr(batching, "chunk_size", None),
        "max_wait_ms": batching.max_wait_ms,
        "queue_size": batching.queue_size,
    }

    # 1. The generator's own ceiling: a trivial HTTP server, no framework.
    ceilings: dict[str, Any] = {}
    port = free_port()
    trivial = [sys.executable, "-m", "benchmarks.bench_service", "trivial", "--port", str(port)]
    with started({"trivial server": trivial}, workdir) as svc:
        s = svc["trivial server"]
        req = [get_bytes(s.port, "/health")]
        load(s, s.port, req, 200, 32)
        ceilings["trivial HTTP server, c=32"] = load(
            s, s.port, req, budget.ceiling_requests, 32
        ).summary()

    cmds = {x.key: serve_cmd(spec, workdir / x.key, free_port(), x.overrides) for x in sides}
    with started(cmds, workdir) as services:
        # 2. The framework's ceiling: GET /health of the real service (no model, no store).
        off = services["off"]
        health = [get_bytes(off.port, "/health")]
        load(off, off.port, health, 200, 32)
        ceilings["service GET /health, c=32"] = load(
            off, off.port, health, budget.ceiling_requests, 32
        ).summary()
        results["generator_ceiling"] = ceilings

        requests = {
            key: [post_bytes(s.port, "/predict", {"text": t}) for t in texts]
            for key, s in services.items()
        }
        for key, s in services.items():
            load(s, s.port, requests[key], budget.warmup, 8, offset=len(texts) // 2)

        # 3. The same model in this process, for the concurrency-1 latency and the
        # highest concurrency's ceiling: loaded through the same source, so in the same
        # format as the services serve it.
        source = model_source(spec, parent)
        loaded = source.load(source.champion())
        results["format"] = getattr(loaded, "format", "torch")
        predictor = loaded.predictor
        in_process(predictor, texts, len(texts) // 2, 20)  # warm-up

        # 4. Alternating runs per concurrency.
        rows: list[dict[str, Any]] = []
        speedups: list[dict[str, Any]] = []
        cursor = [0]  # next text: every run gets texts of its own

        def texts_from(n: int) -> int:
            start = cursor[0]
            cursor[0] += n
            return start

        for c in tuning.concurrency:
            n = budget.requests.get(c, max(budget.requests.values()))
            batch_sizes: dict[str, list[float]] = {x.key: [] for x in sides}
            # The batch sizes (size -> count) the batching-on service formed in its last run.
            formed: Counter[int] = Counter()

            def side(x: Side, c: int = c, n: int = n, sizes: dict = batch_sizes, formed=formed):
                def fn() -> LoadRun:
                    s = services[x.key]
                    before = batch_stats(s) if x.batching else None
                    r = load(s, s.port, requests[x.key], n, c, texts_from(n))
                    if before is not None:
                        after = batch_stats(s)
                        if after["batches"] > before["batches"]:
                            sizes[x.key].append(
                                (after["requests"] - before["requests"])
                                / (after["batches"] - before["batches"])
                            )
                        if x.key == "on":
                            formed.clear()
                            formed.update(size_counts(after) - size_counts(before))
                    return r

                return fn

            fns: dict[str, Any] = {x.key: side(x) for x in sides}
            if predictor is not None and c == 1:
                fns["in"] = lambda n=n: in_process(predictor, texts, texts_from(n), n)
            elif predictor is not None and c == max(tuning.concurrency):
                # After "on" in every round (alternate keeps the order): replays its batches.
                fns["in"] = lambda formed=formed: in_process_batches(
                    predictor, texts, texts_from(formed.total()), formed
                )
            samples = alternate(fns, budget.rounds)
            for x in sides:
                runs: list[LoadRun] = samples[x.key]
                whole = merge(runs).summary()
                sizes = batch_sizes[x.key]
                rows.append(
                    {
                        "concurrency": c,
                        "side": x.label,
                        "requests": whole["ok"] + sum(whole["errors"].values()),
                        "errors": sum(whole["errors"].values()),
                        "requests_per_s": median([r.summary()["requests_per_s"] for r in runs]),
                        "p50_ms": whole["p50_ms"],
                        "p95_ms": whole["p95_ms"],
                        "p99_ms": whole["p99_ms"],
                        "mean_batch_requests": round(median(sizes), 2) if sizes else None,
                        "service_cpu_ms_per_request": whole["service_cpu_ms_per_request"],
                        "generator_cpu_ms_per_request": whole["generator_cpu_ms_per_request"],
                        "error_kinds": whole["errors"] or None,
                    }
                )
            if "in" in samples and c != 1:
                ceiling = samples["in"]
                rows.append(
                    {
                        "concurrency": c,
                        "side": IN_PROCESS_BATCHES,
                        "requests": sum(r.requests for r in ceiling),
                        "errors": 0,
                        "requests_per_s": round(
                            median([r.requests / r.seconds for r in ceiling]) or 0.0, 1
                        ),
                        "batches": sum(len(r.latencies) for r in ceiling),
                    }
                )
            elif "in" in samples:
                pooled = [x for chunk in samples["in"] for x in chunk]
                rows.append(
                    {
                        "concurrency": 1,
                        "side": "in-process predict_proba([text])",
                        "requests": len(pooled),
                        "errors": 0,
                        "requests_per_s": round(len(pooled) / sum(pooled), 1),
                        **latency_ms(pooled),
                    }
                )
            per_round = [
                ratio(a.summary()["requests_per_s"], b.summary()["requests_per_s"])
                for a, b in zip(samples["on"], samples["off"], strict=True)
            ]
            speedups.append(
                {
                    "concurrency": c,
                    "speedup": round(median(per_round) or 0.0, 2) or None,
                    "per_round": [round(x, 2) for x in per_round if x is not None],
                    "rounds": budget.rounds,
                    "requests_per_side_per_round": n,
                }
            )
        results["load"] = rows
        results["speedup_batching_on_vs_off"] = speedups
        results["batcher_stats_at_end"] = {
            k: v for k, v in batch_stats(services["on"]).items() if not isinstance(v, dict)
        }
    return results


def _row(results: dict[str, Any], c: int, side: str) -> dict[str, Any] | None:
    for row in results.get("load", []):
        if row["concurrency"] == c and row["side"] == side:
            return row
    return None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three targets for the service, with what was measured."""
    out = []
    on, ceiling = _row(res, 32, SIDES["on"]), _row(res, 32, IN_PROCESS_BATCHES)
    if on and ceiling and on["requests_per_s"] and ceiling["requests_per_s"]:
        share = round(on["requests_per_s"] / ceiling["requests_per_s"], 3)
        speed = next(
            (s for s in res.get("speedup_batching_on_vs_off", []) if s["concurrency"] == 32), {}
        )
        out.append(
            target(
                "service throughput at concurrency 32 vs the served model in-process "
                "at the same batch sizes",
                f">= {MIN_CEILING_SHARE_C32:.0%}",
                f"{share:.1%}",
                share >= MIN_CEILING_SHARE_C32,
                f"{on['requests_per_s']} vs {ceiling['requests_per_s']} texts/s; mean batch "
                f"{on['mean_batch_requests']} requests; batching on vs off "
                f"{speed.get('speedup')}x; {res['model']}, served as "
                f"{res.get('format', 'torch')}",
            )
        )
        bound_ms = round(1000 * 32 / on["requests_per_s"], 3)
        p95 = on["p95_ms"]
        out.append(
            target(
                "service p95 at concurrency 32 vs the Little's-law bound (32 / throughput)",
                f"<= {MAX_P95_OVER_LITTLE_C32:g}x",
                f"{round(p95 / bound_ms, 2)}x" if p95 is not None else None,
                p95 is not None and p95 <= MAX_P95_OVER_LITTLE_C32 * bound_ms,
                f"p95 {p95} ms, p50 {on['p50_ms']} ms, p99 {on['p99_ms']} ms against a mean "
                f"wait of {bound_ms} ms at {on['requests_per_s']} requests/s; errors "
                f"{on['errors']}",
            )
        )
    http1 = _row(res, 1, SIDES["on"])
    inproc = next((r for r in res.get("load", []) if r["side"].startswith("in-process")), None)
    if http1 and inproc and http1["p50_ms"] is not None:
        gap = round(http1["p50_ms"] - inproc["p50_ms"], 3)
        off1 = _row(res, 1, SIDES["off"]) or {}
        out.append(
            target(
                "HTTP p50 at concurrency 1 above in-process latency (same model, batch 1)",
                f"<= {MAX_C1_OVERHEAD_MS:g} ms",
                f"{gap} ms",
                gap <= MAX_C1_OVERHEAD_MS,
                f"HTTP p50 {http1['p50_ms']} ms with batching on ({off1.get('p50_ms')} ms off) "
                f"vs predict_proba([text]) p50 {inproc['p50_ms']} ms; HTTP adds parsing, "
                "validation, JSON and queueing the prediction for the feedback store's writer",
            )
        )
    return out


NOTES = [
    "Each service is `serving.app.run` (uvicorn, 1 worker, as `slmops serve` runs it) in "
    "its own process; the load generator (closed-loop keep-alive HTTP/1.1 clients on "
    "asyncio) runs in the benchmark process; all on the same machine, so the generator's "
    "CPU (generator_cpu_ms_per_request) comes out of the service's.",
    "requests_per_s is the median over alternating rounds; latency percentiles pool every "
    "request of every round. Each request is one text of the frozen test split.",
]


def run(
    quick: bool,
    tuning: Tuning | None = None,
    model_dir: str | None = None,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """The payload the harness records: ``results``, ``targets``, ``notes``."""
    budget = budget or (QUICK if quick else FULL)
    workdir = Path(tempfile.mkdtemp(prefix="slmops-bench-service-"))
    try:
        results = measure(budget, tuning or Tuning(), model_dir, workdir)
    finally:
        if not os.environ.get("SLMOPS_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    return {"results": results, "targets": targets(results), "notes": NOTES}


def main(argv: Sequence[str] | None = None) -> int:
    """``run`` (the benchmark, payload on stdout), or the ``serve`` / ``trivial`` children."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_service")
    sub = parser.add_subparsers(dest="cmd")
    whole = sub.add_parser("run", help="the whole benchmark; prints the payload as JSON")
    whole.add_argument("--quick", action="store_true")
    whole.add_argument("--model-dir", help=f"serve this model folder (env {MODEL_DIR_ENV})")
    whole.add_argument("--threads", type=int, help="torch threads of the served model")
    whole.add_argument("--max-batch", type=int, help="serve.batching.max_batch")
    whole.add_argument("--max-wait-ms", type=float, help="serve.batching.max_wait_ms")
    whole.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    whole.add_argument("--rounds", type=int, help="alternating rounds per concurrency")
    whole.add_argument("--requests", type=int, help="requests per side per round (all c)")
    whole.add_argument("--out", type=Path, help="also write the payload here")
    child = sub.add_parser("serve", help="one service (internal)")
    child.add_argument("--spec", required=True)
    child.add_argument("--workdir", required=True)
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--overrides", default="{}")
    trivial = sub.add_parser("trivial", help="the ceiling server (internal)")
    trivial.add_argument("--port", type=int, required=True)
    ns = parser.parse_args(argv)
    if ns.cmd == "serve":
        return serve_main(ns)
    if ns.cmd == "trivial":
        return trivial_main(ns)
    if ns.cmd != "run":
        parser.print_help()
        return 2
    tuning = Tuning(
        threads=ns.threads,
        max_batch=ns.max_batch,
        max_wait_ms=ns.max_wait_ms,
        concurrency=tuple(int(c) for c in ns.concurrency.split(",")),
    )
    budget = QUICK if ns.quick else FULL
    if ns.rounds or ns.requests:
        budget = replace(
            budget,
            label=budget.label + " (custom)",
            rounds=ns.rounds or budget.rounds,
            requests={c: ns.requests for c in tuning.concurrency}
            if ns.requests
            else budget.requests,
        )
    payload = run(ns.quick, tuning, ns.model_dir, budget)
    text = json.dumps(payload, indent=2)
    if ns.out:
        ns.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
