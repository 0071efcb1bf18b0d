"""The first schema: stored scans and triage decisions.

Revision ID: 0001
Revises:
Create Date: 2026-05-20

Frozen: the column types are written out here, not taken from ``modelaudit.store.schema``, so a later change
to the schema module cannot change what this revision made in stores that already ran it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(80), nullable=True),
        sa.Column("settings_fingerprint", sa.String(64), nullable=False),
        sa.Column("tool_version", sa.String(64), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(100), nullable=True),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("strongest", sa.Text(), nullable=True),
        sa.Column("report", sa.Text(), nullable=False),
        sa.UniqueConstraint("digest", "settings_fingerprint", "tool_version", name="uq_scans_key"),
    )
    op.create_index("ix_scans_stored_at", "scans", ["stored_at"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("scan_id", sa.Integer(), sa.ForeignKey("scans.id", name="fk_decisions_scan_id"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
    )
    op.create_index("ix_decisions_digest", "decisions", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_decisions_digest", table_name="decisions")
    op.drop_table("decisions")
    op.drop_index("ix_scans_stored_at", table_name="scans")
    op.drop_table("scans")
