"""Records of the scan store: what was scanned with which settings, and what people decided about it.

Plain dataclasses shared by the store, the fleet driver, triage and the fleet page writer, so none of them
needs SQLAlchemy's row types (and writers stay free of the database).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelaudit.findings import Report


@dataclass(frozen=True)
class ScanKey:
    """What makes two scans interchangeable: the same bytes, scanned the same way by the same tool."""

    digest: str | None
    """Content digest of the model's files (``fleet.digest.content_digest``), ``sha256:<hex>``; None when a file
    could not be hashed (such a scan is stored but never answers for another)."""
    settings: str
    """Fingerprint of the settings that shape the result (``fleet.digest.settings_fingerprint``)."""
    tool_version: str
    """modelaudit version."""


@dataclass
class StoredScan:
    """One stored report and the key it was stored under."""

    id: int
    """The store's id for it (``triage show ID``)."""
    key: ScanKey
    target: str
    """The target as it was given (hub id, folder or file)."""
    revision: str | None
    """Resolved commit sha for hub targets."""
    verdict: str
    """The verdict as stored (before later decisions)."""
    exit_code: int | None
    stored_at: str
    """UTC, ISO 8601 with a ``Z``."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The canonical settings the fingerprint was made from."""
    report: Report | None = None
    """The full report (None in listings that did not ask for it)."""
    strongest: str | None = None
    """The strongest evidence in one line (rule id and message of the worst finding), for listings."""


@dataclass
class Decision:
    """A triage decision about a stored scan; it covers findings by ``Finding.identity`` and applies to every
    later scan of the same content digest."""

    id: int
    digest: str
    scan_id: int
    """The stored scan it was made on."""
    status: str
    """``confirmed``, ``false-positive`` or ``accepted-risk`` (``findings.TRIAGE_STATUSES``)."""
    note: str
    decided_by: str
    decided_at: str
    identities: list[str] = field(default_factory=list)
    """``Finding.identity`` of each finding it covers."""
