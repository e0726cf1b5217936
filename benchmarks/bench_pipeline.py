"""Pipeline overheads: retrain orchestration, dvc repro no-op, validation gate, feedback
ingestion, peak memory of training and of the service.

Everything runs in a throwaway copy of the shipped project
(:mod:`benchmarks.fixtures`): its own git + DVC repository with the data built
from the seed, its own MLflow store and its own ephemeral Prefect API, so the
checkout's registry, data versions and Prefect database are never touched.

1. **Orchestration overhead.** The ``retrain`` flow runs once in a child
   process, with no overrides: the budget is the throwaway project's
   ``params.yaml`` (full mode: as shipped, the default budget; quick mode: 1
   epoch on 2% of the train split, gate floors off, formats exported but not
   timed). The flow's wall time is taken around the flow call (the start of
   Prefect's ephemeral API included, interpreter start and imports not); each
   step's own time is its task run's start → end as the Prefect API recorded
   it. Overhead = (wall − Σ steps) / wall. The same figure within the flow run
   (Prefect's own start → end of the run) is reported beside it.
2. **``dvc repro`` no-op.** After the flow, ``dvc commit`` records the
   workspace in ``dvc.lock`` (the flow ran the same functions the stages run);
   ``dvc status`` must then report everything up to date. ``dvc status`` and
   ``dvc repro`` are timed alternately, several times each (medians), and
   every ``repro`` must skip every stage.
3. **Validation gate.** 100k synthetic-but-realistic rows (the labeled texts
   resampled with small edits, distinct after normalisation and absent from the
   test split, so they pass) through ``tasks.validation.gate.validate_file``, as the
   pipeline calls it: read the CSV, derive the checked columns, the GX
   checkpoint with its Data Docs, the report and quarantine files. A warm-up
   call on 10k rows comes first; the one-time ``import great_expectations`` is
   reported apart. The GX checkpoint's own time is taken within the same calls;
   a 10k-row file alternates with the 100k one, to split the cost into a fixed
   part per call and a per-row rate.
4. **Feedback ingestion.** 10k predictions and 10k feedback rows (92% new
   texts, 5% confirmations and 3% corrections of labeled texts, 10% anonymous)
   in the project's feedback store, then ``ingest_feedback`` (read, merge with
   the gate, ``dvc add`` + push, git commit, watermark) and the live-accuracy
   tags in MLflow, timed end to end with a breakdown by step, in a child
   process; the libraries it imports (GX, MLflow) are imported before the clock
   starts and their import times reported apart.
5. **Peak memory.** Training: the flow process's resident memory, sampled from
   ``/proc`` every 0.1 s, at its highest during the ``train`` task run. Service:
   ``python -m slmops.serving`` on a free loopback port serving the champion the flow
   left, under a short concurrent ``/predict`` load (single texts and batches of
   ``serve.max_batch`` texts); its ``VmHWM`` (peak resident memory) after it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Attempts, median, target
from benchmarks.fixtures import bench_env, ensure_champion, make_project, python, run_cmd, serve

NAME = "pipeline"

# Targets of issue 5 ("Pipeline overheads").
MAX_OVERHEAD = 0.10  # orchestration overhead, as a fraction of the flow's wall time
MAX_DVC_NOOP_S = 3.0
MIN_GATE_ROWS_PER_S = 100_000
MAX_INGEST_S = 10.0

GATE_ROWS = 100_000
GATE_SMALL_ROWS = 10_000  # second size: fixed cost per call vs cost per row
FEEDBACK_ROWS = 10_000
RSS_INTERVAL_S = 0.1
# The retrain flow's tasks: import-pending-labels, validate-data, split, train, evaluate,
# register, promotion-gate.
FLOW_TASKS = 7


@dataclass(frozen=True)
class Budget:
    """How much work one mode does."""

    label: str
    # params.yaml sections overridden in the throwaway project. The flow takes no
    # overrides, so the dvc.lock that `dvc commit` writes describes what was trained.
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    dvc_repeats: int = 7
    gate_repeats: int = 5
    ingest_rounds: int = 3
    load_seconds: float = 20.0
    concurrency: int = 8


FULL = Budget(label="default budget (params.yaml as shipped)")
QUICK = Budget(
    label="quick: 1 epoch on 2% of the train split, gate floors off, formats not timed",
    params={
        "train": {"epochs": 1, "data_fraction": 0.02},
        "evaluate": {"latency_samples": 20},
        # Formats are still exported and checked, just not timed (the formats benchmark is).
        "export": {"measure": False},
        # The weak quick model must still become champion for the service measurement.
        "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "significance": "none"},
    },
    dvc_repeats=3,
    gate_repeats=2,
    ingest_rounds=1,
    load_seconds=6.0,
)


# -- pure helpers (unit-tested) --------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a flow run: its name and wall-clock start and end (epoch seconds)."""

    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        """The step's own time."""
        return self.end - self.start


