"""Prediction logging off the request path (``serve.prediction_log``, issue 22, item 3).

An id the service hands out is always accepted by ``/feedback`` right after, under
concurrency, with batching on and off; ``/review`` sees every prediction answered before
it; a failing database is retried without failing a request; a full backlog answers 503
rather than dropping; a clean shutdown (the lifespan's end, SIGTERM to the real service)
loses nothing; a SIGKILL loses at most what was queued, never a row the writer had gone
idle after. ``background: false`` keeps the synchronous path.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from slmops.serving.app import create_app
from slmops.serving.background import free_port
from slmops.tasks.core.config import Params
from slmops.tasks.feedback.store import FeedbackStore, make_engine, predictions_table
from tests.conftest import TINY_LABELS
from tests.serving.conftest import auth, wait_until_loaded
from tests.serving.test_load import get, start_service

# The longest commit window the settings allow: in the service processes below, rows
# are still queued right after a few requests.
MAX_GROUP_MS = 1000


def linger(client: TestClient) -> None:
    """Make the app's writer wait 30 s for company before a commit, so that rows are
    certainly still queued when the test looks (a reader waiting, or a close, cuts it
    short)."""
    client.app.state.service.prediction_log.group_s = 30.0


def stored_ids(params: Params) -> set[str]:
    """Prediction ids in the database file itself, read by a fresh engine."""
    engine = make_engine(params.feedback.db_url, params.root)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(predictions_table.c.id)).scalars())
    finally:
        engine.dispose()


def other_label(label: str) -> str:
    return next(x for x in TINY_LABELS if x != label)


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_every_id_handed_out_is_accepted_by_feedback_at_once(make_params, batching):
    # A commit lingers 50 ms: most feedback arrives while its prediction is still queued.
    params = make_params(
        batching={"enabled": batching}, prediction_log={"group_ms": 50, "group_rows": 16}
    )
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)

        def predict_then_feedback(i: int) -> list[int]:
            statuses = []
            for j in range(6):
                r = client.post("/predict", json={"text": f"client {i}: my card {j} is lost"})
                assert r.status_code == 200, r.text
                (p,) = r.json()["predictions"]
                body = {"prediction_id": p["prediction_id"], "label": other_label(p["label"])}
                statuses.append(client.post("/feedback", json=body, headers=auth()).status_code)
            return statuses

        with ThreadPoolExecutor(12) as pool:
            statuses = [s for got in pool.map(predict_then_feedback, range(12)) for s in got]
        stats = client.app.state.service.prediction_log.stats()
    assert statuses == [201] * 72
    assert stats.committed_rows == 72 and stats.failed_commits == 0


def test_review_sees_every_prediction_answered_before_it(params):
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        linger(client)
        r = client.post("/predict", json={"texts": ["one text", "another text", "a third"]})
        ids = {p["prediction_id"] for p in r.json()["predictions"]}
        assert not stored_ids(params) & ids  # still queued...
        assert client.get("/health").json()["prediction_backlog"] == 3
        items = client.get("/review", headers=auth()).json()["items"]
        assert {i["prediction_id"] for i in items} == ids  # ...yet listed: /review waited
        assert client.get("/health").json()["prediction_backlog"] == 0


def test_a_clean_shutdown_commits_every_prediction_queued(params):
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        linger(client)
        ids = {
            p["prediction_id"]
            for i in range(20)
            for p in client.post("/predict", json={"text": f"text {i}"}).json()["predictions"]
        }
        assert len(ids) == 20 and not stored_ids(params) & ids  # all still queued
    assert stored_ids(params) == ids


def test_a_failing_database_is_retried_and_counted_and_no_request_fails(make_params, monkeypatch):
    with TestClient(create_app(make_params())) as client:
        wait_until_loaded(client)
        service = client.app.state.service
        real, failures = service.store.insert_predictions, [3]

        def flaky(values):
            if failures[0]:
                failures[0] -= 1
                raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
            real(values)

        monkeypatch.setattr(service.store, "insert_predictions", flaky)
        r = client.post("/predict", json={"text": "my card has not arrived"})
        assert r.status_code == 200  # answered while the database refuses
        (p,) = r.json()["predictions"]
        body = {"prediction_id": p["prediction_id"], "label": p["label"]}
        assert client.post("/feedback", json=body, headers=auth()).status_code == 201
        metrics = client.get("/metrics").text
    assert "slmops_prediction_log_failed_commits_total 3.0" in metrics
    assert "slmops_prediction_log_backlog 0.0" in metrics


def test_a_full_backlog_answers_503_and_never_drops_a_row(make_params, monkeypatch):
    params = make_params(batching={"enabled": False}, prediction_log={"queue_rows": 2})
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        plog = client.app.state.service.prediction_log
        plog.full_timeout = 0.3
        real, gate = client.app.state.service.store.insert_predictions, threading.Event()

        def held(values):
            assert gate.wait(30)
            real(values)

        monkeypatch.setattr(client.app.state.service.store, "insert_predictions", held)
        ok = client.post("/predict", json={"texts": ["a", "b"]})
        assert ok.status_code == 200
        full = client.post("/predict", json={"text": "no room"})
        assert full.status_code == 503 and "queue_rows" in full.json()["detail"]
        gate.set()
        ids = {p["prediction_id"] for p in ok.json()["predictions"]}
    assert stored_ids(params) == ids  # the answered rows written, the refused one not


def test_background_off_commits_before_answering(make_params):
    params = make_params(prediction_log={"background": False})
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        assert client.app.state.service.prediction_log is None
        (p,) = client.post("/predict", json={"text": "hello"}).json()["predictions"]
        assert p["prediction_id"] in stored_ids(params)  # no wait: already committed
        assert client.get("/health").json()["prediction_backlog"] is None


# -- the real service in its own process: SIGTERM and SIGKILL ---------------------------


def service_process(make_params, registry, tmp_path: Path, **prediction_log):
    """The service (``python -m slmops.serving``) with these prediction-log settings."""
    params = make_params()
    raw = {
        "registry": {"tracking_uri": registry.uri, "model_name": registry.name},
        "serve": {"poll_seconds": 0, "prediction_log": prediction_log},
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    port = free_port()
    return params, port, start_service(params_file, port, tmp_path / "service.log")


def predict_ids(port: int, n: int, tag: str) -> list[str]:
    """``n`` one-text predictions, one after another; their ids."""
    ids = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        for i in range(n):
            r = http.post("/predict", json={"text": f"{tag} {i}: where is my card"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["predictions"][0]["prediction_id"])
    return ids


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_commits_every_prediction_answered(make_params, registry, tmp_path):
    params, port, proc = service_process(make_params, registry, tmp_path, group_ms=MAX_GROUP_MS)
    try:
        ids = predict_ids(port, 5, "before sigterm")
        assert get(port, "/health")[1]["prediction_backlog"] > 0  # queued when signalled
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it caught: killed by SIGTERM.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Application shutdown complete" in (tmp_path / "service.log").read_text()
    assert stored_ids(params) == set(ids)
    with FeedbackStore.from_params(params) as store:
        assert store.get_prediction(ids[-1]) is not None


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_loses_at_most_the_backlog_and_nothing_committed(make_params, registry, tmp_path):
    """What a SIGKILL can lose: the rows queued and not committed at that instant (at most
    the backlog /health reported just before); everything the writer went idle after is
    in the database, and nothing else is."""
    # 1 s groups: the second lot is most likely still queued when the kill comes.
    params, port, proc = service_process(make_params, registry, tmp_path, group_ms=MAX_GROUP_MS)
    try:
        settled = predict_ids(port, 5, "settled")
        deadline = time.monotonic() + 30
        while get(port, "/health")[1]["prediction_backlog"]:  # the writer goes idle
            assert time.monotonic() < deadline
            time.sleep(0.05)
        in_flight = predict_ids(port, 5, "in flight")
        backlog = get(port, "/health")[1]["prediction_backlog"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = stored_ids(params)
    lost = set(in_flight) - stored
    report = {"backlog_before_kill": backlog, "lost": len(lost), "answered": 10}
    print("\nsigkill:", json.dumps(report))
    assert set(settled) <= stored  # committed before the kill: kept
    assert stored <= set(settled) | set(in_flight)  # nothing that was not answered
    assert len(lost) <= backlog  # only rows that were still queued...
    # ...and always the latest answered: groups commit in the order they were queued.
    assert [i for i in in_flight if i in lost] == in_flight[len(in_flight) - len(lost) :]
    engine = make_engine(params.feedback.db_url, params.root)
    try:
        with engine.connect() as conn:  # a killed writer never corrupts the file
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        engine.dispose()
