"""``POST /hooks/label-studio``: a reviewer key's Label Studio webhook becomes the Prefect
event ``slmops.review.annotated`` about the served model, naming the key's principal;
actions that change no label are ignored; no Prefect API: 503 saying so."""

from __future__ import annotations

from fastapi.testclient import TestClient

from slmops.serving.app import create_app
from slmops.tasks.core.events import REVIEW_ANNOTATED
from tests.serving.test_auth import add_keys
from tests.webhook import Webhook

CREATED = {"action": "ANNOTATION_CREATED", "project": {"id": 7, "title": "slmops-intent review"}}


def test_an_annotation_becomes_one_prefect_event_naming_the_principal(params, monkeypatch):
    (key,) = add_keys(params, labelstudio="reviewer").values()
    (client_key,) = add_keys(params, app="client").values()
    with Webhook(path="/api") as prefect:
        monkeypatch.setenv("PREFECT_API_URL", prefect.url)
        with TestClient(create_app(params)) as c:
            refused = c.post("/hooks/label-studio", json=CREATED, headers=bearer(client_key))
            assert refused.status_code == 403  # a client key may not start ingestions
            r = c.post("/hooks/label-studio", json=CREATED, headers=bearer(key))
            assert r.status_code == 202, r.text
            assert r.json()["outcome"] == "sent"
            again = c.post("/hooks/label-studio", json=CREATED, headers=bearer(key)).json()
            assert again["outcome"] == "scheduled" and again["at"]  # within the interval
            other = {"action": "PROJECT_UPDATED", "project": CREATED["project"]}
            ignored = c.post("/hooks/label-studio", json=other, headers=bearer(key)).json()
            assert ignored["outcome"] == "ignored"
    (post,) = prefect.posts
    assert post["path"] == "/api/events"
    (event,) = post["json"]
    assert event["event"] == REVIEW_ANNOTATED
    assert event["resource"]["prefect.resource.id"] == f"slmops.model.{params.registry.model_name}"
    assert event["payload"] == {
        "source": "label-studio",
        "action": "ANNOTATION_CREATED",
        "project_id": 7,
        "project_title": "slmops-intent review",
        "principal": "labelstudio",
    }


def test_without_a_prefect_api_the_hook_answers_503_saying_so(params, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (key,) = add_keys(params, labelstudio="reviewer").values()
    with TestClient(create_app(params)) as c:
        r = c.post("/hooks/label-studio", json=CREATED, headers=bearer(key))
    assert r.status_code == 503
    assert "PREFECT_API_URL" in r.json()["detail"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
