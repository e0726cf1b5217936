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
        ],
        "speedup_batching_on_vs_off": [
            {"concurrency": 32, "speedup": 3.3, "per_round": [3.2, 3.3, 3.4], "rounds": 3}
        ],
    }
    by_what = {t["what"]: t for t in bs.targets(results)}
    speed = by_what["service requests/s at concurrency 32, batching on vs off"]
    assert speed["met"] is True and speed["measured"] == "3.3x"
    assert by_what["service p95 latency at concurrency 32 (batching on)"]["met"] is True
    gap = by_what["HTTP p50 at concurrency 1 above in-process latency (same model, batch 1)"]
    assert gap["measured"] == "1.0 ms" and gap["met"] is True
    results["load"][0]["p50_ms"] = 11.0
    results["speedup_batching_on_vs_off"][0]["speedup"] = 2.0
    by_what = {t["what"]: t for t in bs.targets(results)}
    assert not by_what["service requests/s at concurrency 32, batching on vs off"]["met"]
    assert not by_what["HTTP p50 at concurrency 1 above in-process latency (same model, batch 1)"][
        "met"
    ]
    assert bs.targets({"model": "m"}) == []
