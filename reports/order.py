"""The one order every writer lists findings and severities in, so that formats agree with each other."""

from __future__ import annotations

from collections.abc import Iterable

from modelaudit.findings import Finding, Severity

SEVERITIES_WORST_FIRST: tuple[Severity, ...] = tuple(sorted(Severity, key=lambda s: -s.rank))
"""Critical to info: the order severity counts are shown in, so the worst count is read first."""


def ordered_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, so a truncated list still shows what blocks the model; ties by rule id, then location.

    The tie-breakers make the order independent of the order stages and checks ran in, so two scans of
    one model list their findings alike; findings equal on all three keep report order (``sorted`` is stable).
    """
    return sorted(findings, key=lambda f: (-f.severity.rank, f.rule_id, str(f.location)))
