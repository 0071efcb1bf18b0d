"""Every report format agrees with the verdict and with the exit code (issue 17, item 3).

A JUnit suite that lists failures next to ``verdict=pass``, or a green one next to exit 3, misleads the
CI system that reads it. Reports are built by the real policy (``apply_policy``) from random findings,
coverage and policies; each writer's outcome is compared with ``exit_code``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from hypothesis import given, settings
from hypothesis import strategies as st

from modelaudit.findings import Finding, Report, Severity, StageCoverage, TargetInfo, Verdict
from modelaudit.policy import Policy, apply_policy, exit_code
from reports.html import render_html
from reports.junit import render_junit
from reports.markdown import render_markdown
from reports.sarif import render_sarif

STAGES = ("static", "weights", "triggers", "probes")
RULES = {"static": "static.pickle.dangerous-call", "weights": "weights.tampered-rows",
         "triggers": "triggers.backdoor-trigger", "probes": "probes.deception-direction"}
STATUSES = ("ran", "partial", "failed", "skipped", "not-applicable")

findings_st = st.lists(st.tuples(st.sampled_from(STAGES), st.sampled_from(list(Severity))), max_size=4)
coverage_st = st.dictionaries(st.sampled_from(STAGES), st.sampled_from(STATUSES), min_size=1)
policy_st = st.builds(
    Policy, fail_on=st.sampled_from([Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]),
    allow_rules=st.sets(st.sampled_from(["static", "triggers.backdoor-trigger"]), max_size=1),
    required_stages=st.one_of(st.none(), st.sets(st.sampled_from(STAGES), max_size=2)))


def _report(findings: list[tuple[str, Severity]], coverage: dict[str, str], policy: Policy) -> Report:
    """A report as ``api.scan`` leaves it: coverage marked required by the policy, then the verdict."""
    required = policy.required(coverage)
    report = Report(target=TargetInfo(spec="acme/model", kind="folder", local_path="/m"), tool_version="0.1.0",
                    findings=[Finding(RULES[stage], sev, f"{stage} says {sev.value}") for stage, sev in findings],
                    coverage={s: StageCoverage(status, required=s in required, notes=[f"{s} {status}"])
                              for s, status in coverage.items()})
    return apply_policy(report, policy)


@settings(max_examples=150, deadline=None)
@given(findings_st, coverage_st, policy_st)
def test_junit_sarif_markdown_and_json_agree_with_the_exit_code(findings: list[tuple[str, Severity]],
                                                                coverage: dict[str, str], policy: Policy) -> None:
    report = _report(findings, coverage, policy)
    code = exit_code(report, policy)
    assert report.gate.exit_code == code

    suite = ET.fromstring(render_junit(report, rules={}).encode("utf-8")).find("testsuite")
    assert (int(suite.get("failures")) > 0) == (code != 0), render_junit(report, rules={})
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["verdict"] == report.verdict.value and props["exit_code"] == str(code)

    run = json.loads(render_sarif(report, rules={}))["runs"][0]
    assert run["properties"]["verdict"] == report.verdict.value and run["properties"]["exitCode"] == code
    if report.verdict is Verdict.INCOMPLETE:
        assert not run["invocations"][0]["executionSuccessful"]
        assert run["invocations"][0]["toolExecutionNotifications"], "an incomplete scan must say which stage"

    md = render_markdown(report, rules={})
    assert f"**{report.verdict.value}**" in md.splitlines()[0]
    assert ("Gate fails" in md) == (code != 0) and ("Gate passes" in md) == (code == 0)

    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.gate == report.gate


def test_a_failed_stage_the_policy_does_not_require_is_not_a_junit_failure() -> None:
    """The defect as found: the triggers stage failed, the verdict passed, JUnit listed a failure."""
    report = _report([], {"static": "ran", "triggers": "failed"}, Policy(required_stages={"static"}))
    assert report.verdict is Verdict.PASS and report.gate.exit_code == 0
    xml = render_junit(report, rules={})
    assert 'failures="0"' in xml and "not required by the policy" in xml
    assert "gate passes: exit 0" in render_html(report, rules={})


def test_a_required_stage_that_failed_fails_every_format() -> None:
    report = _report([], {"static": "ran", "triggers": "failed"}, Policy())
    assert report.verdict is Verdict.INCOMPLETE and report.gate.exit_code == 3
    assert 'failures="1"' in render_junit(report, rules={})
    assert "required stage triggers failed" in render_sarif(report, rules={})
    assert "Gate fails: exit 3, a required stage did not finish" in render_markdown(report, rules={})
    assert "gate fails: exit 3" in render_html(report, rules={})
