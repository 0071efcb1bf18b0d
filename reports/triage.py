"""One wording of triage decisions and of the gate's counts for every writer.

A security team reads the console, a reviewer the Markdown comment, CI the JUnit suite: if one said
"suppressed" and another "accepted", or counted blocking findings differently, they would seem to disagree
about the same report. So the words and the counts live here, and the counts read only what the report
already says (``Finding.decision``, ``Finding.suppressed``, ``Report.gate``): writers compute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelaudit.findings import Report, TriageDecision

STATUS_WORDS = {"confirmed": "confirmed", "false-positive": "false positive", "accepted-risk": "accepted risk"}
"""How each triage status reads in a report (``findings.TRIAGE_STATUSES``); an unknown one shows as stored."""
SUPPRESSED = "suppressed"
"""The word every writer puts before a suppressed finding's status."""


def status_words(status: str) -> str:
    """``false-positive`` -> ``false positive``; a status this version does not know is shown as it is."""
    return STATUS_WORDS.get(status, status)


def decision_label(decision: TriageDecision) -> str:
    """``suppressed: false positive — <note>`` for a decision that takes the finding out of the gate,
    ``confirmed — <note>`` for one that makes it always fail."""
    words = status_words(decision.status)
    head = f"{SUPPRESSED}: {words}" if decision.suppresses else words
    return f"{head} — {decision.note}"


def decision_origin(decision: TriageDecision) -> str:
    """Who decided and when: ``decided by alice at 2026-12-07T12:08:22Z, decision 3``."""
    text = f"decided by {decision.decided_by} at {decision.decided_at}"
    return text + (f", decision {decision.decision_id}" if decision.decision_id is not None else "")


def decision_text(decision: TriageDecision) -> str:
    """The label and its origin on one line, for formats with one text field (JUnit, SARIF messages)."""
    return f"{decision_label(decision)} ({decision_origin(decision)})"


@dataclass(frozen=True)
class FindingCounts:
    """How many findings a report has and what the gate made of them."""

    total: int
    """Every finding of the report."""
    blocking: int
    """Findings that fail the gate on their own (``Gate.blocks``); never a suppressed one."""
    suppressed: int
    """Findings a triage decision took out of the gate (false positive, accepted risk)."""
    confirmed: int
    """Findings a triage decision confirmed: they always block."""

    def describe(self) -> str:
        """``5 findings, 2 blocking, 1 suppressed, 1 confirmed`` (the last two only when not zero)."""
        parts = [f"{self.total} finding{'' if self.total == 1 else 's'}", f"{self.blocking} blocking"]
        if self.suppressed:
            parts.append(f"{self.suppressed} {SUPPRESSED}")
        if self.confirmed:
            parts.append(f"{self.confirmed} confirmed")
        return ", ".join(parts)


def finding_counts(report: Report) -> FindingCounts:
    """Counts for a report's header, read from the gate and the decisions the findings carry."""
    return FindingCounts(
        total=len(report.findings),
        blocking=sum(1 for f in report.findings if report.gate.blocks(f)),
        suppressed=sum(1 for f in report.findings if f.suppressed),
        confirmed=sum(1 for f in report.findings if f.decision is not None and not f.decision.suppresses))
