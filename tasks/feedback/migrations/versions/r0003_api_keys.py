"""The API keys table comes under the migrations.

The release before made ``api_keys`` with ``create_all`` when its keys were first used
(``slmops keys``, the service's start), so a database may or may not have it: it is
created here where it is missing, exactly as that release made it, and left as it is
where it exists.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from slmops.tasks.feedback.migrations import baseline

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``api_keys`` (and its partial unique index) unless the database has it."""
    baseline.api_keys(sa.MetaData()).create(op.get_bind(), checkfirst=True)
