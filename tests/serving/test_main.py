"""``python -m slmops.serving``: argument and configuration errors end with a message."""

from __future__ import annotations

import logging

import uvicorn

import slmops.serving.app as app
from slmops.serving.__main__ import main
from slmops.tasks.core.config import load_params
from tests.conftest import REPO


def test_missing_params_file_exits_2_with_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["--params", str(missing)]) == 2
    assert f"{missing}: params file not found" in capsys.readouterr().err


def test_invalid_serve_setting_is_named(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("serve:\n  port: 70000\n")
    assert main(["--params", str(bad)]) == 2
    assert "serve.port" in capsys.readouterr().err


def test_the_service_binds_loopback_by_default_and_never_logs_the_token(
    tmp_path, monkeypatch, caplog
):
    secret = "sentinel-token-5f1c"
    monkeypatch.setenv("SLMOPS_API_TOKEN", secret)
    seen: dict = {}
    monkeypatch.setattr(app, "create_app", lambda params, model_loader=None: "app")
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(kw))
    params = load_params(REPO / "params.yaml")
    with caplog.at_level(logging.DEBUG):
        app.run(params)
    assert seen["host"] == "127.0.0.1" and params.serve.host == "127.0.0.1"
    assert secret not in caplog.text
