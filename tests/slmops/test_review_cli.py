"""`slmops review push|pull`: errors that name the server (not configured, no token,
nobody listening) and exit 1; the round trip with a real server is
tests/infra/test_label_studio.py."""

from __future__ import annotations

import socket

import yaml

from tests.slmops.run_cli import cli


def _point_at(project, url: str | None) -> str:
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["label_studio"] = {"url": url, "timeout_seconds": 5}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_help_names_both_commands(monkeypatch, capsys):
    code, out = cli(monkeypatch, capsys, "review", "--help")
    assert code == 0 and "push" in out and "pull" in out


def test_not_configured(tiny_project, monkeypatch, capsys):
    params = _point_at(tiny_project, None)
    code, out = cli(monkeypatch, capsys, "review", "push", "--params", params)
    assert code == 1 and "label_studio.url is not set" in out, out


def test_no_token(tiny_project, monkeypatch, capsys):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    params = _point_at(tiny_project, "http://127.0.0.1:9")
    code, out = cli(monkeypatch, capsys, "review", "pull", "--params", params)
    assert code == 1 and "LABEL_STUDIO_API_KEY" in out and "127.0.0.1:9" in out, out


def test_nobody_listening(tiny_project, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "a-token")
    params = _point_at(tiny_project, url)
    for command in ("push", "pull"):
        code, out = cli(monkeypatch, capsys, "review", command, "--params", params)
        assert code == 1 and f"Label Studio at {url} is unreachable" in out, out
        assert "Traceback" not in out
