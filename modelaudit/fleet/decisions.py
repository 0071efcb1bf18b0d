"""Carry triage decisions onto a report: covered findings are marked, then the report's own policy decides
the verdict and exit code again (a suppressed finding does not fail the gate, a confirmed one always does)."""

from __future__ import annotations

from modelaudit.findings import Report, TriageDecision
from modelaudit.fleet.records import Decision
from modelaudit.policy import Policy, apply_policy


def apply_decisions(report: Report, decisions: list[Decision]) -> Report:
    """Mark every finding a decision covers (the latest decision per finding wins) and re-apply the policy
    the report was made under (its ``gate``: fail-on level and required stages); mutates and returns it."""
    latest: dict[str, Decision] = {}
    for decision in sorted(decisions, key=lambda d: (d.decided_at, d.id)):
        for identity in decision.identities:
            latest[identity] = decision
    for finding in report.findings:
        d = latest.get(finding.identity)
        finding.decision = None if d is None else TriageDecision(
            status=d.status, note=d.note, decided_by=d.decided_by, decided_at=d.decided_at, decision_id=d.id)
    # a report whose policy never ran (no exit code) names no required stages: then every stage it covers is
    # required, so a decision can never turn a scan that did not finish into a pass
    required = set(report.gate.required_stages) if report.gate.exit_code is not None else None
    policy = Policy(fail_on=report.gate.fail_on, required_stages=required)
    return apply_policy(report, policy)
