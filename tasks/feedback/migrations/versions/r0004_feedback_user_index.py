"""An index on ``feedback (user_name, created_at)``.

Ingestion counts each reviewer's corrections of the day (the daily cap,
``FeedbackStore.corrections_by``) once per reviewer and day in every chunk, and
``slmops feedback revoke`` selects a reviewer's feedback; without this index each
of those scanned every feedback row, so an ingestion of a fixed number of new rows
grew with the store's whole history (benchmarks/bench_curves.py measured it).
Created where it is missing (a database that ``create_all`` made already has it).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEX = "ix_feedback_user_created"


def upgrade() -> None:
    """Create the index unless the database has it."""
    op.create_index(INDEX, "feedback", ["user_name", "created_at"], if_not_exists=True)
