"""Turn a report into a verdict and an exit code a CI gate can act on; fail closed."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from modelaudit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from modelaudit.findings import DONE_STATUSES, Finding, Gate, Report, Severity, Verdict
from modelaudit.registry import Evidence, stages_with_evidence

EXIT_PASS = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3



@dataclass
class Policy:
    """What the user tolerates: the fail-on level, rules to ignore, stages that must run."""

    fail_on: Severity = Severity.HIGH
    """Exit 1 when any (non-suppressed) finding is at or above this severity."""
    allow_rules: set[str] = field(default_factory=set)
    """Rule ids (or dotted prefixes) whose findings are dropped."""
    required_stages: set[str] | None = None
    """Stages that must run fully, else the verdict is ``incomplete``; ``None``: every stage the scan was
    asked to run (fail closed: a requested stage that failed never turns into a pass)."""

    @classmethod
    def from_toml(cls, path: str | Path) -> Policy:
        """Read a ``modelaudit.toml`` policy file (``[policy]`` table).

        Raises:
            UsageError: unreadable file or unknown keys/values.
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{path}: cannot read policy file: {exc}") from None
        table = data.get("policy", {})
        unknown = set(table) - {"fail_on", "allow_rules", "required_stages"}
        if unknown:
            raise UsageError(f"{path}: unknown policy keys: {', '.join(sorted(unknown))}")
        policy = cls()
        if "fail_on" in table:
            policy.fail_on = parse_severity(str(table["fail_on"]))
        policy.allow_rules = set(table.get("allow_rules", []))
        if "required_stages" in table:
            policy.required_stages = set(table["required_stages"])
        return policy

    def required(self, selected: Iterable[str]) -> set[str]:
        """The stages that must finish, given the stages a scan was asked to run."""
        return set(selected) if self.required_stages is None else set(self.required_stages)

    def allows(self, finding: Finding) -> bool:
        return any(finding.rule_id == r or finding.rule_id.startswith(r + ".") for r in self.allow_rules)


def parse_severity(text: str) -> Severity:
    try:
        return Severity(text.lower())
    except ValueError:
        raise UsageError(f"unknown severity {text!r} (use one of: "
                         f"{', '.join(s.value for s in Severity)})") from None


def apply_policy(report: Report, policy: Policy) -> Report:
    """Drop allow-listed findings and set the verdict; mutates and returns ``report``."""
    report.findings = [f for f in report.findings if not policy.allows(f)]
    report.verdict = decide_verdict(report, policy)
    report.gate = Gate(fail_on=policy.fail_on, required_stages=sorted(policy.required(report.coverage)),
                       exit_code=exit_code(report, policy))
    return report


def decide_verdict(report: Report, policy: Policy) -> Verdict:
    """Combine findings by stage; an unfinished required stage wins over everything but unsafe files.
    Findings a triage decision suppressed do not count.

    Unsafe files outrank incompleteness because a pickle that executes code is a definite answer
    even when a later stage could not run. Each stage declares (in the registry) whether its findings
    are about the files or about the model's behaviour.
    """
    def worst(stages: set[str]) -> Severity | None:
        sev = [f.severity for f in report.findings if f.stage in stages and not f.suppressed]
        return max(sev, key=lambda s: s.rank, default=None)

    file_sev = worst(stages_with_evidence(Evidence.FILES))
    if file_sev is not None and file_sev >= Severity.HIGH:
        return Verdict.UNSAFE_FILES
    for stage in policy.required(report.coverage):
        cov = report.coverage.get(stage)
        if cov is None or cov.status not in DONE_STATUSES:
            return Verdict.INCOMPLETE
    behaviour_sev = worst(stages_with_evidence(Evidence.BEHAVIOUR))
    if behaviour_sev is not None and behaviour_sev >= Severity.HIGH:
        return Verdict.BACKDOORED
    if behaviour_sev is not None and behaviour_sev >= Severity.MEDIUM:
        return Verdict.SUSPICIOUS
    if file_sev is not None and file_sev >= Severity.MEDIUM:
        return Verdict.SUSPICIOUS
    if any(f.decision is not None and not f.suppressed for f in report.findings):
        return Verdict.SUSPICIOUS  # a person confirmed a finding: never "pass", whatever its severity
    return Verdict.PASS


def exit_code(report: Report, policy: Policy) -> int:
    """0 pass, 1 findings at or above fail-on, 3 incomplete (fail closed).

    A finding a triage decision suppressed (false positive, accepted risk) counts for neither; one it
    confirmed fails the gate whatever its severity."""
    active = [f for f in report.findings if not f.suppressed]
    if any(f.severity >= policy.fail_on or f.decision is not None for f in active):
        return EXIT_FINDINGS
    if report.verdict is Verdict.INCOMPLETE:
        return EXIT_INCOMPLETE
    if report.verdict in (Verdict.UNSAFE_FILES, Verdict.BACKDOORED):
        return EXIT_FINDINGS
    return EXIT_PASS
