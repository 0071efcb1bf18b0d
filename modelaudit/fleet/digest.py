"""The keys of the scan store: a model's content digest and the fingerprint of the settings it was scanned
with. Two scans with the same digest, settings and tool version give the same report, so the store may
answer the second one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from modelaudit.findings import FileEntry
from modelaudit.stages import ScanConfig

DIGEST_PREFIX = "sha256:"


def content_digest(files: list[FileEntry]) -> str | None:
    """One digest over every file's path and sha256 (the inventory the report already has), in path order.

    None when any file was not hashed (a read limit, a link out of the folder), or when there are no files
    (a report whose target never resolved): such a model has no content identity, so the store never
    answers for it and every scan of it runs.
    """
    if not files or any(f.sha256 is None for f in files):
        return None
    h = hashlib.sha256()
    for f in sorted(files, key=lambda e: e.path):
        h.update(f"{f.path}\0{f.sha256}\n".encode("utf-8", "surrogateescape"))
    return DIGEST_PREFIX + h.hexdigest()


def scan_settings(config: ScanConfig, *, base: str | None = None, base_digest: str | None = None) -> dict[str, Any]:
    """The settings that shape a scan's result, as canonical JSON-ready data.

    Where the model comes from (cache folder, offline mode) and how progress is shown do not change the
    result and are left out; the base is named by its content digest when it could be hashed, else by the
    text given (so a changed local base folder is a new key only when it can be hashed).
    """
    policy = config.policy
    return {
        "stages": sorted(config.stages),
        "budget": config.budget,
        "seed": config.seed,
        "device": config.device,
        "dtype": config.dtype,
        "force": config.force,
        "options": _canonical(config.options),
        "read_limits": dataclasses.asdict(config.read_limits),
        "policy": {"fail_on": policy.fail_on.value, "allow_rules": sorted(policy.allow_rules),
                   "required_stages": None if policy.required_stages is None else sorted(policy.required_stages)},
        "base": None if base is None else (base_digest or f"spec:{base}"),
    }


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of ``scan_settings``' output (sorted keys, no whitespace)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _canonical(value: Any) -> Any:
    """Tuples as lists and sets as sorted lists, so equal options give equal JSON."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    return value
