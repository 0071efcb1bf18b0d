"""Markdown short enough for a pull-request comment: verdict, counts, top findings, top triggers, gaps.

Model text lands inside table cells and inline code, so it is flattened to one line, its pipes
and backticks are escaped, and HTML-significant characters are entity-encoded (GitHub renders
inline HTML in comments). Code spans are avoided for model text: a backtick inside one cannot be
escaped, so triggers are shown as escaped plain text in bold.
"""

from __future__ import annotations

import re
from collections import Counter

from modelaudit.findings import Finding, Report
from modelaudit.registry import writers
from reports.html import significant_triggers
from reports.order import SEVERITIES_WORST_FIRST, ordered_findings
from reports.triage import decision_label, decision_origin, finding_counts

MAX_FINDINGS = 10
"""Rows of the findings table."""
MAX_TRIGGERS = 3
"""Significant triggers shown with one example each."""
MAX_CELL = 160
"""Characters of model text per cell; a PR comment is not the place for whole completions."""

_VERDICT_ICON = {"pass": "✅", "suspicious": "⚠️", "backdoored": "⛔", "unsafe-files": "⛔", "incomplete": "❔"}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_WS = re.compile(r"\s+")


def md_escape(value: object, *, limit: int = MAX_CELL) -> str:
    """One line of literal text for a table cell: markdown, pipes, backticks and HTML neutralised."""
    text = _WS.sub(" ", str(value)).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("@", "&#64;")  # no @mentions from model text


def _provenance(report: Report) -> str:
    """The resolved revision (the sha the verdict is about) and how the scan ran, on one line."""
    parts = []
    if report.target.resolved_revision:
        parts.append(f"revision {md_escape(report.target.resolved_revision)}")
    if report.scan is not None:
        parts.append(md_escape(report.scan.describe(), limit=MAX_CELL * 2))
    return "<sub>" + " · ".join(parts) + "</sub>" if parts else ""


def _severity(finding: Finding) -> str:
    """The severity, struck through when a decision suppressed the finding (it no longer counts)."""
    return f"~~{finding.severity.value}~~" if finding.suppressed else finding.severity.value


def _triage(finding: Finding) -> str:
    """The decision in bold (``suppressed: false positive — note``) and who made it when, or nothing."""
    if finding.decision is None:
        return ""
    return (f"**{md_escape(decision_label(finding.decision))}**<br>"
            f"<sub>{md_escape(decision_origin(finding.decision))}</sub>")


@writers.register("markdown", description="Short Markdown summary for pull-request comments", extension=".md")
def render_markdown(report: Report, *, rules: dict[str, str]) -> str:
    """Verdict line, counts by severity, top findings, top triggers with one example, coverage gaps."""
    del rules
    lines: list[str] = []
    verdict = report.verdict.value
    lines.append(f"### {_VERDICT_ICON.get(verdict, '')} modelaudit: **{verdict}** — {md_escape(report.target.spec)}")
    lines.append("")
    lines.append(f"**{md_escape(report.gate.describe().capitalize())}**")
    lines.append("")
    provenance = _provenance(report)
    if provenance:
        lines += [provenance, ""]
    counts = Counter(f.severity for f in report.findings)
    lines.append("Findings: " + " · ".join(f"{s.value} {counts.get(s, 0)}" for s in SEVERITIES_WORST_FIRST)
                 + f" — {finding_counts(report).describe()}")

    findings = ordered_findings(report.findings)
    triaged = any(f.decision is not None for f in findings)
    if findings:
        # The triage column only when someone decided: a PR comment without triage stays as narrow as before.
        lines += ["", "| severity | rule | message | conf. |" + (" triage |" if triaged else ""),
                  "|---|---|---|---|" + ("---|" if triaged else "")]
        for f in findings[:MAX_FINDINGS]:
            row = (f"| {_severity(f)} | {md_escape(f.rule_id)} | {md_escape(f.message)} | {f.confidence:.2f} |")
            if triaged:
                row += f" {_triage(f)} |"
            lines.append(row)
        if len(findings) > MAX_FINDINGS:
            lines.append(f"\n_…and {len(findings) - MAX_FINDINGS} more (see the HTML or JSON report)._")

    triggers = significant_triggers(report)[:MAX_TRIGGERS]
    if triggers:
        lines += ["", "**Significant triggers**", "", "| trigger | place | behaviour | untriggered | triggered |",
                  "|---|---|---|---|---|"]
        for t in triggers:
            ex = next((e for e in t.get("examples") or [] if isinstance(e, dict)), {})
            rate = t.get("fired_fraction")
            behaviour = md_escape(t.get("behaviour", ""))
            if isinstance(rate, (int, float)):
                behaviour += f" ({rate:.0%})"
            lines.append(f"| **{md_escape(t.get('trigger', ''), limit=60)}** | {md_escape(t.get('placement', ''))} | "
                         f"{behaviour} | {md_escape(ex.get('untriggered', ''), limit=80)} | "
                         f"{md_escape(ex.get('triggered', ''), limit=80)} |")

    gaps = [(stage, cov) for stage, cov in report.coverage.items() if cov.status != "ran" or cov.checks_failed]
    if gaps or not report.coverage:
        lines += ["", "**Not checked**", ""]
        if not report.coverage:
            lines.append("- no coverage recorded")
        for stage, cov in gaps:
            why = "; ".join(cov.notes) or ", ".join(cov.checks_failed) or "no reason recorded"
            req = " (required)" if cov.required else ""
            lines.append(f"- {md_escape(stage)}: {md_escape(cov.status)}{req} — {md_escape(why, limit=200)}")
    if report.errors:
        lines.append(f"- {len(report.errors)} check(s) raised errors (see the full report)")

    lines += ["", f"<sub>{md_escape(report.tool)} {md_escape(report.tool_version)} · report schema "
                  f"{md_escape(report.schema_version)}</sub>", ""]
    return "\n".join(lines)
