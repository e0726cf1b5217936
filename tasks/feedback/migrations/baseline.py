"""The feedback store's tables as the release before migrations created them, frozen.

The baseline revision creates exactly these; later revisions change the database, never
this module (the live tables are in :mod:`slmops.tasks.feedback.store`).
"""

from __future__ import annotations

import sqlalchemy as sa


def tables() -> sa.MetaData:
    """A new MetaData holding the baseline tables (new each call: revisions may alter it)."""
    metadata = sa.MetaData()
    sa.Table(
        "predictions",
        metadata,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("top_k", sa.JSON, nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("principal", sa.String(64), nullable=True),
        sa.Index("ix_predictions_confidence", "confidence"),
        sa.Index("ix_predictions_created_at", "created_at"),
    )
    feedback = sa.Table(
        "feedback",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "prediction_id",
            sa.String(32),
            sa.ForeignKey("predictions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user_name", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('correction', 'confirmation')", name="ck_feedback_kind"),
    )
    feedback_unique(feedback)
    sa.Table(
        "ingest_watermark",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("last_feedback_id", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "feedback_held",
        metadata,
        _about_feedback(),
        sa.Column("queue", sa.String(16), nullable=False),
        sa.Column("check_name", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(16), nullable=True),
        sa.CheckConstraint("queue IN ('conflict', 'dead_letter')", name="ck_feedback_held_queue"),
    )
    sa.Table(
        "feedback_revocations",
        metadata,
        _about_feedback(),
        sa.Column("revoked_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    )
    return metadata


def api_keys(metadata: sa.MetaData) -> sa.Table:
    """The ``api_keys`` table as the release before migrations made it: not at the first
    open of the database but at the first use of its keys, so revision 0003 creates it
    where it is missing instead of revision 0001."""
    return sa.Table(
        "api_keys",
        metadata,
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('client', 'reviewer', 'admin')", name="ck_api_keys_role"),
        sa.Index(
            "uq_api_keys_active_name",
            "name",
            unique=True,
            sqlite_where=sa.text("revoked_at IS NULL"),
            postgresql_where=sa.text("revoked_at IS NULL"),
        ),
    )


def feedback_unique(feedback: sa.Table) -> sa.Index:
    """One row per (prediction, label, reviewer): an expression index, which SQLite's
    inspector does not list, so a revision that rebuilds ``feedback`` recreates it."""
    return sa.Index(
        "uq_feedback_prediction_label_user",
        feedback.c.prediction_id,
        feedback.c.label,
        sa.func.coalesce(feedback.c.user_name, ""),
        unique=True,
    )


def _about_feedback() -> sa.Column:
    return sa.Column(
        "feedback_id",
        sa.Integer,
        sa.ForeignKey("feedback.id", ondelete="CASCADE"),
        primary_key=True,
    )
