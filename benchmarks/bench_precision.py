"""CPU precision: fp32 vs bf16 autocast for training and for serving, against the matmul limit.

Three measurements, in this order:

1. **The limit.** A 2048² matmul (1024² in quick mode) in fp32 and in bf16,
   in GFLOP/s: the ceiling for dense work in each precision on this machine.
   One training token of MiniLM-L6 costs about 65 MFLOP (6 × its linear
   layers' parameters), so the ceiling in tokens/s is GFLOP/s ÷ 0.065.
2. **Training.** ``slmops.tasks.model.train.train_model`` (the pipeline's code path, through
   ``benchmarks.bench_train.train_side``) with ``train.precision`` ``fp32`` and
   ``bf16`` (torch CPU autocast: matmuls in bf16, weights, optimizer and
   reductions in fp32) on the same stratified subset, one epoch, alternated,
   each in a fresh process; real tokens/s as a fraction of each precision's
   ceiling.
3. **Serving.** The champion (else the base model with an untrained head, see
   ``benchmarks.bench_formats.resolve``) loaded as ``serve.format`` ``torch``
   and ``torch-bf16``: accuracy on a stratified test subset, batch-1 latency and
   batch-32 throughput, alternated round by round in one process.

Accuracy at the training default budget is measured only where bf16 trains
faster (full mode: the default budget in both precisions): where it is slower
there is nothing to gain from it, and the default (``precision: auto`` = fp32
on a CPU) stands. Likewise the export at promotion checks ``torch-bf16`` only
on a CPU with native bf16.

Why bf16 can be slower: torch has fast CPU bf16 GEMMs only on CPUs with
AVX-512 BF16 or AMX (oneDNN); elsewhere (AVX2) bf16 matmuls run a generic
kernel, several times slower than fp32 forward and slower still for the
transposed operands of the backward pass. The machine description lists the
CPU flags that decide it.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.bench_train import settings, train_side
from benchmarks.common import alternate, matmul_gflops, median, ratio, run_isolated, target

NAME = "precision"

PRECISIONS = ("fp32", "bf16")
QUICK = {"train_examples": 96, "rounds": 1, "matmul_n": 1024}
FULL = {"train_examples": 320, "rounds": 2, "matmul_n": 2048}
# Serving: (test rows per class, timing rounds, batch-1 calls per round). bf16 without
# native kernels is several times slower than fp32, which bounds how much fits.
SERVING_QUICK = (2, 2, 3)
SERVING_FULL = (5, 6, 10)
SERVING_FORMATS = {"fp32": "torch", "bf16": "torch-bf16"}


def serving(quick: bool, model_dir: str | None = None) -> dict[str, Any]:
    """fp32 vs bf16 autocast serving (module doc, 3) on the champion (or ``model_dir``)."""
    import shutil
    import tempfile
    from pathlib import Path

    from benchmarks.bench_formats import per_class, resolve
    from benchmarks.bench_service import bench_params
    from slmops.tasks.data.dataset import load_label_set, read_test

    per, rounds, singles = SERVING_QUICK if quick else SERVING_FULL
    workdir = Path(tempfile.mkdtemp(prefix="slmops-bench-precision-"))
    try:
        params = bench_params(workdir / "params", {})
        test = per_class(read_test(params), per)
        model = resolve(params, workdir, load_label_set(params), model_dir)
        out = serving_measure(model.folder, test, rounds, singles)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {**out, "model": model.description, "trained": model.trained}


def serving_measure(folder: Any, test: Any, rounds: int, singles: int) -> dict[str, Any]:
    """Accuracy on ``test``, batch-1 latency and batch-32 throughput of ``folder`` served
    in fp32 and in bf16 autocast, alternated: a row per precision and the speed ratio."""
    from benchmarks.bench_formats import BATCH, Budget, calls, plan_rounds, timed_side
    from benchmarks.bench_service import latency_ms
    from slmops.tasks.model.inference import load_predictor
    from slmops.tasks.task_types import SequenceClassification

    budget = Budget("serving", None, rounds, warmup=1, singles=singles, batches=1, memory=False)
    task = SequenceClassification()
    predictors = {
        p: load_predictor(fmt, folder, task=task, device="cpu", num_threads=os.cpu_count())
        for p, fmt in SERVING_FORMATS.items()
    }
    accuracy = task.format_score
    acc = {p: accuracy(pred, test) for p, pred in predictors.items()}
    plan = plan_rounds(test["text"].astype(str).tolist(), budget)
    fns = {p: timed_side(*calls(pred), plan) for p, pred in predictors.items()}
    samples = alternate(fns, budget.rounds, warmup=budget.warmup)
    rows = [
        {
            "precision": p,
            "format": SERVING_FORMATS[p],
            **latency_ms([x for r in samples[p] for x in r["latencies"]]),
            "batch_32_examples_per_s": median([r["throughput"] for r in samples[p]]),
            "accuracy": round(acc[p], 4),
            "accuracy_drop_pt": round((acc["fp32"] - acc[p]) * 100, 2),
        }
        for p in SERVING_FORMATS
    ]
    return {
        "rows": rows,
        "speed": ratio(rows[1]["batch_32_examples_per_s"], rows[0]["batch_32_examples_per_s"]),
        "test_rows": len(test),
        "rounds": rounds,
        "batch": BATCH,
    }


def _side(precision: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec = {**spec, "train": {**spec["train"], "precision": precision}}
    out = run_isolated(train_side, "ours", spec)
    res = dict(out.result)
    print(
        f"[precision] {precision}: {res['examples_per_s']:.1f} examples/s, "
        f"{res['tokens_per_s']:.0f} tokens/s",
        flush=True,
    )
    return res


def run(quick: bool) -> dict[str, Any]:
    """Measure the matmul limits, then fp32 vs bf16 training and serving (module doc)."""
    import torch

    mode = QUICK if quick else FULL
    base = settings(quick=True)  # a subset, one epoch
    base.update(train_examples=mode["train_examples"], val_per_class=1, test_per_class=1)
    torch.set_num_threads(base["threads"])
    if torch.cuda.is_available():
        return _not_on_cpu()

    n = mode["matmul_n"]
    gflops = {
        "fp32": matmul_gflops("float32", n),
        # bf16 without native kernels takes tens of seconds per 2048² matmul: capped.
        "bf16": matmul_gflops("bfloat16", n, max_seconds=45.0),
    }
    print(
        f"[precision] {n}² matmul: fp32 {gflops['fp32']:.1f}, bf16 {gflops['bf16']:.1f} GFLOP/s",
        flush=True,
    )

    samples = alternate({p: (lambda p=p: _side(p, base)) for p in PRECISIONS}, mode["rounds"])
    flops = samples["fp32"][0]["flops_per_token"]
    rows = []
    for p in PRECISIONS:
        runs = samples[p]
        tokens = median([r["tokens_per_s"] for r in runs])
        ceiling = gflops[p] * 1e9 / flops
        rows.append(
            {
                "precision": p,
                "matmul_gflops": gflops[p],
                "tokens_per_s_ceiling": ceiling,
                "examples_per_s": median([r["examples_per_s"] for r in runs]),
                "real_tokens_per_s": tokens,
                "fraction_of_own_ceiling": ratio(tokens, ceiling),
                "fraction_of_fp32_ceiling": ratio(tokens, gflops["fp32"] * 1e9 / flops),
                "peak_rss_mb": median([r["peak_rss_mb"] for r in runs]),
                "runs": len(runs),
            }
        )
    by = {r["precision"]: r for r in rows}
    speed = ratio(by["bf16"]["real_tokens_per_s"], by["fp32"]["real_tokens_per_s"])
    mm_speed = ratio(gflops["bf16"], gflops["fp32"])
    bf16_faster = speed is not None and speed > 1.0

    accuracy: dict[str, Any] = {}
    if bf16_faster and not quick:
        full = settings(quick=False)
        for p in PRECISIONS:
            accuracy[p] = _side(p, full)
        gap = accuracy["bf16"]["test_accuracy"] - accuracy["fp32"]["test_accuracy"]
        acc_target = target(
            "bf16 training accuracy vs fp32 (default budget)",
            "within 0.3 pt",
            f"{gap * 100:+.2f} pt",
            gap >= -0.003,
            "one seed per precision",
        )
    else:
        acc_target = target(
            "bf16 training accuracy vs fp32 (default budget)",
            "within 0.3 pt",
            None,
            None,
            "quick mode"
            if quick and bf16_faster
            else f"not measured: bf16 trains at {speed:.2f}× fp32's speed here, so there is "
            "no speed to buy with accuracy; fp32 stays the default",
        )

    served = serving(quick)
    serve_speed = served["speed"]
    serve_drop = served["rows"][1]["accuracy_drop_pt"]
    print(f"[precision] serving: bf16 = {serve_speed:.2f}x fp32 batch-32 throughput", flush=True)

    default_fast = not bf16_faster  # precision auto = fp32 on a CPU
    cpu_flags = _cpu_flags()
    notes = [
        f"Training subset: {base['train_examples']} stratified rows of the train split, one "
        f"epoch, batch {base['train']['batch_size']}, {base['threads']} threads; "
        f"{mode['rounds']} round(s) alternated fp32 → bf16, each side in a fresh process.",
        f"{n}² matmul: bf16 runs at {mm_speed:.2f}× fp32 here (CPU flags: "
        f"{', '.join(cpu_flags) or 'none'}; fast bf16 GEMMs need avx512_bf16 or amx_bf16).",
        "bf16 here is torch CPU autocast (what train.precision: bf16 does): matmuls and "
        "linear layers in bf16, weights, optimizer state, softmax and norms in fp32.",
    ]
    if not bf16_faster:
        notes.append(
            "Without native bf16 kernels, torch's bf16 matmuls on this CPU run a generic "
            "kernel; a profile of one training step put the backward matmuls (transposed "
            "operands) about 20× slower than fp32 and the forward ones about 10×, which is "
            "where the training slowdown comes from. The default stays fp32 on a CPU."
        )
    if (by["bf16"]["fraction_of_own_ceiling"] or 0) > 1:
        notes.append(
            "bf16 training exceeds its 'ceiling': the generic bf16 kernel is slower on a "
            f"{n}² matmul than on the model's smaller ones, so that matmul bounds nothing here."
        )
    notes.append(
        f"Serving: {served['model']}; {served['test_rows']} test rows (stratified) for "
        f"accuracy, {served['rounds']} alternated rounds of batch-1 calls and one batch of "
        f"{served['batch']}, {os.cpu_count()} threads. The export at promotion checks "
        "torch-bf16 only on a CPU with native bf16, so serve.format auto never picks it here."
    )
    results: dict[str, Any] = {
        "sides": rows,
        "serving": served["rows"],
        "ratios": {
            "bf16 / fp32 training tokens/s": speed,
            "bf16 / fp32 matmul": mm_speed,
            "bf16 / fp32 serving batch-32 examples/s": serve_speed,
        },
    }
    if accuracy:
        results["accuracy (default budget)"] = {
            p: {k: accuracy[p][k] for k in ("test_accuracy", "test_macro_f1", "examples_per_s")}
            for p in PRECISIONS
        }
    return {
        "results": results,
        "targets": [
            target(
                "the faster CPU training precision is the default (precision: auto)",
                "auto picks the faster where accuracy holds",
                f"bf16 = {speed:.2f}× fp32 tokens/s; auto = fp32",
                default_fast if not bf16_faster else None,
                ""
                if default_fast
                else "bf16 is faster here: make it the CPU default if its accuracy holds",
            ),
            target(
                "training tokens/s as a fraction of the CPU limit",
                "reported",
                f"fp32 {by['fp32']['fraction_of_own_ceiling']:.0%} of its ceiling, "
                f"bf16 {by['bf16']['fraction_of_own_ceiling']:.0%} of its ceiling",
                None,  # a figure, no goal: RESULTS.md shows it as reported
            ),
            acc_target,
            target(
                "the faster CPU serving precision is the default (serve.format: auto)",
                "bf16 only where it is faster and accuracy holds (within 0.5 pt)",
                f"bf16 = {serve_speed:.2f}× fp32 batch-32 throughput, "
                f"accuracy {-serve_drop:+.2f} pt",
                None if serve_speed is None else serve_speed <= 1.0 or serve_drop > 0.5,
                ""
                if serve_speed is not None and serve_speed <= 1.0
                else "bf16 serves faster here: list torch-bf16 in export.formats",
            ),
        ],
        "notes": notes,
        "settings": {"matmul_n": n, **{k: v for k, v in base["train"].items()}},
    }


def _cpu_flags() -> list[str]:
    from benchmarks.common import machine

    return machine()["cpu_flags"]


def _not_on_cpu() -> dict[str, Any]:
    return {
        "results": {},
        "targets": [
            target(
                "CPU bf16 vs fp32 training",
                "measured on a CPU",
                None,
                None,
                "a GPU is present: the CPU comparison is for CPU-only machines",
            )
        ],
        "notes": ["Skipped: a CUDA GPU is present (see the train benchmark's GPU path)."],
    }
