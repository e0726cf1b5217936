"""Alembic's environment for the feedback store: run on the connection the caller passes
(``config.attributes["connection"]``); no URL, no alembic.ini."""

from __future__ import annotations

from alembic import context

from slmops.tasks.feedback.migrations import VERSION_TABLE

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=None,
    version_table=VERSION_TABLE,
    # SQLite alters a column by rebuilding its table (batch_alter_table).
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
