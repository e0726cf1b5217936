"""tasks/core/notify.py: the webhook gets one JSON POST per event; a failing webhook is
logged without its URL and never raises."""

import logging
import time
from pathlib import Path

import pytest

from slmops.tasks.core import notify
from slmops.tasks.core.config import ConfigError, NotifyEvent, load_params, parse_params
from tests.webhook import Webhook, refused_url

SECRET_PATH = "/services/T000/B000/s3cr3t-webhook-token"


def params_with(tmp_path: Path, **notify_cfg):
    return parse_params({"notify": notify_cfg}, tmp_path / "params.yaml")


def test_an_event_is_posted_once_as_json(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="slmops.tasks.core.notify")
    with Webhook(path=SECRET_PATH) as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        sent = notify.send(
            params_with(tmp_path), NotifyEvent.flow_failed, {"flow": "retrain", "step": "train"}
        )
    assert sent
    assert len(hook.posts) == 1
    post = hook.posts[0]
    assert post["path"] == SECRET_PATH and post["content_type"] == "application/json"
    assert post["json"]["event"] == "flow_failed" and post["json"]["step"] == "train"
    assert post["json"]["time"]
    assert "delivered" in caplog.text and "s3cr3t" not in caplog.text


def test_events_not_configured_and_a_missing_url_send_nothing(tmp_path, monkeypatch):
    with Webhook() as hook:
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
        params = params_with(tmp_path)  # default events: flow_failed only
        assert not notify.send(params, NotifyEvent.challenger_refused, {})
        monkeypatch.delenv("SLMOPS_NOTIFY_URL")
        assert not notify.send(params, NotifyEvent.flow_failed, {})
    assert hook.posts == []


def test_the_url_comes_from_the_named_variable_else_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SLMOPS_NOTIFY_URL", raising=False)
    (tmp_path / "hook.url").write_text("https://example.invalid/from-file\n")
    params = params_with(tmp_path, url_env="MY_HOOK", url_file="hook.url")
    assert notify.webhook_url(params) == "https://example.invalid/from-file"
    monkeypatch.setenv("MY_HOOK", "https://example.invalid/from-env")
    assert notify.webhook_url(params) == "https://example.invalid/from-env"
    assert notify.webhook_url(params_with(tmp_path, url_env="UNSET_HOOK_VAR")) is None


@pytest.mark.parametrize("case", ["refused", "http-500", "timeout"])
def test_a_failing_webhook_is_logged_without_its_url_and_never_raises(
    tmp_path, monkeypatch, caplog, case
):
    caplog.set_level(logging.INFO, logger="slmops.tasks.core.notify")
    params = params_with(tmp_path, timeout_seconds=0.3)
    if case == "refused":
        monkeypatch.setenv("SLMOPS_NOTIFY_URL", refused_url(SECRET_PATH))
        assert not notify.send(params, NotifyEvent.flow_failed, {"step": "train"})
        assert "ConnectionRefusedError" in caplog.text
    else:
        status, delay = (500, 0.0) if case == "http-500" else (204, 2.0)
        with Webhook(status=status, delay=delay, path=SECRET_PATH) as hook:
            monkeypatch.setenv("SLMOPS_NOTIFY_URL", hook.url)
            start = time.monotonic()
            assert not notify.send(params, NotifyEvent.flow_failed, {"step": "train"})
            assert time.monotonic() - start < 1.5
        assert ("HTTP 500" if case == "http-500" else "timed out") in caplog.text
    assert "not delivered" in caplog.text
    assert "s3cr3t" not in caplog.text and "127.0.0.1" not in caplog.text


def test_params_refuse_a_url_in_place_of_the_variable_name_without_echoing_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("notify:\n  url_env: https://hooks.slack.com/services/T0/B0/s3cr3t\n")
    with pytest.raises(
        ConfigError, match=r"notify\.url_env: .*name of an environment variable"
    ) as e:
        load_params(path)
    assert "s3cr3t" not in str(e.value)
    path.write_text("notify:\n  url: https://hooks.slack.com/services/T0/B0/s3cr3t\n")
    with pytest.raises(ConfigError, match=r"notify\.url: unknown key") as e:
        load_params(path)
    assert "s3cr3t" not in str(e.value)
