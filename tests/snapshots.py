"""Digests of the state a rejected input must leave alone (labeled data, registry, store)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path


def tree_digest(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders), by path.

    A missing path is recorded as missing, so a file that appears is a change too.
    """
    digests: dict[str, str] = {}
    for top in paths:
        if not top.exists():
            digests[str(top)] = "(missing)"
            continue
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            digests[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def labeled_state(root: Path) -> dict[str, str]:
    """Digest of the labeled data folder and its ``.dvc`` pointer in a project ``root``."""
    return tree_digest(root / "data" / "labeled", root / "data" / "labeled.dvc")


def sqlite_rows(db: Path) -> dict[str, list[str]]:
    """Every row of every table of a SQLite database, sorted, by table.

    Row-for-row, not byte-for-byte: SQLite may touch its header on a read.
    """
    if not db.exists():
        return {}
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        tables = [
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
