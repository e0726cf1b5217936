"""The benchmark harness: interleaving, summaries, result files, the report and the runner."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import benchmarks.common as common
from benchmarks.__main__ import discover, run_child, select, target_lines
from benchmarks.common import (
    alternate,
    median,
    percentile,
    percentiles,
    ratio,
    run_isolated,
    sample_peak_rss,
    summary,
    target,
    write_result,
)
from benchmarks.report import fmt, load, render


def allocate(mib: int) -> int:
    """Touch ``mib`` MiB (runs in a spawned process; module-level so it pickles)."""
    block = bytearray(mib * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    return len(block)


# --------------------------------------------------------------------------- comparisons


def test_alternate_interleaves_the_sides_and_drops_warmup() -> None:
    calls: list[str] = []

    def side(name: str):
        def fn() -> float:
            calls.append(name)
            return float(len(calls))

        return fn

    samples = alternate({"a": side("a"), "b": side("b"), "c": side("c")}, rounds=2, warmup=1)
    assert calls == ["a", "b", "c"] * 3
    assert samples == {"a": [4.0, 7.0], "b": [5.0, 8.0], "c": [6.0, 9.0]}
    with pytest.raises(ValueError):
        alternate({"a": side("a")}, rounds=0)


def test_median_percentile_ratio_summary() -> None:
    xs = [5.0, 1.0, None, 3.0, float("nan"), 2.0, 4.0]
    assert median(xs) == 3.0
    assert median([None]) is None
    clean = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for p in (0, 37.5, 50, 95, 99, 100):
        assert percentile(clean, p) == pytest.approx(np.percentile(clean, p))
    assert percentiles(clean, (50, 99.9)).keys() == {"p50", "p99.9"}
    with pytest.raises(ValueError):
        percentile(clean, 101)
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None and ratio(1.0, 0) is None
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_run_isolated_measures_the_child_alone() -> None:
    out = run_isolated(allocate, 64)
    assert out.result == 64 * 2**20
    assert out.peak_rss_mb >= 64
    assert out.seconds >= 0


def test_run_isolated_does_not_count_the_parent_s_memory() -> None:
    # A spawned child's ru_maxrss includes its parent's peak (Linux folds the forked
    # image's into it at exec): a parent holding 400 MiB made every side report it.
    parent = bytearray(400 * 2**20)
    parent[::4096] = b"x" * len(parent[::4096])
    out = run_isolated(allocate, 1)
    assert out.peak_rss_mb < 300
    del parent


def test_sample_peak_rss_sees_a_block() -> None:
    with sample_peak_rss(interval_s=0.01) as peak:
        block = bytearray(32 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
    assert peak.mb is not None and peak.mb >= 32


# --------------------------------------------------------------------------- results and report


def payload() -> dict:
    return {
        "results": {
            "wall_s": 12.5,
            "sides": [
                {"side": "ours", "examples_per_s": 90.0},
                {"side": "Trainer", "examples_per_s": 40.0, "note": "a | pipe"},
            ],
            "ratios": {"ours / Trainer": 2.25},
            "by_side": {"ours": {"tokens_per_s": 1500.0}, "Trainer": {"tokens_per_s": 700.0}},
        },
        "targets": [
            target("throughput vs Trainer", ">= 2x", 2.25, True),
            target("accuracy vs Trainer", "within 0.3 pt", -0.5, False, "one seed only"),
            target("GPU MFU", "reported", None, None, "no GPU on this machine"),
            target("peak memory", "reported", "700 MiB", None),
        ],
        "notes": ["sides alternated in one process"],
    }


def test_write_result_and_render(tmp_path: Path) -> None:
    path = write_result(
        "train", payload(), quick=True, command="python -m benchmarks", out_dir=tmp_path
    )
    record = json.loads(path.read_text())
    assert {
        "name",
        "command",
        "quick",
        "machine",
        "started",
        "finished",
        "results",
        "targets",
    } <= set(record)
    assert record["machine"]["cores"] >= 1
    assert "torch" in record["machine"]["libraries"]

    page = render(load(directory=tmp_path), quick=True)
    assert "1 met, 1 not met, 1 reported without a goal, 1 not measured." in page
    assert "| 700 MiB | reported |" in page
    assert "**NOT met**" in page and "one seed only" in page
    assert "no GPU on this machine" in page
    assert "`python -m benchmarks`" in page
    assert "| ours | 90.0 |" in page  # a list of rows became a table
    assert "a \\| pipe" in page  # cells cannot break the table
    assert "| Trainer | 700.0 |" in page  # a dict of rows too
    assert "quick mode" in page.lower()


def test_render_shows_failures(tmp_path: Path) -> None:
    write_result("broken", {"error": "Traceback: boom"}, quick=False, out_dir=tmp_path)
    page = render(load(directory=tmp_path))
    assert "**FAILED**" in page and "Traceback: boom" in page
    assert "1 benchmark(s) failed" in page


def test_fmt() -> None:
    assert fmt(None) == "–"
    assert fmt(1234567.8) == "1,234,568"
    assert fmt(123.456) == "123.5"
    assert fmt(0.0012345) == "0.00123"
    assert fmt(True) == "yes"
    assert fmt([1, 2.5, 64.49]) == "1, 2.5, 64.5"


# --------------------------------------------------------------------------- runner


def test_discover_and_select(tmp_path: Path) -> None:
    (tmp_path / "bench_alpha.py").write_text('"""Alpha: first."""\nNAME = "a"\n')
    (tmp_path / "bench_beta.py").write_text("def run(quick):\n    return {}\n")
    (tmp_path / "helpers.py").write_text("")
    benches = discover(tmp_path)
    assert [(b.name, b.module, b.summary) for b in benches] == [
        ("a", "benchmarks.bench_alpha", "Alpha: first."),
        ("beta", "benchmarks.bench_beta", ""),
    ]
    assert [b.name for b in select(benches, ["beta", "bench_alpha", "a"])] == ["beta", "a"]
    assert select(benches, None) == benches
    with pytest.raises(SystemExit, match="unknown benchmark"):
        select(benches, ["nope"])


def test_the_real_benchmarks_are_discoverable() -> None:
    names = [b.name for b in discover()]
    assert {"train", "precision"} <= set(names)
    assert len(names) == len(set(names))


def test_run_child_records_results_and_failures(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(common, "QUICK_RESULTS_DIR", tmp_path)
    ok = types.ModuleType("fake_bench_ok")
    ok.NAME = "ok"
    ok.run = lambda quick: {"results": {"quick": quick}, "targets": []}
    bad = types.ModuleType("fake_bench_bad")
    bad.NAME = "bad"

    def boom(quick: bool) -> dict:
        raise RuntimeError("boom")

    bad.run = boom
    monkeypatch.setitem(sys.modules, "fake_bench_ok", ok)
    monkeypatch.setitem(sys.modules, "fake_bench_bad", bad)

    assert run_child("fake_bench_ok", quick=True) == 0
    assert json.loads((tmp_path / "ok.json").read_text())["results"] == {"quick": True}
    assert run_child("fake_bench_bad", quick=True) == 1
    failed = json.loads((tmp_path / "bad.json").read_text())
    assert "RuntimeError: boom" in failed["error"]


def test_render_links_the_plots_and_the_runner_prints_every_target(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(common, "QUICK_RESULTS_DIR", tmp_path)
    write_result("curves", {**payload(), "plots": {"gate": "curve_gate.png"}}, quick=True)
    # Quick: the page sits beside the plots; full: benchmarks/RESULTS.md, plots in results/.
    assert "![gate](curve_gate.png)" in render(load(quick=True), quick=True)
    assert "![gate](results/curve_gate.png)" in render(load(quick=True), quick=False)
    lines = target_lines("curves", quick=True)
    assert "throughput vs Trainer: 2.25 (target >= 2x): met" in lines
    assert "accuracy vs Trainer: -0.5 (target within 0.3 pt): NOT met" in lines
    assert len(lines) == 4
    assert target_lines("absent", quick=True) == []
