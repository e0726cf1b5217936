"""Cost curves (log-log, fitted exponent): gate, ingestion, feedback store; service memory soak.

The gate, ingestion and the feedback store's queries against size, and the
service's memory over a long run at concurrency 8:

1. **Validation gate** at three sizes (full: 10k, 100k, 1M rows; quick: 5k, 25k,
   125k): ``validate_file`` on the synthetic rows of the pipeline benchmark
   (:func:`benchmarks.bench_pipeline.child_gate`, all sizes alternating in one
   child process after a warm-up call), in a throwaway project.
2. **Feedback ingestion** at three sizes (full: 10k, 100k, 1M feedback rows;
   quick: 1k, 5k, 25k): :func:`benchmarks.bench_pipeline.child_ingest` in a
   fresh copy of the throwaway project per size (the store filled with that
   many predictions and feedback rows, then ``ingest_feedback``, chunked by
   ``feedback.ingest_chunk_rows`` as shipped). The curve is ``ingest_feedback``'s
   own time (MLflow's live-accuracy tags are reported apart).
3. **The feedback store** (SQLite, WAL, as the service opens it) filled to three
   sizes in turn (full: 100k, 1M, 10M predictions; quick: 100k, 300k, 1M), 2% of
   them with feedback (half on the least confident predictions, as reviewers
   working ``/review`` give it, half on random ones; 20 reviewers and 10%
   anonymous). The fill is bulk SQL (executemany in big transactions), not the
   API, and its time is reported. At each size:

   - the predict-path insert: ``FeedbackStore.insert_predictions`` of one row per
     transaction (what the service's writer commits when requests come one at a
     time), p50/p95 over a few hundred;
   - ``/review``: ``FeedbackStore.review_queue(serve.review_limit)``, median;
   - the ingestion query: what one ingestion chunk reads from the store with a
     fixed number of new feedback rows after the watermark (``feedback_since``,
     the daily-cap counts ``corrections_by`` per reviewer and day, the held and
     revoked ids), median;
   - the database's size on disk (after a WAL checkpoint).
4. **Soak**: the service as the service benchmark starts it (``serving.app.run``
   in a subprocess, the checkout's champion or the base model with an untrained
   head) under closed-loop ``/predict`` load at concurrency 8 for 20 minutes
   (quick: 1 minute), its RSS sampled every few seconds.

Each curve gets a least-squares fit of ``cost ~ size^k`` on log-log axes and a
plot (``results/<curve>.png``; quick: ``results/quick/``).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import run_child
from benchmarks.bench_service import (
    bench_params,
    load,
    post_bytes,
    resolve_model,
    serve_cmd,
    started,
    test_texts,
)
from benchmarks.common import (
    REPO,
    Attempts,
    median,
    percentile,
    results_dir,
    rss_mb,
    target,
)
from benchmarks.fixtures import bench_env, make_project
from slmops.serving.background import free_port

NAME = "curves"

# Nothing may grow faster than linearly. A fitted exponent carries noise (a shared
# machine, three sizes): 0.1 above linear is within it; a quadratic cost shows as 2.
MAX_EXPONENT = 1.1
# Service memory after warm-up: flat means a slope below the larger of these, per 10 min.
MAX_SLOPE_MIB = 5.0
MAX_SLOPE_FRACTION = 0.01
CONCURRENCY = 8

FEEDBACK_FRACTION = 0.02  # predictions with feedback
REVIEWERS = 20
ANONYMOUS_FRACTION = 0.10
PREDICTIONS_PER_DAY = 100_000  # created_at spread: the store's history, in days
FILL_BATCH = 100_000  # rows per transaction of the bulk fill
# Bytes per prediction on disk (measured about 330 with 2% feedback) with a margin:
# the 10M store is not started without this much free space.
BYTES_PER_ROW_BOUND = 600


@dataclass(frozen=True)
class Budget:
    """How much work one mode does."""

    label: str
    gate_rows: tuple[int, ...]
    gate_repeats: int
    ingest_rows: tuple[int, ...]
    store_sizes: tuple[int, ...]
    inserts: int  # predict-path inserts timed per size
    query_repeats: int  # /review and ingestion-query calls timed per size
    new_feedback: int  # feedback rows after the watermark for the ingestion query
    soak_s: float
    sample_s: float  # RSS sampling interval of the soak
    warmup_s: float  # the soak's first part, left out of the slope


FULL = Budget(
    label="full",
    gate_rows=(10_000, 100_000, 1_000_000),
    gate_repeats=3,
    ingest_rows=(10_000, 100_000, 1_000_000),
    store_sizes=(100_000, 1_000_000, 10_000_000),
    inserts=400,
    query_repeats=9,
    new_feedback=1_000,
    soak_s=1200.0,
    sample_s=5.0,
    warmup_s=300.0,
)
QUICK = Budget(
    label="quick",
    # Fewer than about 5k rows leave some of the 77 labels under the gate's floor of
    # examples per class (the synthetic rows would fail it).
    gate_rows=(5_000, 25_000, 125_000),
    gate_repeats=2,
    ingest_rows=(1_000, 5_000, 25_000),
    # From 100k: the smallest store then has more feedback than the ingestion query's
    # fixed number of new rows, so every size reads the same rows.
    store_sizes=(100_000, 300_000, 1_000_000),
    inserts=200,
    query_repeats=5,
    new_feedback=1_000,
    soak_s=60.0,
    sample_s=2.0,
    warmup_s=20.0,
)


# -- fits and plots (unit-tested) ------------------------------------------------------------


def fit_exponent(sizes: Sequence[float], costs: Sequence[float]) -> dict[str, float | None]:
    """Least-squares fit of ``cost = c * size^k`` on log-log axes.

    Returns ``k``, ``c`` and ``last_k``, the slope between the two largest sizes:
    a fixed cost per call flattens the fit at small sizes, so the local slope at
    the large end says better how the cost grows from there. Points with a cost
    or size of zero or less are left out (no logarithm); fewer than two points
    give ``None``.
    """
    points = sorted((float(s), float(c)) for s, c in zip(sizes, costs, strict=True) if s > 0)
    points = [(s, c) for s, c in points if c is not None and c > 0]
    if len({s for s, _ in points}) < 2:
        return {"k": None, "c": None, "last_k": None}
    xs = [math.log(s) for s, _ in points]
    ys = [math.log(c) for _, c in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    (s1, c1), (s2, c2) = points[-2], points[-1]
    last = math.log(c2 / c1) / math.log(s2 / s1) if s2 != s1 else None
    return {
        "k": round(k, 3),
        "c": math.exp(my - k * mx),
        "last_k": None if last is None else round(last, 3),
    }


def plot_curves(
    path: Path,
    title: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
) -> Path:
    """A log-log plot of each series (sizes, costs) with its fitted power law and exponent
    in the legend, written to ``path`` (PNG). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    try:
        for name, (sizes, costs) in series.items():
            fit = fit_exponent(sizes, costs)
            shown = [(s, c) for s, c in zip(sizes, costs, strict=True) if s > 0 and c and c > 0]
            if not shown:
                continue
            label = name if fit["k"] is None else f"{name} (k = {fit['k']:.2f})"
            (line,) = ax.plot(*zip(*shown, strict=True), marker="o", label=label)
            if fit["k"] is not None:
                xs = [min(s for s, _ in shown), max(s for s, _ in shown)]
                ax.plot(
                    xs,
                    [fit["c"] * x ** fit["k"] for x in xs],
                    linestyle=":",
                    color=line.get_color(),
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def slope_per_10min(samples: Sequence[tuple[float, float]], after_s: float) -> float | None:
    """Least-squares slope of ``(seconds, MiB)`` samples taken at or after ``after_s``, in
    MiB per 10 minutes (None with fewer than two such samples)."""
    pts = [(t, v) for t, v in samples if t >= after_s and v is not None]
    if len({t for t, _ in pts}) < 2:
        return None
    mt = sum(t for t, _ in pts) / len(pts)
    mv = sum(v for _, v in pts) / len(pts)
    stt = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (v - mv) for t, v in pts) / stt * 600.0


