"""The promotion ledger: every gate decision, promotion and rollback, append-only.

MLflow keeps no history of alias moves; this JSON-lines file does. One entry
per line, flushed and fsynced before the call returns. A line torn by a crash
mid-write (its append never returned) is skipped by :func:`read` and cut off by
the next :func:`append`, so it never becomes a corrupt line in the middle.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def append(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one entry (a ``time`` field is added when missing) and return it."""
    entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, ensure_ascii=False, sort_keys=False, default=str)
    with path.open("a+b") as fh:
        _drop_torn_tail(fh)
        fh.write((line + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    return entry


def _drop_torn_tail(fh) -> None:
    """Cut a last line without its newline (a write torn by a crash) off the open file."""
    size = fh.seek(0, os.SEEK_END)
    if size == 0:
        return
    fh.seek(size - 1)
    if fh.read(1) == b"\n":
        return
    block = 1 << 16
    end = size
    while end > 0:  # find the last newline, reading backwards
        start = max(0, end - block)
        fh.seek(start)
        found = fh.read(end - start).rfind(b"\n")
        if found >= 0:
            fh.truncate(start + found + 1)
            return
        end = start
    fh.truncate(0)


def read(path: Path) -> list[dict[str, Any]]:
    """All entries, oldest first; a torn last line (crash mid-write) is skipped."""
    if not path.exists():
        return []
    entries = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # only the last line can be torn
            raise ValueError(f"{path}: line {i + 1}: not valid JSON") from None
    return entries
