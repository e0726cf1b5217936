"""The Label Studio client against a fake server (httpx.MockTransport): labeling
configs, projects found or made by title, pagination, tokens, and errors that name the
server."""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET

import httpx
import pytest

from slmops.tasks.core.config import LabelStudioConfig
from slmops.tasks.labels.label_studio import (
    LabelStudio,
    LabelStudioError,
    LabelStudioUnreachable,
    host_of,
    label_config,
)
from tests.tasks.labels.fake_label_studio import TOKEN, FakeLabelStudio

URL = "http://ls.test:8080"


def client(fake: FakeLabelStudio, token: str = TOKEN) -> LabelStudio:
    return LabelStudio(URL, token, transport=fake.transport(), token_source="the test token")


def test_choices_config_is_a_single_choice_over_the_label_set():
    xml = label_config("choices", ["a", 'b "&<x>'], text_field="body", from_name="intent")
    view = ET.fromstring(xml)
    text, choices = list(view)
    assert (text.tag, text.get("name"), text.get("value")) == ("Text", "body", "$body")
    assert choices.tag == "Choices"
    assert (choices.get("name"), choices.get("toName"), choices.get("choice")) == (
        "intent",
        "body",
        "single",
    )
    assert [c.get("value") for c in choices] == ["a", 'b "&<x>']  # escaped, read back whole


def test_span_config_puts_labels_over_the_text():
    view = ET.fromstring(label_config("labels", ["PER", "LOC"], text_field="text", from_name="ner"))
    labels, text = list(view)
    assert (labels.tag, labels.get("name"), labels.get("toName")) == ("Labels", "ner", "text")
    assert [label.get("value") for label in labels] == ["PER", "LOC"]
    assert text.tag == "Text"
    with pytest.raises(ValueError, match="at least one label"):
        label_config("labels", [], text_field="text", from_name="ner")


def test_from_config_needs_a_url_and_a_token(monkeypatch):
    with pytest.raises(LabelStudioError, match=r"label_studio\.url is not set"):
        LabelStudio.from_config(LabelStudioConfig())
    monkeypatch.delenv("MY_LS_TOKEN", raising=False)
    cfg = LabelStudioConfig(url=URL, token_env="MY_LS_TOKEN")
    with pytest.raises(LabelStudioError, match=r"ls.test:8080.*MY_LS_TOKEN"):
        LabelStudio.from_config(cfg)
    monkeypatch.setenv("MY_LS_TOKEN", TOKEN)
    with LabelStudio.from_config(cfg, transport=FakeLabelStudio().transport()) as ls:
        assert ls.projects() == []


def test_a_project_is_found_by_title_created_once_and_its_config_updated():
    fake = FakeLabelStudio()
    with client(fake) as ls:
        first, what = ls.ensure_project("review", "<View>1</View>")
        assert what == "created"
        again, what = ls.ensure_project("review", "<View>1</View>")
        assert (again["id"], what) == (first["id"], "unchanged")
        changed, what = ls.ensure_project("review", "<View>2</View>")
        assert (changed["id"], what) == (first["id"], "updated")
        assert fake.projects[first["id"]]["label_config"] == "<View>2</View>"
        assert len(fake.projects) == 1


def test_lists_are_read_page_by_page():
    fake = FakeLabelStudio(page_size=2)
    with client(fake) as ls:
        for i in range(5):
            ls.ensure_project(f"p{i}", "<View/>")
        assert [p["title"] for p in ls.projects()] == [f"p{i}" for i in range(5)]
        assert ls.import_tasks(1, [{"data": {"text": str(i)}} for i in range(5)]) == 5
        assert [t["data"]["text"] for t in ls.tasks(1)] == ["0", "1", "2", "3", "4"]
        assert ls.tasks(2) == []


def test_a_refused_token_names_the_server_and_the_token():
    with client(FakeLabelStudio(), token="wrong") as ls, pytest.raises(LabelStudioError) as caught:
        ls.projects()
    message = str(caught.value)
    assert URL in message and "the test token" in message and "401" in message
    assert "Invalid token." in message
    assert not isinstance(caught.value, LabelStudioUnreachable)


def test_an_http_error_carries_label_studio_detail():
    def transport(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"validation_errors": {"label_config": ["bad tag"]}})

    with (
        LabelStudio(URL, TOKEN, transport=httpx.MockTransport(transport)) as ls,
        pytest.raises(LabelStudioError, match=r"HTTP 400.*bad tag"),
    ):
        ls.ensure_project("x", "<View/>")


def test_something_that_is_not_label_studio_is_named():
    def transport(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    with (
        LabelStudio(URL, TOKEN, transport=httpx.MockTransport(transport)) as ls,
        pytest.raises(LabelStudioError, match="other than JSON"),
    ):
        ls.projects()


def test_nothing_listening_is_unreachable_naming_the_url():
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with (
        LabelStudio(url, TOKEN, timeout=5) as ls,
        pytest.raises(LabelStudioUnreachable, match=re.escape(f"at {url} is unreachable")),
    ):
        ls.projects()


def test_a_personal_access_token_is_exchanged_for_a_bearer_token():
    seen = []
    refresh = "eyJhbGciOi.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2ln"

    def transport(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("Authorization")))
        if request.url.path == "/api/token/refresh/":
            assert request.content and refresh in request.content.decode()
            return httpx.Response(200, json={"access": "ACCESS"})
        return httpx.Response(200, json={"count": 0, "next": None, "results": []})

    with LabelStudio(URL, refresh, transport=httpx.MockTransport(transport)) as ls:
        ls.projects()
        ls.projects()
    assert seen == [
        ("/api/token/refresh/", None),
        ("/api/projects/", "Bearer ACCESS"),
        ("/api/projects/", "Bearer ACCESS"),
    ]


def test_host_of():
    assert host_of("http://127.0.0.1:8080/") == "127.0.0.1:8080"
    assert host_of("https://ls.example.com") == "ls.example.com"
