"""The feedback store's schema, managed by Alembic (``slmops db upgrade``).

Revisions live in ``versions/``; the environment (``env.py``) runs on a connection the
caller passes, so no alembic.ini is needed. A database the release before migrations
made (its tables, no version table) is first brought to that release's schema by the
caller's ``adopt`` step and stamped at the baseline; a new database runs every revision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

# Not alembic's default name: the database may hold other applications' tables.
VERSION_TABLE = "slmops_feedback_alembic_version"
BASELINE = "0001"
# A table every database the release before migrations made has.
RELEASE_TABLE = "predictions"
# Postgres advisory-lock key: one process migrates at a time (the service and a flow may
# open a new database together).
PG_LOCK_KEY = 0x51_4D_0F_EE


class SchemaBehind(RuntimeError):
    """The database's schema is older than this code's and migrating it is off."""


def config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration: scripts in this package, run on ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this code knows."""
    heads = ScriptDirectory.from_config(config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the feedback migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current(engine: Engine) -> str | None:
    """The database's revision; None: not under migrations (new, or the older release's)."""
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def check(engine: Engine) -> None:
    """Raise :class:`SchemaBehind` unless the database is at :func:`head`."""
    have, want = current(engine), head()
    if have != want:
        url = engine.url.render_as_string(hide_password=True)
        state = f"at revision {have}" if have else "not under migrations"
        raise SchemaBehind(
            f"the feedback database {url} is {state}; this code needs revision {want}. "
            "Run `slmops db upgrade` (or set feedback.auto_migrate: true)"
        )


def upgrade(engine: Engine, adopt: Callable[[Engine], None]) -> tuple[str | None, str]:
    """Bring the database to :func:`head`; return (revision before, revision after).

    ``adopt`` brings a database the release before migrations made up to that release's
    schema (its in-place upgrades); it is then stamped at the baseline. Idempotent.
    """
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # A table rebuild drops the old table: with foreign keys on, that would
            # delete the rows that reference it (ON DELETE CASCADE). SQLite's own recipe
            # turns them off meanwhile (outside a transaction) and checks them after.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        else:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            conn.commit()
        try:
            before = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()
            conn.commit()
            if before is None and sa.inspect(conn).has_table(RELEASE_TABLE):
                adopt(engine)
                command.stamp(config(conn), BASELINE)
                conn.commit()
                log.info("feedback database: stamped at the baseline revision %s", BASELINE)
            command.upgrade(config(conn), "head")
            conn.commit()
            if sqlite:
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the feedback migration broke foreign keys: {broken}")
        finally:
            if sqlite:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
            else:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                conn.commit()
    after = current(engine)
    if after != before:
        log.info("feedback database: schema %s -> %s", before, after)
    return before, after
