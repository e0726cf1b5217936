"""The CPU precision benchmark's serving measurement on a tiny randomly initialised model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks import bench_precision as bp
from tests.conftest import SEED, TINY_LABELS
from tests.tasks.tiny_model import make_tiny_model


def test_serving_measure_compares_fp32_and_bf16(tmp_path: Path, monkeypatch) -> None:
    import torch

    before = torch.get_num_threads()
    # One thread: on a shared machine, two OpenMP threads of a tiny model mostly wait.
    monkeypatch.setattr(bp.os, "cpu_count", lambda: 1)
    folder = make_tiny_model(tmp_path / "model", TINY_LABELS)
    seed = pd.read_csv(SEED / "test.csv", dtype=str).rename(columns={"category": "label"})
    test = seed[seed["label"].isin(TINY_LABELS)].groupby("label").head(3).reset_index(drop=True)
    try:
        out = bp.serving_measure(folder, test, rounds=2, singles=2)
    finally:
        torch.set_num_threads(before)

    rows = {r["precision"]: r for r in out["rows"]}
    assert list(rows) == ["fp32", "bf16"] and rows["bf16"]["format"] == "torch-bf16"
    for r in rows.values():
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["batch_32_examples_per_s"] > 0 and 0.0 <= r["accuracy"] <= 1.0
    assert rows["fp32"]["accuracy_drop_pt"] == 0.0
    assert (
        out["speed"]
        == rows["bf16"]["batch_32_examples_per_s"] / rows["fp32"]["batch_32_examples_per_s"]
    )
    assert out["test_rows"] == len(test) and out["rounds"] == 2
