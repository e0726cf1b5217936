"""Principals and roles on the service: which key reaches what, the reviewer and asker
recorded, keys checked before a body is read, revocation within the cache's bound, the
trusted-host check, and what never reaches the logs or /health."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

import slmops.serving.app as app
from slmops.serving.app import allowed_hosts, create_app
from slmops.serving.background import free_port
from slmops.serving.model_source import ModelRef
from slmops.tasks.core.config import ServeConfig
from slmops.tasks.feedback.keys import KEY_CACHE_SECONDS, KeyStore
from tests.conftest import TINY_LABELS
from tests.serving.conftest import TOKEN, auth, wait_until_loaded


def add_keys(params, **roles: str) -> dict[str, str]:
    """Keys for principals ``name=role``, made the way `slmops keys add` makes them."""
    with KeyStore.from_params(params) as keys:
        return {name: keys.add(name, role, created_by="test")[1] for name, role in roles.items()}


@pytest.fixture
def keyed(make_params):
    """A client on protect_reads params, and a key per role."""
    params = make_params(protect_reads=True)
    made = add_keys(params, carol="client", rita="reviewer", ada="admin")
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        yield c, made


def predict_id(client: TestClient, headers: dict | None = None) -> str:
    r = client.post("/predict", json={"text": "my card has not arrived"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["prediction_id"]


def test_each_role_reaches_what_it_may_and_no_more(keyed):
    client, made = keyed
    pid = predict_id(client, auth(made["carol"]))
    calls = {
        "predict": lambda h: client.post("/predict", json={"text": "top up failed"}, headers=h),
        "model": lambda h: client.get("/model", headers=h),
        "feedback": lambda h: client.post(
            "/feedback", json={"prediction_id": pid, "label": TINY_LABELS[0]}, headers=h
        ),
        "review": lambda h: client.get("/review", headers=h),
        "reload": lambda h: client.post("/admin/reload", headers=h),
    }
    allowed = {
        "carol": {"predict", "model"},
        "rita": {"predict", "model", "feedback", "review"},
        "ada": set(calls),
    }
    for name, may in allowed.items():
        for what, call in calls.items():
            r = call(auth(made[name]))
            if what in may:
                assert r.status_code in (200, 201), (name, what, r.text)
            else:
                assert r.status_code == 403, (name, what, r.text)
                assert r.json()["detail"].endswith(
                    f"has the {'client' if name == 'carol' else 'reviewer'} role"
                )
    for what, call in calls.items():
        r = call(None)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"], what
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").status_code == 200  # liveness stays open


def test_without_protect_reads_predict_is_anonymous_but_review_needs_a_reviewer(params):
    made = add_keys(params, carol="client", rita="reviewer")
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        pid = predict_id(client)
        assert client.app.state.service.store.get_prediction(pid).principal is None
        # Other users' texts: never without a reviewer key, whatever protect_reads says.
        assert client.get("/review").status_code == 401
        assert client.get("/review", headers=auth(made["carol"])).status_code == 403
        assert client.get("/review", headers=auth(made["rita"])).status_code == 200
        # An invalid key on an open endpoint is no key at all: still answered, anonymously.
        bad = {"Authorization": "Bearer slm_000000000000_nope"}
        pid = predict_id(client, bad)
        assert client.app.state.service.store.get_prediction(pid).principal is None


def test_the_reviewer_is_the_keys_principal_and_the_asker_is_recorded(keyed):
    client, made = keyed
    pid = predict_id(client, auth(made["carol"]))
    store = client.app.state.service.store
    assert store.get_prediction(pid).principal == "carol"
    label = next(lbl for lbl in TINY_LABELS if lbl != store.get_prediction(pid).label)
    # The deprecated body field is accepted and ignored: it cannot name another reviewer.
    body = {"prediction_id": pid, "label": label, "user": "mallory"}
    r = client.post("/feedback", json=body, headers=auth(made["rita"]))
    assert r.status_code == 201 and r.json()["user"] == "rita", r.text
    (item,) = store.feedback_since(0)
    assert item.user == "rita"
    # The shared token is the admin principal "api-token".
    confirm = {"prediction_id": pid, "label": store.get_prediction(pid).label}
    r = client.post("/feedback", json=confirm, headers=auth(TOKEN))
    assert r.status_code == 201 and r.json()["user"] == "api-token"


def test_a_revoked_key_is_refused_once_its_cached_row_expires(keyed):
    client, made = keyed
    authenticator = client.app.state.service.authenticator
    now = [1000.0]
    authenticator.clock = lambda: now[0]
    headers = auth(made["rita"])
    assert client.get("/review", headers=headers).status_code == 200
    with KeyStore.from_params(client.app.state.service.params) as keys:
        keys.revoke("rita")  # as `slmops keys revoke` does, from another process
    # Within the bound the cached row still answers (a lookup per request would not)...
    now[0] += KEY_CACHE_SECONDS / 2
    assert client.get("/review", headers=headers).status_code == 200
    # ...and once it is KEY_CACHE_SECONDS old the key is read again: revoked.
    now[0] += KEY_CACHE_SECONDS / 2
    r = client.get("/review", headers=headers)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_requests_without_a_key_cost_no_lookup_and_a_key_one_per_cache_period(params, monkeypatch):
    made = add_keys(params, carol="client")
    lookups = []
    stored = KeyStore.stored
    monkeypatch.setattr(KeyStore, "stored", lambda self, i: lookups.append(i) or stored(self, i))
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        for _ in range(5):
            predict_id(client)
        assert lookups == []
        for _ in range(5):
            predict_id(client, auth(made["carol"]))
        assert len(lookups) == 1


def raw_post(app, path: str, extra: list[tuple[bytes, bytes]]) -> tuple[int, int, dict]:
    """POST a JSON body straight through the ASGI app; the status, how many times the
    app called ``receive`` (for the body), and the answer."""
    body = json.dumps({"prediction_id": "0" * 32, "label": TINY_LABELS[0]}).encode()
    received = 0

    async def receive() -> dict:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": body, "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1234),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"), *extra],
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, received, json.loads(answer)


def test_a_write_without_the_role_is_refused_before_its_body_is_read(params):
    made = add_keys(params, carol="client", rita="reviewer")
    app = create_app(params)  # no lifespan: no model, which a refusal never needs

    def bearer(key: str) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", f"Bearer {key}".encode())]

    status, received, answer = raw_post(app, "/feedback", [])
    assert (status, received) == (401, 0), answer
    status, received, answer = raw_post(app, "/feedback", bearer("slm_000000000000_wrong"))
    assert (status, received) == (401, 0), answer
    status, received, answer = raw_post(app, "/feedback", bearer(made["carol"]))
    assert (status, received) == (403, 0), answer
    status, received, answer = raw_post(app, "/admin/reload", bearer(made["rita"]))
    assert (status, received) == (403, 0), answer
    # The counter counts: a reviewer's request is read (then answered 503, no model).
    status, received, answer = raw_post(app, "/feedback", bearer(made["rita"]))
    assert status == 503 and received >= 1, answer


def test_keys_alone_open_the_endpoints_and_nothing_configured_is_a_503(params, monkeypatch, caplog):
    monkeypatch.delenv("SLMOPS_API_TOKEN")
    with caplog.at_level(logging.WARNING), TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        assert "no API key configured (slmops keys add" in caplog.text  # said at startup
        r = client.get("/review")
        assert r.status_code == 503 and "slmops keys add" in r.json()["detail"]
        made = add_keys(params, rita="reviewer")
        client.app.state.service.authenticator.ttl = 0  # no wait for the cached "no keys"
        assert client.get("/review").status_code == 401
        assert client.get("/review", headers=auth(made["rita"])).status_code == 200
        assert client.get("/review", headers=auth(TOKEN)).status_code == 401


def test_only_trusted_hosts_are_answered(make_params):
    with TestClient(create_app(make_params())) as client:
        wait_until_loaded(client)
        for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
            assert client.get("/health", headers={"host": host}).status_code == 200, host
        # DNS rebinding: a page on another domain, resolved to 127.0.0.1.
        r = client.post("/feedback", json={}, headers={"host": "evil.example", **auth()})
        assert r.status_code == 400 and r.text == "Invalid host header"
    with TestClient(
        create_app(make_params(allowed_hosts=["models.example.com"])),
        base_url="http://models.example.com",
    ) as client:
        wait_until_loaded(client)
        assert client.get("/health", headers={"host": "127.0.0.1"}).status_code == 400


def test_serving_on_another_address_answers_any_host_and_warns(params, monkeypatch, caplog):
    served: dict = {}
    monkeypatch.setattr(app, "create_app", lambda p, model_loader=None: served.update(p=p))
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: served.update(kw))
    with caplog.at_level(logging.WARNING):
        app.run(params, host="0.0.0.0")
    assert served["host"] == "0.0.0.0" and allowed_hosts(served["p"].serve) == ["*"]
    assert "serve.allowed_hosts unset: any Host header is answered" in caplog.text


def test_allowed_hosts_default_to_loopback_names_only_on_loopback():
    loopback = ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts(ServeConfig()) == loopback
    assert allowed_hosts(ServeConfig(host="::1")) == loopback
    assert allowed_hosts(ServeConfig(host="0.0.0.0")) == ["*"]
    assert allowed_hosts(ServeConfig(host="0.0.0.0", allowed_hosts=["a.example"])) == ["a.example"]


def test_keys_and_tokens_never_reach_the_logs(params, caplog):
    made = add_keys(params, rita="reviewer")
    port = free_port()
    # log_config=None: uvicorn's access log propagates to the root logger (caplog).
    config = uvicorn.Config(
        create_app(params), host="127.0.0.1", port=port, log_config=None, log_level="debug"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    with caplog.at_level(logging.DEBUG):
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        try:
            assert httpx.get(f"{url}/review", headers=auth(made["rita"])).status_code == 200
            assert httpx.get(f"{url}/review", headers=auth(made["rita"] + "x")).status_code == 401
            assert httpx.post(f"{url}/admin/reload", headers=auth(TOKEN)).status_code == 200
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    # The server's side: uvicorn (access log included), the app, everything but the client.
    logged = "\n".join(
        f"{r.name} {r.getMessage()}"
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    ).lower()
    assert '"get /review http/1.1" 200' in logged  # the access log was captured
    secret = made["rita"].split("_", 2)[2]
    for leak in (secret, TOKEN, "bearer", "authorization"):
        assert leak.lower() not in logged, leak


class Unreachable:
    """A registry whose error message carries a URI with a password."""

    def champion(self) -> ModelRef:
        raise RuntimeError("cannot reach https://bob:hunter2@mlflow.example/api/2.0")

    def load(self, ref: ModelRef):
        raise AssertionError("never called")


def test_health_masks_credentials_in_its_error(params):
    with TestClient(create_app(params, model_loader=Unreachable())) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").json()["last_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = client.get("/health")
    assert health.status_code == 503
    assert "hunter2" not in health.text and "bob:***@mlflow.example" in health.text


def test_openapi_marks_the_body_user_deprecated_and_documents_403(keyed):
    client, _ = keyed
    spec = client.get("/openapi.json").json()
    user = spec["components"]["schemas"]["FeedbackRequest"]["properties"]["user"]
    assert user["deprecated"] is True and "ignored" in user["description"]
    for path, method in (("/feedback", "post"), ("/review", "get"), ("/admin/reload", "post")):
        operation = spec["paths"][path][method]
        assert {"401", "403"} <= set(operation["responses"]), path
        assert operation["security"] == [{"HTTPBearer": []}], path
