"""JUnit XML so CI systems (GitLab, Jenkins, Azure, GitHub test reporters) list what blocked a model.

One ``testsuite`` named ``modelaudit``: a test case per stage in the coverage (a failure when a stage the
policy requires did not finish, skipped otherwise) and a failing test case per finding that fails the gate
(``Report.gate``), so the suite fails exactly when ``modelaudit scan`` exits non-zero. A finding a triage
decision suppressed is a skipped case whose message gives the decision; a confirmed one always fails.
ElementTree does the escaping; control characters that XML 1.0 cannot carry at all are replaced by ``\\xNN``
first.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter

from modelaudit.findings import DONE_STATUSES, Finding, Report, ScanInfo
from modelaudit.registry import writers
from reports.html import reproduce_command
from reports.order import ordered_findings
from reports.triage import decision_text, finding_counts

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(value: object) -> str:
    """Text XML 1.0 can hold: characters it forbids shown as ``\\xNN``."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def test_name(finding: Finding) -> str:
    """A name that stays the same on every run of the same model, so CI history lines up: the rule, the file
    and the finding's stable key (or, without one, where in the file), never the message, whose p-values,
    rates and effects change from run to run."""
    loc = finding.location
    where = loc.path or ""
    if finding.key:
        return f"{finding.rule_id}" + (f" @ {where}" if where else "") + f": {finding.key}"
    return finding.rule_id + (f" @ {loc}" if str(loc) else "")


def _unique(name: str, seen: Counter[str]) -> str:
    """The second finding with one name gets `` #2``; findings are in the one stable order (reports/order.py)."""
    seen[name] += 1
    return name if seen[name] == 1 else f"{name} #{seen[name]}"


def _provenance(suite: ET.Element, props: ET.Element, scan: ScanInfo) -> None:
    """Start time as the suite's ``timestamp`` (the JUnit schema's form: no zone; it is UTC) and the settings
    as properties."""
    suite.set("timestamp", scan.started_at.removesuffix("Z"))
    for name, value in (("started_at", scan.started_at), ("stages", ",".join(scan.stages)), ("budget", scan.budget),
                        ("seed", str(scan.seed)), ("device", scan.device), ("device_used", scan.device_used or ""),
                        ("stored_scan", "" if scan.stored_scan is None else str(scan.stored_scan)),
                        ("stored_at", scan.stored_at or ""),
                        ("peak_memory_bytes", "" if scan.peak_memory_bytes is None else str(scan.peak_memory_bytes)),
                        ("scan", scan.describe())):
        ET.SubElement(props, "property", name=name, value=_x(value))


@writers.register("junit", description="JUnit XML: a test case per stage and per finding that fails the gate",
                  extension=".xml")
def render_junit(report: Report, *, rules: dict[str, str]) -> str:
    """A ``testsuites`` document with one ``modelaudit`` suite."""
    suite = ET.Element("testsuite", name="modelaudit")
    props = ET.SubElement(suite, "properties")
    for name, value in (("verdict", report.verdict.value), ("target", report.target.spec),
                        ("revision", report.target.resolved_revision or ""),
                        ("tool_version", report.tool_version), ("fail_on", report.gate.fail_on.value),
                        ("exit_code", "" if report.gate.exit_code is None else str(report.gate.exit_code)),
                        ("gate", report.gate.describe()), ("findings", finding_counts(report).describe())):
        ET.SubElement(props, "property", name=name, value=_x(value))
    if report.scan is not None:
        _provenance(suite, props, report.scan)
    counts: Counter[str] = Counter()
    required = set(report.gate.required_stages)
    for stage in [*report.coverage, *sorted(required - set(report.coverage))]:
        cov = report.coverage.get(stage)
        case = ET.SubElement(suite, "testcase", classname="modelaudit.coverage", name=_x(stage),
                             time=f"{float(report.timings.get(stage, 0.0)):.3f}")
        counts["tests"] += 1
        if cov is None:  # required but never recorded: the verdict is incomplete
            ET.SubElement(case, "failure", type="stage-missing", message=_x(f"required stage {stage} did not run"))
            counts["failures"] += 1
            continue
        detail = "; ".join([*cov.notes, *(f"check failed: {c}" for c in cov.checks_failed)])
        errors = [e for e in report.errors if e.stage == stage]
        if cov.status not in DONE_STATUSES and (cov.required or stage in required):
            el = ET.SubElement(case, "failure", type=f"stage-{_x(cov.status)}",
                               message=_x(f"stage {stage} {cov.status} (required)"))
            el.text = _x("\n".join([detail, *(f"{e.check}: {e.message}" for e in errors)]).strip())
            counts["failures"] += 1
        elif cov.status not in ("ran",):
            why = "" if cov.status in DONE_STATUSES else " (not required by the policy)"
            ET.SubElement(case, "skipped", message=_x((detail or f"stage {stage} {cov.status}") + why))
            counts["skipped"] += 1
        elif detail:
            ET.SubElement(case, "system-out").text = _x(detail)
    seen: Counter[str] = Counter()
    for f in ordered_findings(report.findings):
        blocks = report.gate.blocks(f)
        if not blocks and not f.suppressed:
            continue
        name = _unique(test_name(f), seen)
        case = ET.SubElement(suite, "testcase", classname=_x(f"modelaudit.findings.{f.stage}"), name=_x(name))
        counts["tests"] += 1
        if f.suppressed and f.decision is not None:
            # Kept as a skipped case under its usual name: CI history shows the finding went quiet, and why.
            ET.SubElement(case, "skipped", message=_x(decision_text(f.decision)))
            counts["skipped"] += 1
            continue
        el = ET.SubElement(case, "failure", type=_x(f.severity.value), message=_x(f.message))
        body = [f.message, f"rule: {f.rule_id}" + (f" ({rules[f.rule_id]})" if f.rule_id in rules else ""),
                f"severity: {f.severity.value}, confidence: {f.confidence:.2f}",
                *([f"triage: {decision_text(f.decision)}"] if f.decision is not None else []),
                f"reproduce: {reproduce_command(f, report)}"]
        el.text = _x("\n".join(body))
        counts["failures"] += 1
    suite.set("tests", str(counts["tests"]))
    suite.set("failures", str(counts["failures"]))
    suite.set("errors", "0")
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{float(report.timings.get('total', 0.0)):.3f}")
    root = ET.Element("testsuites", name="modelaudit", tests=suite.get("tests", "0"),
                      failures=suite.get("failures", "0"), errors="0", skipped=suite.get("skipped", "0"))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