def curve_target(what: str, sizes: Sequence[int], costs: Sequence[float], why: str) -> dict:
    """Target "exponent <= MAX_EXPONENT" for one curve: met when both the fit and the
    slope between the two largest sizes are within it."""
    fit = fit_exponent(sizes, costs)
    measured = None if fit["k"] is None else f"k = {fit['k']:.2f} (last step {fit['last_k']:.2f})"
    met = None if fit["k"] is None else max(fit["k"], fit["last_k"]) <= MAX_EXPONENT
    sizes_text = ", ".join(f"{s:,}" for s in sizes)
    return target(
        f"{what}: exponent of cost ~ size^k",
        f"<= {MAX_EXPONENT} (fit and last step)",
        measured,
        met,
        f"sizes {sizes_text}; {why}",
    )


# -- 1 and 2: the gate and ingestion, in a throwaway project --------------------------------


def measure_gate(root: Path, env: dict[str, str], budget: Budget) -> dict[str, Any]:
    """The gate at every size of ``budget.gate_rows``, alternating (module doc, 1)."""
    small, *middle, large = sorted(budget.gate_rows)
    args = {"rows": large, "small_rows": small, "sizes": middle, "repeats": budget.gate_repeats}
    out = run_child("gate", root, env, args, timeout=7200).out
    names = {small: "small", large: "large", **{n: f"rows{n}" for n in middle}}
    rows = []
    for n in sorted(names):
        t = median(out[f"{names[n]}_gate_s"])
        rows.append(
            {
                "rows": n,
                "gate_median_s": round(t, 3),
                "gx_checkpoint_median_s": round(median(out[f"{names[n]}_gx_s"]), 3),
                "rows_per_s": round(n / t),
                "gate_s": out[f"{names[n]}_gate_s"],
            }
        )
    return {"rows": rows, "gx_import_s": out["gx_import_s"], "first_call_s": out["first_call_s"]}


