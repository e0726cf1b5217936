"""The service benchmark's own parts (no model): the load generator against its trivial
server, response parsing, the sides compared, and the targets read from results."""

from __future__ import annotations

import sys

import pytest

from benchmarks import bench_service as bs


def test_content_length_is_read_from_any_header_case():
    head = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 42\r\n\r\n"
    assert bs._content_length(head) == 42
    assert bs._content_length(head.lower()) == 42
    with pytest.raises(ValueError, match="content-length"):
        bs._content_length(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")


def test_post_bytes_is_a_complete_request():
    raw = bs.post_bytes(8000, "/predict", {"text": "héllo"})
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"POST /predict HTTP/1.1\r\n")
    assert f"content-length: {len(body)}".encode() in head
    assert body == b'{"text": "h\\u00e9llo"}'


def test_latency_percentiles_are_in_milliseconds():
    out = bs.latency_ms([0.001, 0.002, 0.003, 0.004, 0.100])
    assert out["p50_ms"] == 3.0 and out["p99_ms"] > 90
    assert bs.latency_ms([])["p50_ms"] is None


def test_the_load_generator_counts_requests_and_measures_its_ceiling(tmp_path):
    port = bs.free_port()
    cmd = [sys.executable, "-m", "benchmarks.bench_service", "trivial", "--port", str(port)]
    with bs.started({"trivial": cmd}, tmp_path) as services:
        s = services["trivial"]
        run = bs.load(s, port, [bs.get_bytes(port, "/health")], 300, 8)
    summary = run.summary()
    assert summary["ok"] == 300 and summary["errors"] == {}
    assert summary["requests_per_s"] > 100
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
    assert summary["service_cpu_ms_per_request"] is not None


def test_sides_compare_batching_on_off_and_the_other_thread_count(monkeypatch):
    monkeypatch.setattr(bs.os, "cpu_count", lambda: 2)
    key = bs.threads_key()
    sides = bs.sides_for(bs.Tuning(), threads=2)
    assert [s.key for s in sides] == ["on", "off", "alt"]
    assert sides[0].overrides["serve"]["batching"]["enabled"] is True
    assert sides[1].overrides["serve"]["batching"]["enabled"] is False
    assert sides[2].overrides[key[0]][key[1]] == 1 and sides[2].label.endswith("1 torch thread")
    alt = bs.sides_for(bs.Tuning(threads=1), threads=1)[2]
    assert alt.overrides[key[0]][key[1]] == 2 and alt.label.endswith("2 torch threads")
    monkeypatch.setattr(bs.os, "cpu_count", lambda: 1)
    assert [s.key for s in bs.sides_for(bs.Tuning(), threads=1)] == ["on", "off"]


def row(c: int, side: str, **figures) -> dict:
    return {"concurrency": c, "side": side, "errors": 0, **figures}


def test_targets_are_judged_from_the_results():
    results = {
        "model": "m",
        "load": [
            row(1, "batching on", p50_ms=10.0),
            row(1, "batching off", p50_ms=10.5),
            row(1, "in-process predict_proba([text])", p50_ms=9.0),
            row(
                32,
                "batching on",
                requests_per_s=300.0,
                p50_ms=20,
                p95_ms=40.0,
                p99_ms=45,
                mean_batch_requests=12.0,
            ),
            row(32, "batching off", requests_per_s=90.0, p50_ms=300, p95_ms=400.0, p99_ms=500),
            row(32, bs.IN_PROCESS_BATCHES, requests_per_s=320.0),
        ],
        "speedup_batching_on_vs_off": [
            {"concurrency": 32, "speedup": 3.3, "per_round": [3.2, 3.3, 3.4], "rounds": 3}
        ],
    }
    share_what = (
        "service throughput at concurrency 32 vs the served model in-process "
        "at the same batch sizes"
    )
    little_what = "service p95 at concurrency 32 vs the Little's-law bound (32 / throughput)"
    gap_what = "HTTP p50 at concurrency 1 above in-process latency (same model, batch 1)"
    by_what = {t["what"]: t for t in bs.targets(results)}
    # 300 / 320 = 93.8% of the ceiling; bound 32 / 300 s = 106.7 ms, p95 40 ms = 0.37x.
    assert by_what[share_what]["met"] is True and by_what[share_what]["measured"] == "93.8%"
    assert by_what[little_what]["met"] is True and by_what[little_what]["measured"] == "0.37x"
    assert by_what[gap_what]["measured"] == "1.0 ms" and by_what[gap_what]["met"] is True
    results["load"][0]["p50_ms"] = 11.0
    results["load"][3].update(requests_per_s=250.0, p95_ms=200.0)  # bound 128 ms: 1.56x
    by_what = {t["what"]: t for t in bs.targets(results)}
    assert not by_what[share_what]["met"]  # 250 / 320 = 78%
    assert not by_what[little_what]["met"]
    assert not by_what[gap_what]["met"]
    assert bs.targets({"model": "m"}) == []


def test_the_ceiling_replays_the_batch_sizes_the_service_formed():
    class Recorder:
        def __init__(self):
            self.sizes = []

        def predict_proba(self, texts):
            self.sizes.append(len(texts))

    before = {"batch_requests": {"1": 2, "4": 1}}
    after = {"batch_requests": {"1": 3, "4": 3, "9": 1}}
    formed = bs.size_counts(after) - bs.size_counts(before)
    assert formed == {1: 1, 4: 2, 9: 1}
    predictor = Recorder()
    run = bs.in_process_batches(predictor, ["a", "b", "c"], 5, formed)
    assert sorted(predictor.sizes) == [1, 4, 4, 9]
    assert run.requests == 18 and len(run.latencies) == 4 and run.seconds > 0
