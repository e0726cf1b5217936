"""Bad input catalogue for the HTTP bodies of /predict and /feedback: each malformed
request is a 4xx whose detail names the field and the problem, and leaves the
feedback store and the model registry row-for-row as they were."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient

from slmops.serving.app import create_app
from tests.serving.conftest import auth, wait_until_loaded
from tests.snapshots import sqlite_rows

TEXT = "my card has not arrived yet"


@pytest.fixture
def client(params):
    with TestClient(create_app(params)) as c:
        wait_until_loaded(c)
        yield c


@pytest.fixture
def state(params, registry):
    """Row-for-row snapshot of the feedback store and the registry."""
    store = params.path(urlparse(params.feedback.db_url).path.lstrip("/"))
    mlflow_db = Path("/" + urlparse(registry.uri).path.lstrip("/"))

    def snapshot() -> dict:
        return {"store": sqlite_rows(store), "registry": sqlite_rows(mlflow_db)}

    return snapshot


def _detail(response) -> str:
    return json.dumps(response.json()["detail"])


# body (bytes, sent as application/json), status, words the detail must hold
PREDICT: list[tuple[str, bytes, int, tuple[str, ...]]] = [
    ("empty_body", b"", 422, ()),
    ("truncated_json", b'{"text": "my card', 422, ("json_invalid",)),
    # Not UTF-8/16/32, so not JSON: FastAPI answers 400 before the model sees it.
    ("latin1_body", '{"text": "caf\xe9"}'.encode("latin-1"), 400, ("error parsing the body",)),
    ("list_body", json.dumps([TEXT]).encode(), 422, ()),
    ("number_text", b'{"text": 5}', 422, ("text", "string")),
    ("null_text", b'{"text": null}', 422, ("send either 'text'",)),
    ("string_texts", json.dumps({"texts": TEXT}).encode(), 422, ("texts", "list")),
    ("number_in_texts", b'{"texts": ["ok text", 3]}', 422, ("texts", "1", "string")),
    ("object_text", b'{"text": {"a": 1}}', 422, ("text", "string")),
    ("both", json.dumps({"text": TEXT, "texts": [TEXT]}).encode(), 422, ("send either",)),
    ("neither", b"{}", 422, ("send either",)),
    ("unknown_field", json.dumps({"text": TEXT, "model": "x"}).encode(), 422, ("model", "extra")),
    ("whitespace_text", b'{"text": " \\t\\r\\n "}', 422, ("text is empty or only whitespace",)),
    ("empty_text", b'{"text": ""}', 422, ("text is empty or only whitespace",)),
    ("empty_texts", b'{"texts": []}', 422, ("'texts' is empty",)),
    ("blank_in_batch", json.dumps({"texts": [TEXT, "  "]}).encode(), 422, ("texts[1] is empty",)),
    (
        "long_text",
        json.dumps({"text": "a" * 5000}).encode(),
        413,
        ("5000 characters", "max_text_chars"),
    ),
    ("1mb_text", json.dumps({"text": "a" * 1_048_576}).encode(), 413, ("limit",)),
    ("too_many", json.dumps({"texts": [TEXT] * 65}).encode(), 413, ("65 texts", "max_batch")),
]


@pytest.mark.parametrize(("name", "body", "code", "words"), PREDICT, ids=[p[0] for p in PREDICT])
def test_a_bad_predict_body_is_a_4xx_naming_the_problem_and_logs_nothing(
    client, state, name, body, code, words
) -> None:
    before = state()
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == code, response.text
    detail = _detail(response)
    for word in words:
        assert word in detail, detail
    assert state() == before


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"text": "my card has not arrived yet"}',
        b'{\r\n  "text": "my card has not arrived yet"\r\n}\r\n',
        json.dumps({"text": TEXT}).encode("utf-16"),
    ],
    ids=["utf8_bom", "crlf", "utf16_bom"],
)
def test_bom_crlf_and_utf16_json_bodies_are_read(client, body) -> None:
    # JSON (RFC 8259) allows any of these; the answer must be the same as plain UTF-8's.
    plain = client.post("/predict", json={"text": TEXT}).json()["predictions"][0]["label"]
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == plain


def test_a_text_with_crlf_and_control_characters_is_answered(client) -> None:
    response = client.post("/predict", json={"text": "my card\r\nhas not\x00 arrived\u200b"})
    assert response.status_code == 200, response.text


@pytest.fixture
def prediction_id(client) -> str:
    pid = client.post("/predict", json={"text": TEXT}).json()["predictions"][0]["prediction_id"]
    # Committed before the test snapshots the file (the service's writer commits after
    # answering; reads through the store wait for it).
    assert client.app.state.service.store.get_prediction(pid) is not None
    return pid


FEEDBACK: list[tuple[str, object, int, tuple[str, ...]]] = [
    ("missing_label", {"prediction_id": "{pid}"}, 422, ("label", "missing")),
    ("missing_id", {"label": "card_arrival"}, 422, ("prediction_id", "missing")),
    ("empty_label", {"prediction_id": "{pid}", "label": ""}, 422, ("label", "at least 1")),
    (
        "whitespace_label",
        {"prediction_id": "{pid}", "label": "  "},
        422,
        ("unknown label '  '", "card_arrival"),
    ),
    ("unknown_label", {"prediction_id": "{pid}", "label": "pin_queries"}, 422, ("pin_queries",)),
    ("number_label", {"prediction_id": "{pid}", "label": 7}, 422, ("label", "string")),
    ("null_label", {"prediction_id": "{pid}", "label": None}, 422, ("label", "string")),
    ("list_body", ["{pid}", "card_arrival"], 422, ()),
    (
        "unknown_id",
        {"prediction_id": "0" * 32, "label": "card_arrival"},
        404,
        ("unknown prediction id",),
    ),
    (
        "dotdot_id",
        {"prediction_id": "../../etc/passwd", "label": "card_arrival"},
        404,
        ("unknown prediction id",),
    ),
    (
        "long_id",
        {"prediction_id": "x" * 65, "label": "card_arrival"},
        422,
        ("prediction_id", "at most 64"),
    ),
    ("long_label", {"prediction_id": "{pid}", "label": "a" * 256}, 422, ("label", "at most 255")),
    (
        "long_user",
        {"prediction_id": "{pid}", "label": "card_arrival", "user": "u" * 256},
        422,
        ("user",),
    ),
    ("unknown_field", {"prediction_id": "{pid}", "label": "card_arrival", "x": 1}, 422, ("extra",)),
    (
        "1mb_user",
        {"prediction_id": "{pid}", "label": "card_arrival", "user": "u" * 1_048_576},
        413,
        ("limit",),
    ),
]


def _fill(body: object, pid: str) -> bytes:
    return json.dumps(body).replace("{pid}", pid).encode()


@pytest.mark.parametrize(("name", "body", "code", "words"), FEEDBACK, ids=[f[0] for f in FEEDBACK])
def test_bad_feedback_is_a_4xx_naming_the_field_and_stores_nothing(
    client, state, prediction_id, name, body, code, words
) -> None:
    before = state()
    response = client.post(
        "/feedback",
        content=_fill(body, prediction_id),
        headers={"content-type": "application/json", **auth()},
    )
    assert response.status_code == code, response.text
    detail = _detail(response)
    for word in words:
        assert word in detail, detail
    assert state() == before


def test_truncated_and_mis_encoded_feedback_bodies_store_nothing(client, state, prediction_id):
    good = json.dumps({"prediction_id": prediction_id, "label": "card_arrival"})
    before = state()
    # (UTF-16 without a BOM is valid JSON: RFC 8259 readers detect it from the NULs.)
    for body in (good[:-5].encode(), b"", b"null", b"[]", b'"card_arrival"'):
        response = client.post(
            "/feedback", content=body, headers={"content-type": "application/json", **auth()}
        )
        assert response.status_code == 422, (body, response.text)
    assert state() == before


def test_the_same_feedback_twice_is_one_row(client, state, prediction_id) -> None:
    body = {"prediction_id": prediction_id, "label": "card_arrival"}
    first = client.post("/feedback", json=body, headers=auth())
    assert first.status_code == 201, first.text
    after_first = state()
    again = client.post("/feedback", json=body, headers=auth())
    assert again.status_code == 200 and again.json()["feedback_id"] == first.json()["feedback_id"]
    assert state() == after_first
