"""``python -m serving``: argument and configuration errors end with a message, not a trace."""

from __future__ import annotations

from serving.__main__ import main


def test_missing_params_file_exits_2_with_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["--params", str(missing)]) == 2
    assert f"{missing}: params file not found" in capsys.readouterr().err


def test_invalid_serve_setting_is_named(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("serve:\n  port: 70000\n")
    assert main(["--params", str(bad)]) == 2
    assert "serve.port" in capsys.readouterr().err