def measure_ingest(root: Path, budget: Budget) -> list[dict[str, Any]]:
    """Ingestion at every size of ``budget.ingest_rows`` (module doc, 2): each in a fresh
    copy of the project, so each ingests into the same labeled data."""
    rows = []
    for n in budget.ingest_rows:
        copy = root.parent / f"ingest-{n}"
        shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".prefect"))
        try:
            args = {"rows": n, "version": "1", "seed": 11}
            child = run_child("ingest", copy, bench_env(copy), args, timeout=4 * 3600)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        out = child.out
        steps = out["steps_s"]
        rows.append(
            {
                "rows": n,
                "ingest_feedback_s": steps["ingest_feedback (all)"],
                "feedback_since_s": steps.get("feedback_since"),
                "merge_votes_s": steps.get("merge_votes"),
                "track_s": steps.get("track"),
                "commit_data_version_s": steps.get("commit_data_version"),
                "record_live_accuracy_s": steps.get("record_live_accuracy"),
                "added": out["added"],
                "corrected": out["corrected"],
                "quarantined": out["quarantined"],
                "child_wall_s": round(child.wall_s, 1),
                "child_peak_rss_mib": round(child.rss.hwm_kib / 1024, 1),
            }
        )
    return rows


# -- 3: the feedback store ------------------------------------------------------------------

WORDS = tuple(
    [
        "card",
        "payment",
        "top",
        "up",
        "transfer",
        "refund",
        "account",
        "pin",
        "blocked",
        "arrived",
        "declined",
        "cash",
        "withdrawal",
        "exchange",
        "rate",
        "fee",
        "charged",
        "twice",
        "pending",
        "balance",
        "wrong",
        "amount",
        "verify",
        "identity",
        "app",
        "cancel",
        "lost",
        "stolen",
        "contactless",
        "apple",
        "pay",
        "google",
        "virtual",
        "disposable",
    ]
)


def _texts(rng: random.Random, n: int) -> list[str]:
    """``n`` texts of 6 to 16 words (a support message's length)."""
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 16))) for _ in range(n)]


