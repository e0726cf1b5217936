"""The cost curves' arithmetic and plots (the measurements run in `make bench`): the
exponent fit, the memory slope, the targets and the PNG writers; no timings."""

from __future__ import annotations

import pytest

from benchmarks.bench_curves import (
    MAX_EXPONENT,
    _exponents,
    _targets,
    curve_target,
    fit_exponent,
    plot_curves,
    put_soak,
    slope_per_10min,
)

SIZES = [1_000, 10_000, 100_000, 1_000_000]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("power", "k"), [(1, 1.0), (2, 2.0), (0.5, 0.5), (0, 0.0)])
def test_the_fit_finds_the_exponent_of_a_power_law(power, k):
    fit = fit_exponent(SIZES, [3e-6 * n**power for n in SIZES])
    assert fit["k"] == pytest.approx(k, abs=1e-3)
    assert fit["last_k"] == pytest.approx(k, abs=1e-3)
    assert fit["c"] == pytest.approx(3e-6, rel=1e-3)


def test_a_fixed_cost_flattens_the_fit_and_the_last_step_shows_the_growth():
    # 1 s per call plus a quadratic part that only shows at the large end.
    costs = [1.0 + 1e-10 * n**2 for n in SIZES]
    fit = fit_exponent(SIZES, costs)
    assert fit["k"] < MAX_EXPONENT < fit["last_k"]
    assert fit["last_k"] > 1.5


def test_the_fit_leaves_out_what_has_no_logarithm_and_needs_two_sizes():
    assert fit_exponent([10, 100, 1000], [0.0, 2.0, 20.0])["k"] == pytest.approx(1.0)
    assert fit_exponent([10], [1.0]) == {"k": None, "c": None, "last_k": None}
    assert fit_exponent([10, 10], [1.0, 2.0])["k"] is None


def test_the_curve_target_is_met_only_when_no_part_grows_faster_than_linearly():
    linear = curve_target("gate", SIZES, [2e-5 * n for n in SIZES], "why")
    assert linear["met"] is True
    assert "k = 1.00" in linear["measured"]
    steep = curve_target("ingest", SIZES, [1.0 + 1e-10 * n**2 for n in SIZES], "why")
    assert steep["met"] is False
    assert curve_target("x", [10], [1.0], "why")["met"] is None


def test_the_memory_slope_after_warm_up():
    flat = [(t, 500.0 + (50.0 if t < 60 else 0.0)) for t in range(0, 1200, 5)]
    assert slope_per_10min(flat, 60) == pytest.approx(0.0, abs=1e-9)
    leak = [(t, 500.0 + t / 60) for t in range(0, 1200, 5)]  # 1 MiB a minute
    assert slope_per_10min(leak, 300) == pytest.approx(10.0)
    assert slope_per_10min(leak, 2000) is None


def test_the_plots_are_written_as_png(tmp_path):
    path = plot_curves(
        tmp_path / "sub" / "curve.png",
        "Gate",
        {
            "linear": (SIZES, [2e-5 * n for n in SIZES]),
            "quadratic": (SIZES, [1e-12 * n**2 for n in SIZES]),
            "nothing": (SIZES, [0.0] * len(SIZES)),
        },
        xlabel="rows",
        ylabel="seconds",
    )
    assert path.read_bytes().startswith(PNG)
    soak = {
        "rss_samples": [(t, 500.0) for t in range(0, 60, 2)],
        "warmup_s": 20.0,
        "concurrency": 8,
        "slope_after_warmup_mib_per_10min": 0.0,
    }
    assert put_soak(tmp_path / "soak.png", soak).read_bytes().startswith(PNG)


def test_every_curve_gets_its_exponent_and_a_target_and_the_soak_is_judged_in_full_mode():
    res = {
        "gate": [{"rows": n, "gate_median_s": 0.5 + 1e-5 * n} for n in SIZES[1:]],
        "ingest": [{"rows": n, "ingest_feedback_s": 1e-10 * n**2} for n in SIZES[1:]],
        "store": [
            {
                "predictions": n,
                "insert_p50_ms": 0.1,
                "insert_p95_ms": 0.3,
                "review_median_ms": 1e-5 * n,
                "ingestion_query_median_ms": 25.0,
                "db_size_mib": n / 2500,
            }
            for n in SIZES[1:]
        ],
        "soak": {
            "seconds": 1200.0,
            "concurrency": 8,
            "ok": 9000,
            "warmup_s": 300.0,
            "rss_at_warmup_end_mib": 700.0,
            "rss_final_mib": 760.0,
            "slope_after_warmup_mib_per_10min": 40.0,
        },
    }
    res["exponents"] = _exponents(res)
    assert res["exponents"]["store: ingestion query (fixed new rows)"]["k"] == pytest.approx(0)
    assert res["exponents"]["store: database size"]["k"] == pytest.approx(1)
    met = {t["what"]: t["met"] for t in _targets(res, quick=False)}
    assert met["gate (validate_file): exponent of cost ~ size^k"] is True
    assert met["ingestion (ingest_feedback): exponent of cost ~ size^k"] is False
    assert met["store: /review query: exponent of cost ~ size^k"] is True

    def soak(quick: bool) -> dict:
        return next(t for t in _targets(res, quick=quick) if "soak" in t["what"])

    assert soak(quick=False)["met"] is False  # 40 MiB per 10 min: a leak
    assert soak(quick=True)["met"] is None  # a 1-minute soak cannot tell
