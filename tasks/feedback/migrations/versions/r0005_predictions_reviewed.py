"""``predictions.reviewed`` and a partial index for the review queue.

The review queue (``FeedbackStore.review_queue``) asked for the least confident
predictions with no feedback row. Reviewers work that queue, so the reviewed
predictions gather at the least confident end and every page stepped over all of
them: its cost grew with the number of predictions ever reviewed (retention keeps
those), ~40 ms at 1M predictions (benchmarks/bench_curves.py). ``reviewed`` (set
with the first feedback row) and an index on (confidence, created_at DESC) of only
the unreviewed rows make a page's cost independent of the store's size.

The column is added with a constant default (SQLite: ``ADD COLUMN ... NOT NULL
DEFAULT 0``, no table rebuild; Postgres: no rewrite) and set for every prediction
that has feedback, in the same transaction as the rest of the upgrade.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_predictions_review_queue"


def upgrade() -> None:
    """Add ``reviewed`` (false), set it where feedback exists, create the partial index."""
    op.add_column(
        "predictions",
        sa.Column("reviewed", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    predictions = sa.table("predictions", sa.column("id"), sa.column("reviewed", sa.Boolean))
    feedback = sa.table("feedback", sa.column("prediction_id"))
    has_feedback = sa.exists().where(feedback.c.prediction_id == predictions.c.id)
    op.execute(predictions.update().where(has_feedback).values(reviewed=True))
    unreviewed = predictions.c.reviewed == sa.false()
    op.create_index(
        INDEX,
        "predictions",
        ["confidence", sa.text("created_at DESC")],
        sqlite_where=unreviewed,
        postgresql_where=unreviewed,
    )