def _stamp(value: datetime) -> str:
    # How SQLAlchemy's SQLite DateTime stores a value (UTC, no zone).
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def fill_store(
    db: Path, start: int, end: int, labels: Sequence[str], t0: datetime, seed: int
) -> dict[str, Any]:
    """Add predictions ``start`` to ``end`` (and their feedback) to the store at ``db`` in
    bulk: executemany in transactions of :data:`FILL_BATCH` rows, on a connection of its
    own (a large page cache, no fsync: a fill, not the service's write path)."""
    rng = random.Random(seed)
    pool = _texts(rng, 5000)
    top_k = [
        json.dumps(
            [{"label": labels[(i + j) % len(labels)], "score": 0.5 / (j + 1)} for j in range(3)]
        )
        for i in range(len(labels))
    ]
    conn = sqlite3.connect(db)
    started = time.perf_counter()
    feedback_rows = 0
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB: the id index stays in memory
        next_fb = conn.execute("SELECT COALESCE(MAX(id), 0) FROM feedback").fetchone()[0] + 1
        for lo in range(start, end, FILL_BATCH):
            hi = min(end, lo + FILL_BATCH)
            preds = []
            for i in range(lo, hi):
                li = rng.randrange(len(labels))
                created = t0 + timedelta(seconds=i * 86_400 / PREDICTIONS_PER_DAY)
                preds.append(
                    (
                        uuid.uuid4().hex,
                        f"{rng.choice(pool)} {i}",
                        labels[li],
                        rng.betavariate(5, 1.5),  # mostly confident, a tail of doubt
                        top_k[li],
                        "slmops-intent",
                        "1",
                        _stamp(created),
                        None,
                    )
                )
            # Feedback: half on the batch's least confident predictions (the review
            # queue's head), half on random ones.
            k = max(1, int((hi - lo) * FEEDBACK_FRACTION / 2))
            lowest = sorted(range(len(preds)), key=lambda j: preds[j][3])[:k]
            chosen = sorted(set(lowest) | set(rng.sample(range(len(preds)), k)))
            fb = []
            for j in chosen:
                p = preds[j]
                label = p[2] if rng.random() < 0.85 else rng.choice(labels)
                user = (
                    None
                    if rng.random() < ANONYMOUS_FRACTION
                    else f"reviewer{rng.randrange(REVIEWERS)}"
                )
                created = datetime.strptime(p[7], "%Y-%m-%d %H:%M:%S.%f") + timedelta(minutes=5)
                fb.append(
                    (
                        next_fb,
                        p[0],
                        label,
                        "confirmation" if label == p[2] else "correction",
                        user,
                        created.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    )
                )
                next_fb += 1
            with conn:
                conn.executemany(
                    "INSERT INTO predictions (id, text, label, confidence, top_k, model_name,"
                    " model_version, created_at, principal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    preds,
                )
                # Feedback ids rise with time, as the service writes them.
                conn.executemany(
                    "INSERT INTO feedback (id, prediction_id, label, kind, user_name, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    sorted(fb, key=lambda r: r[5]),
                )
                # What add_feedback does in its transaction: out of the review queue.
                conn.executemany(
                    "UPDATE predictions SET reviewed = 1 WHERE id = ?", [(r[1],) for r in fb]
                )
            feedback_rows += len(fb)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    seconds = time.perf_counter() - started
    return {"rows": end - start, "feedback_rows": feedback_rows, "seconds": round(seconds, 1)}


def db_size_mib(db: Path) -> float:
    """The database's files on disk (main file, WAL, shared memory), in MiB."""
    paths = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    return round(sum(p.stat().st_size for p in paths if p.exists()) / 2**20, 1)


def ingestion_reads(store: Any, last_id: int, chunk: int) -> int:
    """What one ingestion chunk reads from the store after watermark ``last_id`` (the
    feedback rows, the daily-cap counts per reviewer and day, held and revoked ids);
    returns how many feedback rows it read."""
    items = store.feedback_since(last_id, limit=chunk)
    if not items:
        return 0
    first_id = min(i.id for i in items)
    keys = {(i.user, i.created_at.date()) for i in items if i.kind == "correction"}
    for user, day in keys:
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        store.corrections_by(user, start, start + timedelta(days=1), first_id)
    store.held_ids()
    store.revoked_ids()
    return len(items)


