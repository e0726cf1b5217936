"""The pipeline benchmark's arithmetic and synthetic data (the measurements run in `make bench`)."""

from __future__ import annotations

import pytest

from benchmarks.bench_pipeline import (
    Step,
    _targets,
    fixed_and_rate,
    orchestration_overhead,
    peak_in_window,
    perturbed_texts,
)
from slmops.tasks.data.dataset import normalise


def test_overhead_is_the_wall_time_beyond_the_steps():
    steps = [Step("validate", 10.0, 12.0), Step("train", 12.5, 92.5), Step("register", 93.0, 96.0)]
    out = orchestration_overhead(100.0, steps)
    assert out["steps_s"] == pytest.approx(85.0)
    assert out["busy_s"] == pytest.approx(85.0)
    assert out["overhead_s"] == pytest.approx(15.0)
    assert out["overhead_fraction"] == pytest.approx(0.15)


def test_overlapping_steps_count_once_in_busy_time():
    steps = [Step("a", 0.0, 10.0), Step("b", 5.0, 15.0), Step("c", 20.0, 21.0)]
    out = orchestration_overhead(30.0, steps)
    assert out["steps_s"] == pytest.approx(21.0)
    assert out["busy_s"] == pytest.approx(16.0)


@pytest.mark.parametrize(
    ("wall", "steps"), [(0.0, []), (-1.0, []), (10.0, [Step("backwards", 5.0, 4.0)])]
)
def test_overhead_refuses_impossible_timings(wall, steps):
    with pytest.raises(ValueError):
        orchestration_overhead(wall, steps)


def test_peak_in_window_only_counts_samples_inside_it():
    samples = [(0.0, 100), (1.0, 900), (2.0, 300), (3.0, 500), (4.0, 950)]
    assert peak_in_window(samples, 1.5, 3.0) == 500
    assert peak_in_window(samples, 5.0, 6.0) is None


def test_fixed_cost_and_rate_from_two_sizes():
    # 0.5 s per call plus 100k rows/s: 0.6 s for 10k rows, 1.5 s for 100k.
    fixed, rate = fixed_and_rate(10_000, 0.6, 100_000, 1.5)
    assert fixed == pytest.approx(0.5)
    assert rate == pytest.approx(100_000)
    assert fixed_and_rate(10_000, 0.6, 100_000, 0.55) == (0.6, None)  # noise: no rate
    with pytest.raises(ValueError):
        fixed_and_rate(100, 1.0, 100, 2.0)


def test_perturbed_texts_are_distinct_new_and_reproducible():
    base = ["where is my card", "I lost my card", "what is the exchange rate today"]
    avoid = ["Where is my card please"]
    texts, origin = perturbed_texts(base, 200, avoid, seed=3)
    keys = [normalise(t) for t in texts]
    assert len(set(keys)) == 200
    assert not set(keys) & {normalise(t) for t in [*base, *avoid]}
    assert all(0 <= i < len(base) for i in origin)
    assert perturbed_texts(base, 200, avoid, seed=3) == (texts, origin)


def test_quick_mode_does_not_judge_the_overhead_target():
    flow = {
        "overhead_fraction": 0.3,
        "wall_s (flow call)": 60.0,
        "prefect_api_start_s": 10.0,
        "sum_of_steps_s": 42.0,
        "overhead_fraction_within_run": 0.01,
    }
    quick = _targets({"flow": flow}, quick=True)[0]
    full = _targets({"flow": flow}, quick=False)[0]
    assert quick["met"] is None and "quick" in quick["note"]
    assert full["met"] is False and full["measured"] == "30.0%"
