"""What triage shows of a stored scan: its report with the content digest's decisions applied, the verdict
and strongest evidence as they stand now, and which decisions cover its findings.

No SQLAlchemy here: it reads through the ``ScanStore`` API, and the fleet page writer can use it alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelaudit.findings import Report, Severity
from modelaudit.fleet.decisions import apply_decisions
from modelaudit.fleet.records import StoredScan

if TYPE_CHECKING:
    from modelaudit.store.scanstore import ScanStore

STRONGEST_MAX_CHARS = 160
"""The strongest-evidence line is cut here (a finding's message can be long)."""


def strongest_evidence(report: Report) -> str | None:
    """The worst finding that still counts (not suppressed by a decision, and evidence at all: above ``info``,
    which only describes the model) in one line: ``rule (severity): message``; worst by severity, then
    confidence, then rule id. None when no finding counts."""
    active = [f for f in report.findings if not f.suppressed and f.severity > Severity.INFO]
    if not active:
        return None
    worst = min(active, key=lambda f: (-f.severity.rank, -f.confidence, f.rule_id, str(f.location)))
    line = f"{worst.rule_id} ({worst.severity.value}): {' '.join(worst.message.split())}"
    return line if len(line) <= STRONGEST_MAX_CHARS else line[:STRONGEST_MAX_CHARS - 1] + "…"


def decided_report(store: ScanStore, stored: StoredScan) -> Report:
    """The stored scan's report with every decision about its content digest applied (verdict and exit code
    follow the report's own policy again)."""
    report = stored.report if stored.report is not None else store.get(stored.id).report
    assert report is not None  # get() reads the report
    if stored.key.digest is None:
        return report
    return apply_decisions(report, store.decisions_for(stored.key.digest))


@dataclass
class TriageRow:
    """One stored scan as triage lists it."""

    scan: StoredScan
    """The stored scan (verdict and strongest evidence as stored; no report)."""
    verdict_now: str
    """The verdict with the digest's decisions applied (the stored one when nobody decided)."""
    exit_code_now: int | None
    strongest_now: str | None
    """The strongest evidence no decision suppressed."""
    decisions: dict[str, int] = field(default_factory=dict)
    """Decision status -> how many of the scan's findings it covers now."""

    def decision_summary(self) -> str:
        """``false-positive: 2, confirmed: 1``, or an empty string when nobody decided."""
        return ", ".join(f"{status}: {n}" for status, n in sorted(self.decisions.items()))


def triage_rows(store: ScanStore, verdicts: Collection[str] | None = None) -> list[TriageRow]:
    """Every stored scan, latest first, with its verdict as decided now. With ``verdicts``, only scans whose
    verdict as stored or as decided now is one of them (a model decided a false positive stays listed
    under the verdict it was stored with). Only reports of decided digests are read."""
    decided = store.decided_digests()
    rows = []
    for stored in store.list():
        if stored.key.digest in decided:
            report = decided_report(store, stored)
            counts = Counter(f.decision.status for f in report.findings if f.decision is not None)
            row = TriageRow(scan=stored, verdict_now=report.verdict.value, exit_code_now=report.gate.exit_code,
                            strongest_now=strongest_evidence(report), decisions=dict(counts))
        else:
            row = TriageRow(scan=stored, verdict_now=stored.verdict, exit_code_now=stored.exit_code,
                            strongest_now=stored.strongest)
        if verdicts is None or stored.verdict in verdicts or row.verdict_now in verdicts:
            rows.append(row)
    return rows