def measure_sizes(
    store: Any, budget: Budget, labels: Sequence[str], review_limit: int, chunk: int
) -> dict[str, Any]:
    """The predict-path insert, ``/review`` and the ingestion query on the store as it is."""
    import sqlalchemy as sa

    # The store's code is imported where it is measured, not by --list or the tests.
    from slmops.tasks.feedback.store import NewPrediction, feedback_table, prediction_values

    rng = random.Random(7)
    with store.engine.connect() as conn:
        max_id = conn.execute(sa.select(sa.func.max(feedback_table.c.id))).scalar_one() or 0
    last_id = max(0, max_id - budget.new_feedback)

    def insert_one() -> None:
        # Confident answers: fresh unreviewed rows at the low end would become the review
        # queue's head and hide what /review costs when reviewers keep up with the queue.
        row = NewPrediction(
            " ".join(rng.choices(WORDS, k=10)), labels[0], 0.999, [], "slmops-intent", "1"
        )
        store.insert_predictions(prediction_values([row]))

    def review() -> None:
        if len(store.review_queue(review_limit)) != review_limit:
            raise RuntimeError("the review queue came back short")

    read = [0]

    def ingestion() -> None:
        read[0] = ingestion_reads(store, last_id, chunk)

    for fn in (insert_one, review, ingestion):  # first calls: connections, caches
        fn()
    inserts: list[float] = []
    reviews: list[float] = []
    ingests: list[float] = []
    per_round = max(1, budget.inserts // budget.query_repeats)
    # Interleaved: a noisy moment hits every measurement alike.
    while len(inserts) < budget.inserts or len(reviews) < budget.query_repeats:
        for _ in range(per_round):
            if len(inserts) < budget.inserts:
                start = time.perf_counter()
                insert_one()
                inserts.append(time.perf_counter() - start)
        if len(reviews) < budget.query_repeats:
            for fn, out in ((review, reviews), (ingestion, ingests)):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return {
        "insert_p50_ms": round(percentile(inserts, 50) * 1000, 3),
        "insert_p95_ms": round(percentile(inserts, 95) * 1000, 3),
        "review_median_ms": round(median(reviews) * 1000, 2),
        "ingestion_query_median_ms": round(median(ingests) * 1000, 2),
        "ingestion_query_rows": read[0],
    }


def measure_store(workdir: Path, budget: Budget) -> dict[str, Any]:
    """The store filled to each of ``budget.store_sizes`` in turn (module doc, 3)."""
    # Imported where it is measured, not by --list or the tests (SQLAlchemy, pydantic).
    from slmops.tasks.core.config import load_params
    from slmops.tasks.feedback.store import FeedbackStore, make_engine

    params = load_params(REPO / "params.yaml")
    labels = [f"label_{i}" for i in range(77)]
    db = workdir / "feedback.db"
    free = shutil.disk_usage(workdir).free
    need = max(budget.store_sizes) * BYTES_PER_ROW_BOUND
    sizes = [n for n in budget.store_sizes if n * BYTES_PER_ROW_BOUND < free]
    rows: list[dict[str, Any]] = []
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    # The schema as the service makes it (migrations), then the bulk fill.
    FeedbackStore(make_engine(f"sqlite:///{db}", workdir)).close()
    have = 0
    try:
        for n in sizes:
            fill = fill_store(db, have, n, labels, t0, seed=n)
            have = n
            store = FeedbackStore(make_engine(f"sqlite:///{db}", workdir))
            try:
                figures = measure_sizes(
                    store,
                    budget,
                    labels,
                    params.serve.review_limit,
                    params.feedback.ingest_chunk_rows,
                )
            finally:
                store.close()
            have += budget.inserts + 1  # the timed inserts added rows
            rows.append(
                {
                    "predictions": n,
                    **figures,
                    "db_size_mib": db_size_mib(db),
                    "fill_s": fill["seconds"],
                    "fill_rows_per_s": round(fill["rows"] / max(fill["seconds"], 1e-9)),
                    "feedback_rows_added": fill["feedback_rows"],
                }
            )
    finally:
        for p in workdir.glob("feedback.db*"):
            p.unlink(missing_ok=True)
    out: dict[str, Any] = {"rows": rows, "free_disk_gib": round(free / 2**30, 1)}
    if len(sizes) < len(budget.store_sizes):
        out["skipped"] = (
            f"sizes above {sizes[-1] if sizes else 0:,}: {need / 2**30:.1f} GiB wanted, "
            f"{free / 2**30:.1f} GiB free"
        )
    return out


# -- 4: the soak ----------------------------------------------------------------------------


def measure_soak(workdir: Path, budget: Budget) -> dict[str, Any]:
    """The service under closed-loop load at concurrency 8 for ``budget.soak_s``, its RSS
    sampled every ``budget.sample_s`` (module doc, 4)."""
    parent = bench_params(workdir / "parent", {})
    texts, labels = test_texts(parent)
    spec = resolve_model(parent, None, workdir, labels)
    cmd = serve_cmd(spec, workdir / "soak", free_port(), {})
    samples: list[tuple[float, float]] = []
    counts = {"requests": 0, "ok": 0}
    with started({"soak": cmd}, workdir) as services:
        s = services["soak"]
        requests = [post_bytes(s.port, "/predict", {"text": t}) for t in texts]
        stop = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while True:
                mb = rss_mb(s.proc.pid)
                if mb is not None:
                    samples.append((round(time.monotonic() - start, 1), round(mb, 1)))
                if stop.wait(budget.sample_s):
                    return

        sampler = threading.Thread(target=sample, name="soak-rss", daemon=True)
        sampler.start()
        try:
            offset = 0
            while time.monotonic() - start < budget.soak_s:
                run = load(s, s.port, requests, 64, CONCURRENCY, offset=offset)
                offset += 64
                counts["requests"] += run.requests
                counts["ok"] += len(run.latencies)
        finally:
            stop.set()
            sampler.join()
        seconds = time.monotonic() - start
    warm = [v for t, v in samples if t <= budget.warmup_s]
    after = [v for t, v in samples if t >= budget.warmup_s]
    slope = slope_per_10min(samples, budget.warmup_s)
    return {
        "model": spec.description,
        "seconds": round(seconds, 1),
        "concurrency": CONCURRENCY,
        **counts,
        "requests_per_s": round(counts["ok"] / seconds, 1),
        "warmup_s": budget.warmup_s,
        "rss_at_warmup_end_mib": warm[-1] if warm else None,
        "rss_final_mib": samples[-1][1] if samples else None,
        "rss_max_after_warmup_mib": max(after) if after else None,
        "slope_after_warmup_mib_per_10min": None if slope is None else round(slope, 2),
        "samples": len(samples),
        "rss_samples": samples,
    }


# -- payload --------------------------------------------------------------------------------


def _plots(res: dict[str, Any], quick: bool) -> dict[str, str]:
    """Write a PNG per curve; returns curve -> file name (in the results folder)."""
    out = results_dir(quick)
    made: dict[str, str] = {}

    def put(name: str, title: str, series: dict, xlabel: str, ylabel: str) -> None:
        plot_curves(out / f"{name}.png", title, series, xlabel=xlabel, ylabel=ylabel)
        made[name] = f"{name}.png"

    if res.get("gate"):
        rows = res["gate"]
        sizes = [r["rows"] for r in rows]
        put(
            "curve_gate",
            "Validation gate",
            {
                "validate_file": (sizes, [r["gate_median_s"] for r in rows]),
                "GX checkpoint": (sizes, [r["gx_checkpoint_median_s"] for r in rows]),
            },
            "rows",
            "seconds",
        )
    if res.get("ingest"):
        rows = res["ingest"]
        sizes = [r["rows"] for r in rows]
        put(
            "curve_ingest",
            "Feedback ingestion",
            {"ingest_feedback": (sizes, [r["ingest_feedback_s"] for r in rows])},
            "feedback rows",
            "seconds",
        )
    if res.get("store"):
        rows = res["store"]
        sizes = [r["predictions"] for r in rows]
        put(
            "curve_store_queries",
            "Feedback store: per-call cost",
            {
                "insert p50": (sizes, [r["insert_p50_ms"] for r in rows]),
                "insert p95": (sizes, [r["insert_p95_ms"] for r in rows]),
                "/review": (sizes, [r["review_median_ms"] for r in rows]),
                "ingestion query": (sizes, [r["ingestion_query_median_ms"] for r in rows]),
            },
            "predictions in the store",
            "milliseconds per call",
        )
        put(
            "curve_store_size",
            "Feedback store: size on disk",
            {"database size": (sizes, [r["db_size_mib"] for r in rows])},
            "predictions in the store",
            "MiB",
        )
    soak = res.get("soak")
    if soak and soak.get("rss_samples"):
        put_soak(out / "curve_soak.png", soak)
        made["curve_soak"] = "curve_soak.png"
    return made


def put_soak(path: Path, soak: dict[str, Any]) -> Path:
    """The soak's RSS against time (linear axes: memory over time is not a power law)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    try:
        ts, vs = zip(*soak["rss_samples"], strict=True)
        ax.plot([t / 60 for t in ts], vs, marker=".", linestyle="-")
        ax.axvline(soak["warmup_s"] / 60, linestyle=":", color="grey", label="end of warm-up")
        slope = soak.get("slope_after_warmup_mib_per_10min")
        ax.set_title(
            f"Service RSS at concurrency {soak['concurrency']}"
            + ("" if slope is None else f" (slope {slope:+.2f} MiB/10 min after warm-up)")
        )
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MiB)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _exponents(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every curve's fitted exponent and last-step slope."""
    curves: dict[str, tuple[list, list]] = {}
    if res.get("gate"):
        rows = res["gate"]
        curves["gate (validate_file)"] = (
            [r["rows"] for r in rows],
            [r["gate_median_s"] for r in rows],
        )
    if res.get("ingest"):
        rows = res["ingest"]
        curves["ingestion (ingest_feedback)"] = (
            [r["rows"] for r in rows],
            [r["ingest_feedback_s"] for r in rows],
        )
    for key, label in (
        ("insert_p50_ms", "store: predict-path insert p50"),
        ("insert_p95_ms", "store: predict-path insert p95"),
        ("review_median_ms", "store: /review query"),
        ("ingestion_query_median_ms", "store: ingestion query (fixed new rows)"),
        ("db_size_mib", "store: database size"),
    ):
        rows = res.get("store") or []
        if rows:
            curves[label] = ([r["predictions"] for r in rows], [r[key] for r in rows])
    out = {}
    for label, (sizes, costs) in curves.items():
        fit = fit_exponent(sizes, costs)
        out[label] = {"sizes": sizes, "costs": costs, "k": fit["k"], "last_step_k": fit["last_k"]}
    return out


WHY = {
    "gate (validate_file)": "reads, checks and reports every row: linear at best, with a fixed "
    "cost per call (GX, Data Docs) that flattens the small end",
    "ingestion (ingest_feedback)": "chunked (feedback.ingest_chunk_rows per data version): "
    "each chunk reads, merges and hashes the whole labeled data, so the cost per chunk grows "
    "with what came before",
    "store: predict-path insert p50": "one B-tree insert per index: O(log n), flat in practice",
    "store: predict-path insert p95": "tail of the same; WAL checkpoints show here",
    "store: /review query": "least confident unreviewed predictions: a partial index of the "
    "unreviewed rows in the queue's order (predictions.reviewed, migration 0005), so a page "
    "reads its rows and skips none: should not depend on the store's size",
    "store: ingestion query (fixed new rows)": "fixed number of new rows after the watermark: "
    "should not depend on the store's size",
    "store: database size": "bytes per row constant: linear",
}


def _targets(res: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    out = []
    for label, e in res.get("exponents", {}).items():
        out.append(curve_target(label, e["sizes"], e["costs"], WHY.get(label, "")))
    soak = res.get("soak")
    if soak:
        rss = soak["rss_at_warmup_end_mib"] or 0.0
        bound = max(MAX_SLOPE_MIB, MAX_SLOPE_FRACTION * rss)
        slope = soak["slope_after_warmup_mib_per_10min"]
        met = None if quick or slope is None else slope < bound
        note = (
            f"{soak['seconds']:.0f} s at concurrency {soak['concurrency']}, {soak['ok']} requests "
            f"answered; RSS {soak['rss_at_warmup_end_mib']} MiB after {soak['warmup_s']:.0f} s "
            f"of warm-up, {soak['rss_final_mib']} MiB at the end. The bound is the larger of "
            f"{MAX_SLOPE_MIB:g} MiB and {MAX_SLOPE_FRACTION:.0%} of RSS per 10 min: below it, a "
            "15-minute window cannot tell a leak from the allocator's own drift (arenas, "
            "fragmentation: a few MiB); a slower leak needs a longer soak"
        )
        if quick:
            note = "quick mode: a 1-minute soak cannot measure a slope per 10 min; " + note
        out.append(
            target(
                "service memory after warm-up (soak)",
                f"slope < {bound:.1f} MiB per 10 min",
                None if slope is None else f"{slope:+.2f} MiB per 10 min",
                met,
                note,
            )
        )
    return out


NOTES = [
    "Exponent k of cost ~ size^k by least squares on log-log axes; 'last step' is the slope "
    f"between the two largest sizes. Target k <= {MAX_EXPONENT} for both: nothing grows "
    "faster than linearly (0.1 of tolerance for noise on a shared machine with three sizes). "
    "Per-call queries (insert, /review, ingestion query) should be near 0.",
    "Gate: validate_file on the pipeline benchmark's synthetic rows, sizes alternating after "
    "a warm-up call. Ingestion: ingest_feedback in a fresh project copy per size, the store "
    "filled with that many predictions and feedback rows.",
    "Store: SQLite (WAL, synchronous=NORMAL as the service opens it), filled in bulk to each "
    f"size in turn; {FEEDBACK_FRACTION:.0%} of predictions with feedback, half on the least "
    "confident (the review queue's head), half random. Insert: insert_predictions of one "
    "row per transaction; /review: review_queue(serve.review_limit); ingestion query: "
    "feedback_since + daily-cap counts + held/revoked ids with a fixed number of new rows.",
    "Soak: the service as the service benchmark starts it, closed-loop /predict at "
    f"concurrency {CONCURRENCY}; RSS from /proc; slope by least squares after warm-up.",
]


def run(quick: bool) -> dict[str, Any]:
    """Measure every curve; the payload the harness records."""
    budget = QUICK if quick else FULL
    res: dict[str, Any] = {"budget": budget.label}
    attempt = Attempts()
    workdir = Path(tempfile.mkdtemp(prefix="slmops-bench-curves-"))

    try:
        root = workdir / "project"
        project = attempt("project", lambda: make_project(root))
        if project is not None:
            env = bench_env(root)
            gate = attempt("gate", lambda: measure_gate(root, env, budget))
            if gate:
                # A list of rows is a table in RESULTS.md; the one-time figures beside it.
                res["gate"] = gate.pop("rows")
                res["gate_one_time"] = gate
            res["ingest"] = attempt("ingest", lambda: measure_ingest(root, budget))
        store = attempt("store", lambda: measure_store(workdir, budget))
        if store:
            res["store"] = store.pop("rows")
            res["store_disk"] = store
        res["soak"] = attempt("soak", lambda: measure_soak(workdir / "soak", budget))
    finally:
        if not os.environ.get("SLMOPS_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    res = {k: v for k, v in res.items() if v is not None}
    res["exponents"] = _exponents(res)
    plots = _plots(res, quick)
    samples = None
    if res.get("soak"):
        # In the plot and the result file, not in RESULTS.md's tables.
        samples = res["soak"].pop("rss_samples")
    return {
        "results": attempt.record(res),
        "targets": _targets(res, quick),
        "notes": NOTES,
        # Linked from RESULTS.md (benchmarks.report), beside the tables.
        "plots": plots,
        "soak_rss_samples": samples,
        "settings": {
            "budget": budget.label,
            "gate_rows": list(budget.gate_rows),
            "ingest_rows": list(budget.ingest_rows),
            "store_sizes": list(budget.store_sizes),
            "soak_s": budget.soak_s,
        },
    }
