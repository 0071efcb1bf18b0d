"""The store's tables as SQLAlchemy Core objects, for queries. The schema itself is made by the Alembic
migrations in ``migrations/versions`` (frozen copies, never generated from here at run time); a test checks
that the migrated schema equals these tables.

JSON goes into TEXT columns, written by ``json_text`` with every non-ASCII character escaped: a report can
hold any string a model file carried (NUL, lone surrogates from undecodable file names), which PostgreSQL's
``json``/``jsonb`` types reject, while ASCII text is stored alike by every database.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (Column, DateTime, ForeignKey, Index, Integer, MetaData, String, Table, Text, TypeDecorator,
                        UniqueConstraint)
from sqlalchemy.engine import Dialect

DIGEST_LENGTH = 80
"""``sha256:`` and 64 hex digits, with room to spare."""
FINGERPRINT_LENGTH = 64
VERSION_LENGTH = 64
VERDICT_LENGTH = 32
STATUS_LENGTH = 32
REVISION_LENGTH = 100
PERSON_LENGTH = 200
KEY_CONSTRAINT = "uq_scans_key"
"""One row per (digest, settings fingerprint, tool version); NULL digests are distinct, so unhashed models
get a row per scan."""


class JSONText(TypeDecorator[Any]):
    """JSON data in a TEXT column, ASCII-only (see the module docstring)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=True, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


def display_text(value: str) -> str:
    """Text for a plain column (targets, notes, names, the strongest-evidence line) as every database holds
    it: valid UTF-8 without NUL. A lone surrogate or NUL becomes a visible escape (``\\udc80``, ``\\x00``);
    lossy only there, and the report itself (JSON) keeps the exact text."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC time: SQLite keeps no zone, so one read back without a zone is UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a store time must be timezone-aware (UTC)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = MetaData()

scans = Table(
    "scans", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(DIGEST_LENGTH), nullable=True),
    Column("settings_fingerprint", String(FINGERPRINT_LENGTH), nullable=False),
    Column("tool_version", String(VERSION_LENGTH), nullable=False),
    Column("settings", JSONText, nullable=False),
    Column("target", Text, nullable=False),
    Column("revision", String(REVISION_LENGTH), nullable=True),
    Column("verdict", String(VERDICT_LENGTH), nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("stored_at", UTCDateTime, nullable=False),
    Column("strongest", Text, nullable=True),
    Column("report", JSONText, nullable=False),
    UniqueConstraint("digest", "settings_fingerprint", "tool_version", name=KEY_CONSTRAINT),
    Index("ix_scans_stored_at", "stored_at"),
)

decisions = Table(
    "decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(DIGEST_LENGTH), nullable=False),
    Column("scan_id", Integer, ForeignKey("scans.id", name="fk_decisions_scan_id"), nullable=False),
    Column("status", String(STATUS_LENGTH), nullable=False),
    Column("note", Text, nullable=False),
    Column("decided_by", String(PERSON_LENGTH), nullable=False),
    Column("decided_at", UTCDateTime, nullable=False),
    Column("identities", JSONText, nullable=False),
    Index("ix_decisions_digest", "digest"),
)