def orchestration_overhead(wall_s: float, steps: Sequence[Step]) -> dict[str, Any]:
    """Overhead of running ``steps`` as a flow whose wall time was ``wall_s``.

    The overhead is what the wall time holds beyond the steps' own times. Steps
    that overlap (concurrent tasks) would make Σ steps exceed the wall time; the
    union of their intervals is reported as ``busy_s`` so that case shows.
    """
    if wall_s <= 0:
        raise ValueError(f"wall time must be positive, got {wall_s}")
    bad = [s.name for s in steps if s.end < s.start]
    if bad:
        raise ValueError(f"steps ending before they start: {', '.join(bad)}")
    total = sum(s.seconds for s in steps)
    busy = 0.0
    cursor = float("-inf")
    for s in sorted(steps, key=lambda s: s.start):
        start = max(s.start, cursor)
        if s.end > start:
            busy += s.end - start
        cursor = max(cursor, s.end)
    overhead = wall_s - total
    return {
        "wall_s": round(wall_s, 3),
        "steps_s": round(total, 3),
        "busy_s": round(busy, 3),
        "overhead_s": round(overhead, 3),
        "overhead_fraction": round(overhead / wall_s, 4),
    }


def peak_in_window(
    samples: Iterable[tuple[float, float]], start: float, end: float
) -> float | None:
    """The largest value among ``(time, value)`` samples taken within ``[start, end]``."""
    inside = [v for t, v in samples if start <= t <= end]
    return max(inside) if inside else None


def fixed_and_rate(
    small_rows: int, small_s: float, large_rows: int, large_s: float
) -> tuple[float, float | None]:
    """Split two timings of one call on two sizes into a fixed cost per call (seconds)
    and a rate (rows/s) for the rows beyond it; the rate is None when the larger
    size was not slower (noise), and the fixed cost is then the smaller time."""
    if large_rows <= small_rows:
        raise ValueError("large_rows must exceed small_rows")
    extra = large_s - small_s
    if extra <= 0:
        return small_s, None
    rate = (large_rows - small_rows) / extra
    return max(small_s - small_rows / rate, 0.0), rate


def perturbed_texts(
    texts: Sequence[str], n: int, avoid: Iterable[str], seed: int
) -> tuple[list[str], list[int]]:
    """``n`` texts made from ``texts`` by small edits, distinct after normalisation.

    Each is a resampled text with one to three edits (a filler word inserted,
    a word dropped, a polite suffix or a reference number appended), as users
    phrase the same intents. None normalises to a text in ``avoid``, in
    ``texts`` or to another result, so the gate's duplicate and leakage checks
    pass. Returns the texts and, for each, the index of the text it came from.
    """
    from slmops.tasks.data.dataset import normalise

    rng = random.Random(seed)
    seen = {normalise(t) for t in avoid} | {normalise(t) for t in texts}
    out: list[str] = []
    origin: list[int] = []
    while len(out) < n:
        i = rng.randrange(len(texts))
        words = texts[i].split()
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.4:
                words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
            elif op < 0.6 and len(words) > 3:
                del words[rng.randrange(len(words))]
            elif op < 0.8:
                words.append(rng.choice(SUFFIXES))
            else:
                words.append(f"ref {rng.randrange(1_000_000)}")
        text = " ".join(words)
        key = normalise(text)
        if key in seen:
            continue
        seen.add(key)
        out.append(text)
        origin.append(i)
    return out, origin


FILLERS = ("please", "hi,", "hey", "so", "urgently", "again", "today", "now", "actually", "still")
SUFFIXES = ("thanks", "thank you", "asap", "help!", "any ideas?", "cheers", "please advise")


# -- process helpers -------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a live process, in KiB (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def mib(kib: float | None) -> float | None:
    """KiB → MiB, rounded."""
    return None if kib is None else round(kib / 1024, 1)


