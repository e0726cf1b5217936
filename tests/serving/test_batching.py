"""Micro-batching in the service (tiny model, session registry): concurrent requests share
model calls, every caller gets its own answers (logged under their ids), a full queue is
503, a failed batch is 500 for its requests only, batching off works as before, and an
alias move under batched load loses nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from slmops.serving.app import create_app
from slmops.serving.background import free_port, serve_in_thread
from slmops.tasks.core.config import ConfigError, parse_params
from tests.serving.conftest import set_champion, wait_until_loaded


class HeldModel:
    """Wraps the served predictor: calls can be held until released, and can fail."""

    def __init__(self, predict: Callable) -> None:
        self.predict = predict
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.fail_on: str | None = None

    def __call__(self, texts, *args, **kwargs):
        self.calls.append(list(texts))
        self.entered.set()
        assert self.release.wait(30), "the test never released the model"
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError("simulated model failure")
        return self.predict(texts, *args, **kwargs)


def hold(client: TestClient, monkeypatch) -> HeldModel:
    predictor = client.app.state.service.holder.current.predictor
    held = HeldModel(predictor.predict_proba)
    monkeypatch.setattr(predictor, "predict_proba", held)
    return held


def stats(client: TestClient) -> dict:
    return client.get("/stats").json()["batching"]


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def batched(make_params) -> Iterator[TestClient]:
    params = make_params(batching={"max_batch": 64, "max_wait_ms": 5, "queue_size": 64})
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        yield c


def texts_of(i: int) -> list[str]:
    # Distinct texts per caller, sometimes several: routing mistakes would show.
    return [f"caller {i} text {j}: my card has not arrived" for j in range(1 + i % 3)]


def test_concurrent_requests_share_model_calls_and_each_caller_gets_its_own(batched, monkeypatch):
    held = hold(batched, monkeypatch)
    held.release.clear()
    with ThreadPoolExecutor(12) as pool:
        first = pool.submit(batched.post, "/predict", json={"text": "the first one"})
        assert held.entered.wait(20)
        futures = {
            i: pool.submit(batched.post, "/predict", json={"texts": texts_of(i)}) for i in range(10)
        }
        wait_for(lambda: stats(batched)["queue_depth"] == 10)
        held.release.set()
        assert first.result().status_code == 200
        responses = {i: f.result() for i, f in futures.items()}
    store = batched.app.state.service.store
    ids = set()
    for i, r in responses.items():
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == len(texts_of(i))
        for text, p in zip(texts_of(i), predictions, strict=True):
            logged = store.get_prediction(p["prediction_id"])
            assert logged.text == text and logged.label == p["label"]
            assert logged.model_version == p["model_version"] == "1"
            ids.add(p["prediction_id"])
    assert len(ids) == sum(len(texts_of(i)) for i in range(10))
    s = stats(batched)
    assert s["enabled"] and s["max_batch_requests"] == 10 and s["batches"] == 2
    assert s["requests"] == 11 and s["mean_batch_requests"] == 5.5
    # One batch for the ten queued requests (threads queue in any order; the batch's
    # forward passes are length-sorted chunks of serve.batching.chunk_size texts).
    queued = sorted(t for i in range(10) for t in texts_of(i))
    assert sorted(t for call in held.calls[1:] for t in call) == queued
    assert store.counts()["predictions"] == 1 + len(ids)


def test_a_batch_answers_like_single_requests(batched):
    texts = ["I lost my card", "What exchange rate do you use?", "top up failed"]
    alone = [batched.post("/predict", json={"text": t}).json()["predictions"][0] for t in texts]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda t: batched.post("/predict", json={"text": t}), texts))
    for a, b in zip(alone, together, strict=True):
        b = b.json()["predictions"][0]
        assert a["label"] == b["label"] and a["confidence"] == pytest.approx(
            b["confidence"], abs=1e-5
        )


def test_a_full_queue_answers_503_with_retry_after_and_queued_requests_still_succeed(
    make_params, monkeypatch
):
    params = make_params(batching={"max_batch": 1, "max_wait_ms": 0, "queue_size": 2})
    with TestClient(create_app(params)) as c, ThreadPoolExecutor(4) as pool:
        wait_until_loaded(c)
        held = hold(c, monkeypatch)
        held.release.clear()
        running = pool.submit(c.post, "/predict", json={"text": "running"})
        assert held.entered.wait(20)
        queued = [pool.submit(c.post, "/predict", json={"text": f"queued {i}"}) for i in range(2)]
        wait_for(lambda: stats(c)["queue_depth"] == 2)
        start = time.monotonic()
        refused = c.post("/predict", json={"text": "one too many"})
        assert time.monotonic() - start < 5  # refused at once, not after the model
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "2 requests are already waiting" in refused.json()["detail"]
        assert "queue_size" in refused.json()["detail"]
        held.release.set()
        assert [f.result().status_code for f in (running, *queued)] == [200, 200, 200]
        assert stats(c)["rejected"] == 1
        assert c.app.state.service.store.counts()["predictions"] == 3


def test_a_failing_batch_is_500_for_its_requests_only_and_the_next_request_succeeds(
    batched, monkeypatch
):
    held = hold(batched, monkeypatch)
    held.release.clear()
    held.fail_on = "explode"
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batched.post, "/predict", json={"text": "fine"})
        assert held.entered.wait(20)
        doomed = [
            pool.submit(batched.post, "/predict", json={"text": t})
            for t in ("explode please", "innocent bystander")
        ]
        wait_for(lambda: stats(batched)["queue_depth"] == 2)
        held.release.set()
        assert first.result().status_code == 200
        for f in doomed:
            r = f.result()
            assert r.status_code == 500
            assert (
                "model failed on the batch holding this request (RuntimeError)"
                in r.json()["detail"]
            )
    r = batched.post("/predict", json={"text": "after the failure"})
    assert r.status_code == 200, r.text
    s = stats(batched)
    assert s["failed_batches"] == 1 and s["batches"] == 3
    assert batched.app.state.service.store.counts()["predictions"] == 2  # failures log nothing


def test_a_request_larger_than_max_batch_is_served_alone(make_params):
    params = make_params(batching={"max_batch": 2})
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        texts = [f"text number {i}" for i in range(5)]
        r = c.post("/predict", json={"texts": texts})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5
        assert stats(c)["max_batch_texts"] == 5


def test_batching_off_answers_as_before_and_reports_disabled(make_params, monkeypatch):
    params = make_params(batching={"enabled": False})
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        assert c.app.state.service.batcher is None
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda i: c.post("/predict", json={"texts": texts_of(i)}), range(8))
            )
        assert [len(r.json()["predictions"]) for r in answers] == [
            len(texts_of(i)) for i in range(8)
        ]
        s = stats(c)
        assert not s["enabled"] and s["batches"] == 0 and s["requests"] == 0
        held = hold(c, monkeypatch)
        held.fail_on = "explode"
        r = c.post("/predict", json={"text": "explode"})
        assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
        assert c.post("/predict", json={"text": "fine"}).status_code == 200


def test_invalid_requests_do_not_leave_the_batcher_waiting(batched):
    batcher = batched.app.state.service.batcher
    assert batched.post("/predict", json={"text": "  "}).status_code == 422
    assert batched.post("/predict", json={}).status_code == 422
    assert batched.post("/predict", json={"text": "fine"}).status_code == 200
    assert batcher.arriving == 0


@pytest.mark.slow
def test_alias_move_under_batched_load_loses_nothing_and_answers_switch(make_params, registry):
    """Real HTTP (uvicorn) with 8 concurrent clients: batches form, none fails, and every
    answer reports the version that computed it (one version per request)."""
    params = make_params(poll_seconds=0.2, batching={"max_wait_ms": 5})
    answers: list[tuple[float, int, set[str]]] = []
    stop = threading.Event()
    with serve_in_thread(params, free_port()) as url:

        def fire(i: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                while not stop.is_set():
                    r = http.post("/predict", json={"texts": texts_of(i)})
                    versions = (
                        {p["model_version"] for p in r.json()["predictions"]}
                        if r.is_success
                        else set()
                    )
                    answers.append((time.monotonic(), r.status_code, versions))

        workers = [threading.Thread(target=fire, args=(i,)) for i in range(8)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        set_champion(params, registry.good[1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == {"2"} for _, _, v in answers[-8:]):
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join()
        s = httpx.get(f"{url}/stats").json()["batching"]
    failures = [a for a in answers if a[1] != 200]
    assert not failures, failures[:5]
    assert all(len(v) == 1 for _, _, v in answers)  # a request never mixes versions
    versions = [next(iter(v)) for _, _, v in sorted(answers)]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions.count("1") >= 5 and versions.count("2") >= 5
    assert s["max_batch_requests"] > 1 and s["failed_batches"] == 0


def test_batching_settings_are_checked(tmp_path):
    defaults = parse_params({}, tmp_path / "params.yaml").serve.batching
    assert defaults.enabled and defaults.max_batch >= 1 and defaults.queue_size >= 1
    with pytest.raises(ConfigError, match=r"serve\.batching\.max_wait: unknown key"):
        parse_params({"serve": {"batching": {"max_wait": 1}}}, tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match=r"serve\.batching\.queue_size"):
        parse_params({"serve": {"batching": {"queue_size": 0}}}, tmp_path / "params.yaml")


def test_a_model_call_runs_in_length_sorted_chunks_and_answers_in_request_order(
    make_params, monkeypatch
):
    params = make_params(batching={"chunk_size": 2})
    texts = ["a much longer text about a card that never arrived", "hi", "top up failed", "x y"]
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        alone = [c.post("/predict", json={"text": t}).json()["predictions"][0] for t in texts]
        held = hold(c, monkeypatch)
        together = c.post("/predict", json={"texts": texts}).json()["predictions"]
    assert held.calls == [["hi", "x y"], ["top up failed", texts[0]]]
    for a, b in zip(alone, together, strict=True):
        assert a["label"] == b["label"]
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
