"""Running the ``slmops`` command line in-process, for the CLI tests."""

from __future__ import annotations

import sys

from slmops.cli import main


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `slmops <args>` in-process; return the exit code and all output."""
    monkeypatch.setattr(sys, "argv", ["slmops", *args])
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps long messages otherwise
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out + captured.err
