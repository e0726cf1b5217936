"""The prediction service against a real registry: predict, limits, feedback, review,
health, reloads and the hot swap."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from slmops.serving.app import create_app
from slmops.tasks.core.config import with_overrides
from tests.conftest import TINY_LABELS
from tests.serving.conftest import TOKEN, auth, set_champion, wait_until_loaded

TEXTS = [
    "my card has not arrived yet",
    "what exchange rate do you use for euros?",
    "I think someone stole my card",
    "top up failed again",
]


@pytest.fixture
def client(params):
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        yield c


def predict(client: TestClient, texts: list[str]) -> list[dict]:
    response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_predict_one_text_and_a_batch(client, registry):
    response = client.post("/predict", json={"text": TEXTS[0]})
    assert response.status_code == 200, response.text
    (one,) = response.json()["predictions"]
    assert one["label"] in TINY_LABELS
    assert (one["model_name"], one["model_version"]) == (registry.name, "1")
    assert len(one["prediction_id"]) == 32
    scores = [x["score"] for x in one["top_k"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert one["top_k"][0] == {"label": one["label"], "score": one["confidence"]}

    batch = predict(client, TEXTS)
    assert len(batch) == len(TEXTS) and len({p["prediction_id"] for p in batch}) == len(TEXTS)
    # Same answer for the same text, whether alone or in a (differently padded) batch.
    assert batch[0]["label"] == one["label"]
    assert batch[0]["confidence"] == pytest.approx(one["confidence"], abs=1e-5)
    # Every answer is logged with its id.
    store = client.app.state.service.store
    logged = store.get_prediction(batch[2]["prediction_id"])
    assert logged.text == TEXTS[2] and logged.label == batch[2]["label"]
    assert store.counts()["predictions"] == 1 + len(TEXTS)


def test_request_limits_answer_413_and_422_with_the_reason(make_params):
    params = make_params(max_text_chars=40, max_batch=3)
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        r = c.post("/predict", json={"text": "x" * 41})
        assert r.status_code == 413 and "41 characters; the limit is 40" in r.json()["detail"]
        r = c.post("/predict", json={"texts": ["a b", "c d", "e f", "g h"]})
        assert r.status_code == 413 and "4 texts" in r.json()["detail"]
        assert "limit is 3" in r.json()["detail"]
        r = c.post("/predict", json={"text": "   \n"})
        assert r.status_code == 422 and "empty or only whitespace" in r.json()["detail"]
        r = c.post("/predict", json={"texts": ["fine", ""]})
        assert r.status_code == 422 and r.json()["detail"].startswith("texts[1]")
        assert c.post("/predict", json={"texts": []}).status_code == 422
        r = c.post("/predict", json={"text": "a", "texts": ["b"]})
        assert r.status_code == 422 and "either 'text'" in r.text
        assert c.post("/predict", json={}).status_code == 422
        # A body far beyond any valid request is refused from its declared length.
        r = c.post("/predict", content=b"x" * 2_000_000, headers={"content-type": "text/plain"})
        assert r.status_code == 413
        assert c.app.state.service.store.counts()["predictions"] == 0


def test_feedback_needs_the_token(client, monkeypatch):
    (p,) = predict(client, TEXTS[:1])
    body = {"prediction_id": p["prediction_id"], "label": "exchange_rate"}
    r = client.post("/feedback", json=body)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/feedback", json=body, headers=auth("wrong-token"))
    assert r.status_code == 401 and r.json()["detail"].startswith("invalid API key")
    assert TOKEN not in r.text
    monkeypatch.delenv("SLMOPS_API_TOKEN")
    r = client.post("/feedback", json=body, headers=auth())
    assert r.status_code == 503 and "SLMOPS_API_TOKEN" in r.json()["detail"]
    assert client.app.state.service.store.counts()["feedback"] == 0


def test_token_file_is_read_when_the_variable_is_unset(make_params, monkeypatch, tmp_path):
    monkeypatch.delenv("SLMOPS_API_TOKEN")
    (tmp_path / "token.txt").write_text("from-file\n")
    with TestClient(create_app(make_params(token_file="token.txt"))) as c:
        wait_until_loaded(c)
        assert c.post("/admin/reload", headers=auth("from-file")).status_code == 200
        assert c.post("/admin/reload", headers=auth(TOKEN)).status_code == 401


def test_feedback_created_repeated_unknown_id_and_unknown_label(client):
    (p,) = predict(client, TEXTS[:1])
    other = next(label for label in TINY_LABELS if label != p["label"])
    body = {"prediction_id": p["prediction_id"], "label": other, "user": "reviewer-1"}
    first = client.post("/feedback", json=body, headers=auth())
    assert first.status_code == 201, first.text
    stored = first.json()
    assert stored["created"] and stored["kind"] == "correction"
    # The reviewer is the key's principal (the shared token's), never the body's `user`.
    assert stored["user"] == "api-token"
    again = client.post("/feedback", json=body, headers=auth())
    assert again.status_code == 200
    assert again.json()["feedback_id"] == stored["feedback_id"] and not again.json()["created"]
    confirm = {"prediction_id": p["prediction_id"], "label": p["label"]}
    r = client.post("/feedback", json=confirm, headers=auth())
    assert r.status_code == 201 and r.json()["kind"] == "confirmation"

    r = client.post("/feedback", json={**body, "prediction_id": "f" * 32}, headers=auth())
    assert r.status_code == 404 and "unknown prediction id" in r.json()["detail"]
    r = client.post("/feedback", json={**body, "label": "card_arival"}, headers=auth())
    assert r.status_code == 422
    assert "'card_arival'" in r.json()["detail"]
    assert r.json()["valid_labels"] == sorted(TINY_LABELS)
    assert client.app.state.service.store.counts()["feedback"] == 2


def test_review_lists_unreviewed_predictions_least_confident_first(client):
    answers = predict(client, TEXTS)
    reviewed = min(answers, key=lambda p: p["confidence"])
    client.post(
        "/feedback",
        json={"prediction_id": reviewed["prediction_id"], "label": reviewed["label"]},
        headers=auth(),
    )
    items = client.get("/review", headers=auth()).json()["items"]
    expected = sorted((p for p in answers if p is not reviewed), key=lambda p: p["confidence"])
    assert [i["prediction_id"] for i in items] == [p["prediction_id"] for p in expected]
    assert items[0]["text"] in TEXTS and len(items[0]["top_k"]) == 3
    review = {"headers": auth()}
    assert len(client.get("/review", params={"limit": 1}, **review).json()["items"]) == 1
    assert client.get("/review", params={"limit": 0}, **review).status_code == 422
    late = client.get("/review", params={"since": "2999-01-01T00:00:00Z"}, **review).json()
    assert late["items"] == []


def test_health_and_model_describe_the_served_version(client, registry):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_version"] == "1"
    assert health["last_error"] is None and health["loaded_at"] and health["last_checked_at"]
    model = client.get("/model").json()
    assert model["name"] == registry.name and model["version"] == "1"
    assert model["labels"] == TINY_LABELS
    assert model["source"] == f"models:/{registry.name}/1" and len(model["run_id"]) == 32
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/feedback", "/review", "/health", "/model", "/admin/reload"} <= set(
        spec["paths"]
    )
    assert spec["components"]["schemas"]["PredictRequest"]["examples"]


def test_protect_reads_puts_read_endpoints_behind_the_token(make_params):
    with TestClient(create_app(make_params(protect_reads=True))) as c:
        wait_until_loaded(c)
        assert c.get("/health").status_code == 200  # liveness stays open
        for method, path in (("post", "/predict"), ("get", "/model"), ("get", "/review")):
            kwargs = {"json": {"text": "hello"}} if method == "post" else {}
            assert getattr(c, method)(path, **kwargs).status_code == 401, path
            ok = getattr(c, method)(path, headers=auth(), **kwargs)
            assert ok.status_code == 200, (path, ok.text)


def test_admin_reload_swaps_when_the_alias_moved(client, params, registry):
    assert client.post("/admin/reload").status_code == 401
    r = client.post("/admin/reload", headers=auth())
    assert r.status_code == 200
    assert r.json() == {
        "previous_version": "1",
        "version": "1",
        "changed": False,
        "status": "ok",
        "error": None,
    }
    set_champion(params, registry.good[1])
    r = client.post("/admin/reload", headers=auth()).json()
    assert (r["previous_version"], r["version"], r["changed"]) == ("1", "2", True)
    assert predict(client, TEXTS[:1])[0]["model_version"] == "2"
    assert client.get("/model").json()["version"] == "2"


def test_failed_reload_keeps_serving_the_old_version_and_reports_degraded(client, params, registry):
    set_champion(params, registry.broken)
    r = client.post("/admin/reload", headers=auth())
    assert r.status_code == 502
    body = r.json()
    assert (body["previous_version"], body["version"], body["changed"]) == ("1", "1", False)
    assert body["status"] == "degraded" and f"/{registry.broken}" in body["error"]
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["model_version"] == "1"
    assert "cannot load model" in health.json()["last_error"]
    assert predict(client, TEXTS[:2])[0]["model_version"] == "1"
    # Fixing the alias clears the error.
    set_champion(params, registry.good[1])
    assert client.post("/admin/reload", headers=auth()).json()["version"] == "2"
    assert client.get("/health").json()["status"] == "ok"


def test_without_a_champion_nothing_is_served_and_health_says_why(params):
    params = with_overrides(params, {"registry": {"model_name": "no-such-model"}})
    with TestClient(create_app(params)) as c:
        deadline = time.monotonic() + 30
        while c.get("/health").json()["last_error"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded" and health.json()["model_version"] is None
        assert "no 'champion' version" in health.json()["last_error"]
        r = c.post("/predict", json={"text": "hello"})
        assert r.status_code == 503 and "no model loaded yet" in r.json()["detail"]


@pytest.mark.slow
def test_hot_swap_under_load_loses_no_request(make_params, registry):
    params = make_params(poll_seconds=0.2)
    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)

        def fire() -> None:
            i = 0
            while not stop.is_set():
                r = c.post("/predict", json={"texts": [TEXTS[i % 4], TEXTS[(i + 1) % 4]]})
                version = r.json()["predictions"][0]["model_version"] if r.is_success else None
                answers.append((time.monotonic(), r.status_code, version))
                i += 1

        workers = [threading.Thread(target=fire) for _ in range(2)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        set_champion(params, registry.good[1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == "2" for _, _, v in answers[-3:]):
            time.sleep(0.05)
        time.sleep(0.3)  # a few more requests on the new version
        stop.set()
        for w in workers:
            w.join()
        assert c.get("/health").json()["model_version"] == "2"
    failures = [a for a in answers if a[1] != 200]
    assert not failures, failures[:5]
    versions = [v for _, _, v in sorted(answers)]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions.count("1") >= 5 and versions.count("2") >= 5
    # Once the swap is done, no answer comes from the old version again.
    first_new = versions.index("2")
    assert set(versions[first_new + 2 :]) == {"2"}
