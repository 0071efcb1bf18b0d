"""Scans answered from the scan store: the key of a target (its content digest, settings and tool version),
the stored report with the digest's triage decisions applied, and storing a new report.

The one-model path of ``modelaudit scan --store`` (``scan_with_store``) and the pieces the fleet driver
calls for each target (``key_for``, ``from_store``, ``store_report``). Library code: no click, and no
SQLAlchemy (the store is passed in, opened by the caller).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from modelaudit import __version__
from modelaudit.api import scan
from modelaudit.errors import ModelAuditError
from modelaudit.findings import Report, ScanInfo
from modelaudit.fleet.decisions import apply_decisions
from modelaudit.fleet.digest import content_digest, scan_settings, settings_fingerprint
from modelaudit.fleet.records import ScanKey
from modelaudit.stages import ScanConfig
from modelaudit.store.views import decided_report
from modelaudit.target import resolve_target

if TYPE_CHECKING:
    from modelaudit.store.scanstore import ScanStore


def key_for(target: str | os.PathLike[str], *, revision: str | None = None, base: str | None = None,
            config: ScanConfig) -> tuple[ScanKey | None, dict[str, Any]]:
    """The store key of scanning ``target`` with ``config`` (None when a file could not be hashed: such a
    model is never answered from the store) and the canonical settings it was made from.

    The target is resolved and hashed as a scan would (cache folder, offline mode, read limits); the base,
    when given, is named by its content digest if it resolves and hashes, else by its text.

    Raises:
        TargetNotFoundError, TargetUnreadableError, UsageError: as ``api.scan`` for the target.
    """
    resolved = resolve_target(str(target), revision=revision, cache_dir=config.cache_dir, offline=config.offline,
                              limits=config.read_limits)
    digest = content_digest(resolved.info.files)
    settings = scan_settings(config, base=base, base_digest=_base_digest(base, config))
    if digest is None:
        return None, settings
    return ScanKey(digest=digest, settings=settings_fingerprint(settings), tool_version=__version__), settings


def _base_digest(base: str | None, config: ScanConfig) -> str | None:
    """The base's content digest, or None when there is no base or it does not resolve (the scan itself
    reports a missing base; the key then names it by its text)."""
    if base is None:
        return None
    try:
        resolved = resolve_target(base, cache_dir=config.cache_dir, offline=config.offline,
                                  limits=config.read_limits)
    except ModelAuditError:
        return None
    return content_digest(resolved.info.files)


def from_store(store: ScanStore, key: ScanKey) -> Report | None:
    """The stored report for ``key`` with the digest's decisions applied and marked as answered from the
    store (``ScanInfo.stored_scan``/``stored_at``); None when the store has none."""
    stored = store.lookup(key)
    if stored is None or stored.report is None or key.digest is None:
        return None
    report = decided_report(store, stored)
    if report.scan is None:  # a report stored without provenance: say at least when it was made
        report.scan = ScanInfo(started_at=stored.stored_at)
    report.scan.stored_scan = stored.id
    report.scan.stored_at = stored.stored_at
    return report


def store_report(store: ScanStore, report: Report, settings: dict[str, Any], target: str) -> Report:
    """Store a report this run made (key: its own inventory's digest, the settings' fingerprint and its tool
    version), then apply the digest's decisions, so a new scan of an already-decided model carries them."""
    digest = content_digest(report.target.files)
    # an unhashed model (digest None) is stored as a row of its own and never looked up
    key = ScanKey(digest=digest, settings=settings_fingerprint(settings),
                  tool_version=report.tool_version)
    store.put(report, key, settings, target)
    if digest is None:
        return report
    return apply_decisions(report, store.decisions_for(digest))


def scan_with_store(target: str | os.PathLike[str], *, revision: str | None = None, base: str | None = None,
                    config: ScanConfig | None = None, store: ScanStore, rescan: bool = False) -> Report:
    """``api.scan`` through the store: answered from it when the same content was scanned with the same
    settings by this version (unless ``rescan``), else scanned and stored. Decisions about the content
    apply either way.

    Raises:
        TargetNotFoundError, TargetUnreadableError, UsageError: as ``api.scan``.
        StoreError: the store failed while being read or written.
    """
    cfg = config or ScanConfig()
    key, settings = key_for(target, revision=revision, base=base, config=cfg)
    if key is not None and not rescan:
        answered = from_store(store, key)
        if answered is not None:
            return answered
    report = scan(target, revision=revision, base=base, config=cfg)
    return store_report(store, report, settings, str(target))
