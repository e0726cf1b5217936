"""Baseline: the tables the release before migrations created.

A database that release made (tables, no version table) is stamped here instead of
running this (see :func:`slmops.tasks.feedback.migrations.upgrade`).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from slmops.tasks.feedback.migrations import baseline

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the baseline tables."""
    baseline.tables().create_all(op.get_bind())
