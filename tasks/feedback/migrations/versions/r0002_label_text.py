"""The label columns become TEXT where they are not already.

The first release made ``predictions.label`` and ``feedback.label`` VARCHAR(255), too
short for a token-classification label (span JSON); later releases declared TEXT, but
``create_all`` never altered an existing table. Postgres alters the column in place;
SQLite rebuilds the table (batch mode, from the baseline definition so that its named
CHECK constraints and indexes come back), keeping every row.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from slmops.tasks.feedback.migrations import baseline

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LABEL_COLUMNS = {"predictions": "label", "feedback": "label"}


def _bounded(table: str, column: str) -> bool:
    """Whether ``table.column`` has a length limit (VARCHAR(n)) rather than TEXT."""
    for info in sa.inspect(op.get_bind()).get_columns(table):
        if info["name"] == column:
            return getattr(info["type"], "length", None) is not None
    raise RuntimeError(f"the feedback database's table {table} has no column {column}")


def upgrade() -> None:
    """Widen each bounded label column to TEXT."""
    bind = op.get_bind()
    tables = baseline.tables()
    unique = next(i for i in tables.tables["feedback"].indexes if i.name.startswith("uq_"))
    # Batch mode cannot rebuild an expression index: recreated below instead.
    tables.tables["feedback"].indexes.discard(unique)
    for table, column in LABEL_COLUMNS.items():
        if not _bounded(table, column):
            continue
        if bind.dialect.name == "sqlite":
            with op.batch_alter_table(
                table, copy_from=tables.tables[table], recreate="always"
            ) as batch:
                batch.alter_column(column, type_=sa.Text, existing_nullable=False)
        else:
            op.alter_column(table, column, type_=sa.Text, existing_nullable=False)
    # IF NOT EXISTS: SQLite's inspector does not list expression indexes.
    bind.execute(sa.schema.CreateIndex(unique, if_not_exists=True))