class RssSampler(threading.Thread):
    """Samples a process's RSS from ``/proc`` every ``interval`` seconds until stopped.

    ``samples`` keeps (epoch time, KiB) so a peak can be attributed to a time
    window (a task run); ``hwm_kib`` is the kernel's own high-water mark.
    """

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        super().__init__(daemon=True, name=f"rss-{pid}")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.hwm_kib = 0
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop` or the process is gone."""
        while not self._halt.is_set():
            status = proc_status(self.pid)
            if not status:
                break
            self.samples.append((time.time(), status.get("VmRSS", 0)))
            self.hwm_kib = max(self.hwm_kib, status.get("VmHWM", 0))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()


@dataclass
class ChildRun:
    """A finished benchmark child: what it wrote, its RSS samples, when and how long it ran."""

    out: dict[str, Any]
    rss: RssSampler
    started: float  # epoch seconds, just before the process started
    wall_s: float
    cpu_s: float  # user + system time of the process: beside wall_s, how busy the machine was


def run_child(
    kind: str, root: Path, env: dict[str, str], args: dict[str, Any], timeout: float
) -> ChildRun:
    """Run ``python -m benchmarks.bench_pipeline child KIND`` in ``root``, sampling its RSS.

    Its output goes to ``root/.bench-KIND.log``; a failure raises with the log's tail.
    """
    out = root / f".bench-{kind}.json"
    log_path = root / f".bench-{kind}.log"
    out.unlink(missing_ok=True)
    cmd = python("-m", "benchmarks.bench_pipeline", "child", kind, "--out", str(out))
    cmd += ["--args", json.dumps(args)]
    with log_path.open("wb") as log:
        started = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = RssSampler(proc.pid)
        sampler.start()
        status, usage = 0, None
        try:
            # wait4, not Popen.wait: it also returns the child's CPU time.
            while usage is None:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    usage = ru
                elif time.perf_counter() - start > timeout:
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                else:
                    time.sleep(0.05)
        finally:
            if usage is None:  # interrupted: leave no orphan behind
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            sampler.stop()
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"benchmark child {kind!r} failed (exit {proc.returncode}):\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return ChildRun(json.loads(out.read_text(encoding="utf-8")), sampler, started, wall, cpu)


# -- children (run inside the throwaway project) ---------------------------------------------


def _task_runs(flow_run_id: Any, expected: int, timeout: float = 60.0) -> list[Any]:
    """The flow run's finished task runs, once the API has recorded ``expected`` of them.

    Prefect 3 records task run states from events, a moment after the flow returns.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            done = [r for r in runs if r.start_time and r.end_time]
            if len(done) >= expected or time.monotonic() > deadline:
                return done
            time.sleep(0.5)


def child_retrain(args: dict[str, Any]) -> dict[str, Any]:
    """Run the ``retrain`` flow; return its wall time and its task runs' times."""
    from prefect.client.orchestration import get_client

    from slmops.flows.retrain import retrain

    started = time.time()
    state = retrain(params_path="params.yaml", trigger="benchmark", force=True, return_state=True)
    ended = time.time()
    result = state.result()
    flow_run_id = state.state_details.flow_run_id
    runs = _task_runs(flow_run_id, FLOW_TASKS)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    return {
        "call_start": started,
        "call_end": ended,
        "flow_run_start": flow_run.start_time.timestamp() if flow_run.start_time else None,
        "flow_run_end": flow_run.end_time.timestamp() if flow_run.end_time else None,
        "tasks": [
            {
                # Task run names are "<task name>-<3 hex digits>".
                "name": r.name.rsplit("-", 1)[0],
                "start": r.start_time.timestamp(),
                "end": r.end_time.timestamp(),
            }
            for r in sorted(runs, key=lambda r: r.start_time)
        ],
        "version": str(result["version"]),
        "promoted": bool(result["promoted"]),
        "accuracy": result["metrics"]["accuracy"],
        "train_seconds": result["train_seconds"],
        "train_examples": result["train_examples"],
        "epochs_run": result["epochs_run"],
    }


def _timed_import(module: str) -> float:
    """Import ``module`` and return how long it took (0 when it was already imported)."""
    import importlib

    if module in sys.modules:
        return 0.0
    start = time.perf_counter()
    importlib.import_module(module)
    return round(time.perf_counter() - start, 3)


def _synthetic_labeled(base: Any, test_texts: Any, rows: int, seed: int) -> Any:
    """``rows`` labeled rows in the labeled-data layout, as a label import writes them."""
    import pandas as pd

    from slmops.tasks.data.dataset import LABELED_COLUMNS

    texts, origin = perturbed_texts(base["text"].tolist(), rows, test_texts, seed=seed)
    return pd.DataFrame(
        {
            "text": texts,
            "label": base["label"].to_numpy()[origin],
            "source": "import",
            "source_file": "data/imports/done/synthetic.csv",
            "source_id": [f"row {i}" for i in range(1, rows + 1)],
            "batch_id": "import-synthetic",
            "imported_at": "2025-01-01T00:00:00+00:00",
            "annotator_count": "1",
            "agreement": "1",
        }
    ).reindex(columns=LABELED_COLUMNS)


def child_gate(args: dict[str, Any]) -> dict[str, Any]:
    """Time the validation gate on synthetic files (module doc, 3)."""
    gx_import_s = _timed_import("great_expectations")
    import slmops.tasks.validation.gate as validate
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import LABELED_COLUMNS, read_labeled, read_test
    from slmops.tasks.task_types import task_type

    params = load_params("params.yaml")
    df = _synthetic_labeled(read_labeled(params), read_test(params)["text"], args["rows"], seed=5)
    work = Path(tempfile.mkdtemp(prefix="gate-", dir=Path.cwd()))  # GX wants absolute paths
    files = {"small": args["small_rows"], "large": args["rows"]}
    # More sizes (the cost curves, benchmarks/bench_curves.py): each alternates with the others.
    files.update({f"rows{n}": n for n in args.get("sizes", ())})
    for name, n in files.items():
        df.head(n).to_csv(work / f"{name}.csv", index=False)

    gx_times: list[float] = []
    original = validate._run_checkpoint

    def timed_checkpoint(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            gx_times.append(time.perf_counter() - start)

    validate._run_checkpoint = timed_checkpoint

    def call(name: str, i: int) -> tuple[float, float]:
        start = time.perf_counter()
        result, _ = validate.validate_file(
            work / f"{name}.csv",
            params,
            task_type(params),
            required=LABELED_COLUMNS,
            out_dir=work / f"{name}{i}",
        )
        seconds = time.perf_counter() - start
        if not result.passed or len(result.quarantined):
            raise RuntimeError(f"the synthetic rows should pass the gate: {result.problems()}")
        return seconds, gx_times[-1]

    first_call_s = call("small", -1)[0]  # compiles and caches what later calls reuse
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in files}
    for i in range(args["repeats"]):
        for name in timings:  # alternate sizes, so a noisy moment hits both alike
            timings[name].append(call(name, i))
    shutil.rmtree(work)
    return {
        "rows": args["rows"],
        "small_rows": args["small_rows"],
        "gx_import_s": gx_import_s,
        "first_call_s": round(first_call_s, 3),
        **{f"{n}_gate_s": [round(t, 3) for t, _ in ts] for n, ts in timings.items()},
        **{f"{n}_gx_s": [round(g, 3) for _, g in ts] for n, ts in timings.items()},
    }


def _timed_attr(owner: Any, name: str, times: dict[str, float]) -> None:
    """Wrap ``owner.name`` so that its calls add their time to ``times[name]``."""
    original = getattr(owner, name)

    def wrapper(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def _fill_feedback_store(params: Any, rows: int, version: str, seed: int) -> None:
    """``rows`` predictions by model ``version`` and one piece of feedback on each."""
    import sqlalchemy as sa

    from slmops.tasks.data.dataset import load_label_set, read_labeled, read_test
    from slmops.tasks.feedback.store import FeedbackStore, NewPrediction, feedback_table

    rng = random.Random(seed)
    labels = load_label_set(params)
    base = read_labeled(params)
    # 92% new texts (added), 5% labeled texts confirmed (unchanged) and 3% relabelled
    # (corrections); the served model is right 85% of the time.
    n_existing = rows // 12
    texts, origin = perturbed_texts(
        base["text"].tolist(), rows - n_existing, read_test(params)["text"], seed=seed
    )
    items = [(t, base["label"].iat[i]) for t, i in zip(texts, origin, strict=True)]
    for i in rng.sample(range(len(base)), n_existing):
        label = base["label"].iat[i]
        if rng.random() < 0.375:
            label = rng.choice([x for x in labels if x != label])
        items.append((base["text"].iat[i], label))
    rng.shuffle(items)
    predicted = [given if rng.random() < 0.85 else rng.choice(labels) for _, given in items]
    with FeedbackStore.from_params(params) as store:
        ids = store.log_predictions(
            [
                NewPrediction(text, pred, 0.7, [], params.registry.model_name, version)
                for (text, _), pred in zip(items, predicted, strict=True)
            ]
        )
        # Setup, not what is measured: one executemany instead of 10k add_feedback calls
        # (the same rows: kind from the predicted label, 10% anonymous, 20 reviewers).
        now = datetime.now(UTC)
        with store.engine.begin() as conn:
            conn.execute(
                feedback_table.insert(),
                [
                    {
                        "prediction_id": pid,
                        "label": given,
                        "kind": "confirmation" if given == pred else "correction",
                        "user_name": None if rng.random() < 0.1 else f"reviewer{rng.randrange(20)}",
                        "created_at": now,
                    }
                    for pid, (_, given), pred in zip(ids, items, predicted, strict=True)
                ],
            )
            count = conn.execute(sa.select(sa.func.count()).select_from(feedback_table))
            if count.scalar_one() < rows:
                raise RuntimeError("the feedback store did not take every row")


# What ingestion imports on first use, one time per process: imported before the clock
# starts (their times are reported apart). MLflow loads its SQL stores lazily.
INGEST_IMPORTS = (
    "great_expectations",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)


def child_ingest(args: dict[str, Any]) -> dict[str, Any]:
    """Ingest ``args['rows']`` feedback rows (module doc, 4): end to end, by step."""
    imports = {m: _timed_import(m) for m in INGEST_IMPORTS}
    import slmops.tasks.feedback.ingest as ingest
    import slmops.tasks.labels.importer as label_import
    import slmops.tasks.task_types.sequence.classification as sequence
    from slmops.tasks.core.config import load_params
    from slmops.tasks.feedback.store import FeedbackStore
    from slmops.tasks.registry.tracking import record_live_accuracy
    from slmops.tasks.task_types import task_type

    params = load_params("params.yaml")
    _fill_feedback_store(params, args["rows"], str(args["version"]), args["seed"])

    steps: dict[str, float] = {}
    _timed_attr(FeedbackStore, "feedback_since", steps)
    _timed_attr(FeedbackStore, "set_watermark", steps)
    for name in ("ingested_ids", "merge_votes", "track", "commit_data_version"):
        _timed_attr(ingest, name, steps)
    # Inside merge_votes: vote resolution, the gate on the merged data, the merge itself.
    for name in ("resolve_votes", "_merge"):
        _timed_attr(label_import, name, steps)
    _timed_attr(sequence, "validate_frame", steps)

    start = time.perf_counter()
    with FeedbackStore.from_params(params) as store:
        result = ingest.ingest_feedback(params, store, task_type(params))
    middle = time.perf_counter()
    record_live_accuracy(params, result.live)
    end = time.perf_counter()
    steps["ingest_feedback (all)"] = middle - start
    steps["record_live_accuracy"] = end - middle
    s = result.summary
    return {
        "rows": args["rows"],
        "total_s": round(end - start, 3),
        "imports_s": imports,
        "steps_s": {k: round(v, 3) for k, v in steps.items()},
        "read": result.read,
        "added": s.added if s else 0,
        "corrected": s.corrected if s else 0,
        "unchanged": s.unchanged if s else 0,
        "quarantined": s.quarantined if s else 0,
        "committed": bool(result.commit),
    }


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "retrain": child_retrain,
    "gate": child_gate,
    "ingest": child_ingest,
}


# -- measurements (in the harness's process) -------------------------------------------------


def prepare_project(root: Path, budget: Budget) -> dict[str, str]:
    """The throwaway project with the budget's params committed; its environment."""
    make_project(root)
    env = bench_env(root)
    if budget.params:
        path = root / "params.yaml"
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for section, values in budget.params.items():
            raw.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        run_cmd(["git", "commit", "-qam", "benchmark budget"], root, env)
    return env


def measure_retrain(root: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the flow once (module doc, 1; and 5 for training memory)."""
    child = run_child("retrain", root, env, {}, timeout=3600)
    out, samples = child.out, child.rss.samples
    steps = [Step(t["name"], t["start"], t["end"]) for t in out["tasks"]]
    call = orchestration_overhead(out["call_end"] - out["call_start"], steps)
    in_run = None
    if out["flow_run_start"] and out["flow_run_end"]:
        in_run = orchestration_overhead(out["flow_run_end"] - out["flow_run_start"], steps)
    train = next((s for s in steps if s.name == "train"), None)
    at_start = None
    if train:
        before = [v for t, v in samples if t <= train.start]
        at_start = before[-1] if before else None
    return {
        "call": call,
        "in_run": in_run,
        "steps": steps,
        "tasks_recorded": len(steps),
        "imports_s": round(out["call_start"] - child.started, 2),
        "api_start_s": round(out["flow_run_start"] - out["call_start"], 2)
        if out["flow_run_start"]
        else None,
        "process_wall_s": round(child.wall_s, 1),
        "process_cpu_s": round(child.cpu_s, 1),
        "version": out["version"],
        "promoted": out["promoted"],
        "accuracy": out["accuracy"],
        "train_examples": out["train_examples"],
        "epochs_run": out["epochs_run"],
        "train_peak_rss_mib": mib(peak_in_window(samples, train.start, train.end))
        if train
        else None,
        "rss_at_train_start_mib": mib(at_start),
        "flow_process_peak_rss_mib": mib(child.rss.hwm_kib),
    }


def measure_dvc(root: Path, env: dict[str, str], repeats: int) -> dict[str, Any]:
    """``dvc status`` and ``dvc repro`` on the up-to-date pipeline (module doc, 2)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    run_cmd([dvc, "commit", "--force", "--quiet"], root, env)
    up_to_date = "up to date" in run_cmd([dvc, "status"], root, env).stdout
    stages = len(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    timings: dict[str, list[float]] = {"status": [], "repro": []}
    all_skipped = True
    for _ in range(repeats):
        for cmd in timings:
            start = time.perf_counter()
            proc = run_cmd([dvc, cmd], root, env)
            timings[cmd].append(time.perf_counter() - start)
            if cmd == "repro":
                skipped = proc.stdout.count("didn't change, skipping")
                all_skipped &= skipped >= stages and "Running stage" not in proc.stdout
    return {
        "up_to_date_before": up_to_date,
        "every_stage_skipped": all_skipped,
        "stages": stages,
        "repro_median_s": round(median(timings["repro"]), 3),
        "status_median_s": round(median(timings["status"]), 3),
        "repro_s": [round(t, 3) for t in timings["repro"]],
        "status_s": [round(t, 3) for t in timings["status"]],
    }


def measure_gate(root: Path, env: dict[str, str], repeats: int) -> dict[str, Any]:
    """The validation gate on 100k rows (module doc, 3)."""
    args = {"rows": GATE_ROWS, "small_rows": GATE_SMALL_ROWS, "repeats": repeats}
    out = run_child("gate", root, env, args, timeout=1800).out
    large, small = median(out["large_gate_s"]), median(out["small_gate_s"])
    gx_large = median(out["large_gx_s"])
    fixed, rate = fixed_and_rate(out["small_rows"], small, out["rows"], large)
    return {
        "rows": out["rows"],
        "gate_median_s": round(large, 3),
        "gate_rows_per_s": round(out["rows"] / large),
        "gx_checkpoint_median_s": round(gx_large, 3),
        "gx_checkpoint_rows_per_s": round(out["rows"] / gx_large),
        f"gate_{out['small_rows'] // 1000}k_rows_median_s": round(small, 3),
        "fixed_cost_per_call_s": round(fixed, 3),
        "rows_per_s_beyond_fixed_cost": round(rate) if rate else None,
        f"first_call_{out['small_rows'] // 1000}k_rows_s": out["first_call_s"],
        "gx_import_s": out["gx_import_s"],
        "gate_s": out["large_gate_s"],
        "gx_checkpoint_s": out["large_gx_s"],
    }


def measure_ingest(root: Path, rounds: int, version: str) -> dict[str, Any]:
    """Feedback ingestion of 10k rows (module doc, 4). Each round runs in a fresh copy of
    the project after the flow, so every round ingests into the same labeled data."""
    runs = []
    for i in range(rounds):
        copy = root.parent / f"ingest-{i}"
        # Model weights, checkpoints and artifacts play no part in ingestion.
        skip = shutil.ignore_patterns("models", "checkpoints", "artifacts", ".prefect")
        shutil.copytree(root, copy, symlinks=True, ignore=skip)
        try:
            args = {"rows": FEEDBACK_ROWS, "version": version, "seed": 11 + i}
            runs.append(run_child("ingest", copy, bench_env(copy), args, timeout=1800).out)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    steps = {
        name: {"median_s": round(median([r["steps_s"].get(name) for r in runs]), 3)}
        for name in runs[0]["steps_s"]
    }
    last = runs[-1]
    return {
        "summary": {
            "rows": FEEDBACK_ROWS,
            "total_median_s": round(median([r["total_s"] for r in runs]), 3),
            "total_s": [r["total_s"] for r in runs],
            "added": last["added"],
            "corrected": last["corrected"],
            "unchanged": last["unchanged"],
            "quarantined": last["quarantined"],
            "committed": last["committed"],
            "one_time_imports_s": round(sum(last["imports_s"].values()), 2),
        },
        "steps": steps,
    }


def _load(base: str, texts: Sequence[str], batch: int, seconds: float, workers: int) -> dict:
    """POST /predict from ``workers`` threads for ``seconds``: every tenth request a batch
    of ``batch`` texts (the largest the service accepts), the others one text each."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        n = 0
        while time.monotonic() < stop:
            n += 1
            body = (
                {"texts": rng.sample(texts, batch)} if n % 10 == 0 else {"text": rng.choice(texts)}
            )
            try:
                conn.request(
                    "POST", "/predict", json.dumps(body), {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
            with lock:
                counts["requests"] += 1
                counts["errors"] += 0 if ok else 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def measure_service(root: Path, env: dict[str, str], budget: Budget) -> dict[str, Any]:
    """Peak RSS of the service under a short /predict load (module doc, 5)."""
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.dataset import read_test

    params = load_params(root / "params.yaml")
    texts = read_test(params)["text"].tolist()
    batch = min(params.serve.max_batch, len(texts))
    with serve(root, env) as (proc, base):
        idle = proc_status(proc.pid)
        counts = _load(base, texts, batch, budget.load_seconds, budget.concurrency)
        after = proc_status(proc.pid)
    return {
        "load_s": budget.load_seconds,
        "concurrency": budget.concurrency,
        "batch_every_10th_request": batch,
        **counts,
        "idle_rss_mib": mib(idle.get("VmRSS")),
        "peak_rss_mib": mib(after.get("VmHWM")),
    }


# -- payload ---------------------------------------------------------------------------------


def _flow_tables(flow: dict[str, Any]) -> dict[str, Any]:
    call, in_run = flow["call"], flow["in_run"]
    steps: list[Step] = flow["steps"]
    table = {
        s.name: {
            "seconds": round(s.seconds, 2),
            "share_of_wall": round(s.seconds / call["wall_s"], 4),
        }
        for s in steps
    }
    figures = {
        "wall_s (flow call)": call["wall_s"],
        "sum_of_steps_s": call["steps_s"],
        "overhead_s": call["overhead_s"],
        "overhead_fraction": call["overhead_fraction"],
        "prefect_api_start_s": flow["api_start_s"],
        "flow_run_wall_s": in_run["wall_s"] if in_run else None,
        "overhead_fraction_within_run": in_run["overhead_fraction"] if in_run else None,
        "imports_before_call_s": flow["imports_s"],
        "process_wall_s": flow["process_wall_s"],
        "process_cpu_s": flow["process_cpu_s"],
        "tasks_recorded": flow["tasks_recorded"],
        "model_version": flow["version"],
        "promoted": flow["promoted"],
        "test_accuracy": flow["accuracy"],
        "train_examples": flow["train_examples"],
        "epochs_run": flow["epochs_run"],
    }
    return {"flow": figures, "flow_steps": table}


def _targets(res: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    out = []
    flow = res.get("flow")
    if flow:
        frac = flow["overhead_fraction"]
        note = (
            f"wall {flow['wall_s (flow call)']:.1f} s (the ephemeral Prefect API's start, "
            f"{flow['prefect_api_start_s']} s, included) vs Σ steps {flow['sum_of_steps_s']:.1f} s;"
            f" within the flow run {flow['overhead_fraction_within_run']:.1%}"
        )
        if quick:
            note = "tiny quick budget, where fixed costs dominate: the target applies to the "
            note += "default budget (full run). " + note
        out.append(
            target(
                "retrain flow orchestration overhead",
                f"<= {MAX_OVERHEAD:.0%} of the flow's wall time (default budget)",
                f"{frac:.1%}",
                None if quick else frac <= MAX_OVERHEAD,
                note,
            )
        )
    dvc = res.get("dvc")
    if dvc:
        noop = dvc["up_to_date_before"] and dvc["every_stage_skipped"]
        out.append(
            target(
                "dvc repro no-op",
                f"< {MAX_DVC_NOOP_S:g} s",
                f"{dvc['repro_median_s']:.2f} s",
                noop and dvc["repro_median_s"] < MAX_DVC_NOOP_S,
                f"median of {len(dvc['repro_s'])} on the up-to-date {dvc['stages']}-stage pipeline;"
                f" dvc status {dvc['status_median_s']:.2f} s"
                + ("" if noop else "; NOT a no-op: a stage ran or the pipeline was not up to date"),
            )
        )
    gate = res.get("gate")
    if gate:
        met = gate["gate_rows_per_s"] >= MIN_GATE_ROWS_PER_S
        rate = gate["rows_per_s_beyond_fixed_cost"]
        note = (
            f"the whole gate call (read the CSV, GX checkpoint with Data Docs, report) on 100k rows"
            f" takes {gate['gate_median_s']:.2f} s, the GX checkpoint "
            f"{gate['gx_checkpoint_median_s']:.2f} s of it; about "
            f"{gate['fixed_cost_per_call_s']:.2f} s is fixed per call whatever the size (GX's "
            f"per-expectation bookkeeping, Data Docs), the rest runs at "
            + (f"{rate:,} rows/s" if rate else "an unmeasurable rate (noise)")
            + f"; the one-time GX import ({gate['gx_import_s']:.1f} s) is not included"
        )
        out.append(
            target(
                "validation gate throughput on 100k rows",
                f">= {MIN_GATE_ROWS_PER_S:,} rows/s",
                f"{gate['gate_rows_per_s']:,} rows/s",
                met,
                note,
            )
        )
    ingest = res.get("ingest")
    if ingest:
        t = ingest["total_median_s"]
        out.append(
            target(
                "feedback ingestion of 10k rows",
                f"< {MAX_INGEST_S:g} s",
                f"{t:.2f} s",
                t < MAX_INGEST_S,
                f"median of {len(ingest['total_s'])}: read, merge with the gate, dvc add + push,"
                " git commit, watermark, MLflow live-accuracy tags (steps in ingest_steps); "
                f"the one-time imports of GX and MLflow ({ingest['one_time_imports_s']:.1f} s) "
                "are not included",
            )
        )
    memory = res.get("memory", {})
    if "training" in memory:
        m = memory["training"]
        out.append(
            target(
                "peak memory of training",
                "reported",
                f"{m['peak_rss_mib']} MiB",
                None,
                "resident memory of the flow process during the train task"
                + (" (quick budget: same model and batch size, 2% of the data)" if quick else ""),
            )
        )
    if "service" in memory:
        m = memory["service"]
        out.append(
            target(
                "peak memory of the service",
                "reported",
                f"{m['peak_rss_mib']} MiB",
                None,
                f"VmHWM after {m['requests']} /predict requests at concurrency "
                f"{m['concurrency']}; {m['idle_rss_mib']} MiB with the model loaded, before load"
                + (" (quick budget's model: same size as the default's)" if quick else ""),
            )
        )
    return out


NOTES = [
    "Everything runs in a throwaway copy of the project (git-tracked files, data built from "
    "the seed, own git + DVC repository, MLflow store and ephemeral Prefect API).",
    "Flow overhead: wall time around the retrain flow call (ephemeral Prefect API start "
    "included, imports not) minus the sum of its task runs' start → end as Prefect recorded "
    "them.",
    "dvc repro no-op: after `dvc commit` of the flow's outputs, `dvc status` and `dvc repro` "
    "alternately, medians; every repro must skip every stage.",
    "Gate: validate_file on 100k synthetic rows (resampled labeled texts with "
    "small edits, all distinct, none in the test split) after a warm-up call; a 10k-row file "
    "alternates with it to split fixed and per-row cost.",
    "Ingestion: 10k predictions + feedback in the store, then ingest_feedback and the MLflow "
    "live-accuracy tags in a fresh process per round, libraries imported first.",
    "Memory: RSS sampled from /proc every 0.1 s (training: the flow process during its train "
    "task); the service's VmHWM after a short concurrent /predict load.",
]


def run(quick: bool) -> dict[str, Any]:
    """Measure everything in a throwaway project; the payload the harness records."""
    budget = QUICK if quick else FULL
    res: dict[str, Any] = {"budget": budget.label}
    workdir = Path(tempfile.mkdtemp(prefix="slmops-bench-pipeline-"))
    root = workdir / "project"
    attempt = Attempts()

    try:
        start = time.perf_counter()
        env = prepare_project(root, budget)
        attempt.seconds["project_setup"] = round(time.perf_counter() - start, 1)
        flow = attempt("flow", lambda: measure_retrain(root, env))
        champion = None
        if flow:
            res.update(_flow_tables(flow))
            res.setdefault("memory", {})["training"] = {
                "peak_rss_mib": flow["train_peak_rss_mib"],
                "rss_at_start_mib": flow["rss_at_train_start_mib"],
                "flow_process_peak_rss_mib": flow["flow_process_peak_rss_mib"],
            }
            champion = flow["version"] if flow["promoted"] else None
        if flow and champion is None:
            champion = attempt("champion", lambda: ensure_champion(root, env))
        res["dvc"] = attempt("dvc", lambda: measure_dvc(root, env, budget.dvc_repeats))
        res["gate"] = attempt("gate", lambda: measure_gate(root, env, budget.gate_repeats))
        if champion:
            ingest = attempt(
                "ingest", lambda: measure_ingest(root, budget.ingest_rounds, str(champion))
            )
            if ingest:
                res["ingest"], res["ingest_steps"] = ingest["summary"], ingest["steps"]
            service = attempt("service", lambda: measure_service(root, env, budget))
            if service:
                res.setdefault("memory", {})["service"] = service
    finally:
        if os.environ.get("SLMOPS_BENCH_KEEP"):
            res["kept_project"] = str(root)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    res = {k: v for k, v in res.items() if v is not None}
    return {
        "results": attempt.record(res),
        "targets": _targets(res, quick),
        "notes": NOTES,
        "settings": {"budget": budget.label, "params_overrides": budget.params},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``child KIND --out FILE --args JSON`` (inside a project), or ``run [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline")
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="one measurement inside a throwaway project")
    child.add_argument("kind", choices=sorted(CHILDREN))
    child.add_argument("--out", required=True, type=Path)
    child.add_argument("--args", default="{}")
    whole = sub.add_parser("run", help="the whole benchmark; prints its payload")
    whole.add_argument("--quick", action="store_true")
    ns = parser.parse_args(argv)
    if ns.cmd == "child":
        payload = CHILDREN[ns.kind](json.loads(ns.args))
        ns.out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return 0
    if ns.cmd == "run":
        print(json.dumps(run(ns.quick), indent=2, default=str))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
