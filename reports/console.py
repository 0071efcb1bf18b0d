"""Terminal rendering with rich: verdict first, then the findings a triage analyst acts on."""

from __future__ import annotations

import io
from collections import Counter

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from modelaudit.findings import Report, Severity, Verdict
from modelaudit.registry import writers

MAX_ROWS = 50
_VERDICT_STYLE = {Verdict.PASS: "bold green", Verdict.SUSPICIOUS: "bold yellow", Verdict.BACKDOORED: "bold red",
                  Verdict.UNSAFE_FILES: "bold red", Verdict.INCOMPLETE: "bold magenta"}
_SEVERITY_STYLE = {Severity.CRITICAL: "bold red", Severity.HIGH: "red", Severity.MEDIUM: "yellow",
                   Severity.LOW: "cyan", Severity.INFO: "dim"}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _summary(report: Report) -> Panel:
    t = report.target
    counts = Counter(f.severity for f in report.findings)
    lines = Text()
    lines.append("verdict  ")
    lines.append(report.verdict.value, style=_VERDICT_STYLE[report.verdict])
    lines.append(f"\ntarget   {t.spec} ({t.kind})")
    if t.resolved_revision:
        lines.append(f"\nrevision {t.requested_revision} -> {t.resolved_revision}")
    lines.append(f"\nfiles    {len(t.files)} ({_size(sum(f.size for f in t.files))})")
    lines.append("\nfindings ")
    for sev in reversed(list(Severity)):
        lines.append(f"{sev.value} {counts.get(sev, 0)}  ", style=_SEVERITY_STYLE[sev] if counts.get(sev) else "")
    lines.append(f"\ntool     modelaudit {report.tool_version} (schema {report.schema_version})")
    return Panel(lines, title="modelaudit report", expand=False)


def _findings(report: Report) -> Table | Text:
    if not report.findings:
        return Text("No findings.", style="green")
    ordered = sorted(report.findings, key=lambda f: (-f.severity.rank, f.rule_id, str(f.location)))
    table = Table(title="findings", show_lines=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("location", overflow="fold", max_width=40)
    table.add_column("message", overflow="fold", ratio=1)
    table.add_column("conf.", no_wrap=True)
    for f in ordered[:MAX_ROWS]:
        table.add_row(Text(f.severity.value, style=_SEVERITY_STYLE[f.severity]), f.rule_id, str(f.location),
                      f.message, f"{f.confidence:.2f}")
    if len(ordered) > MAX_ROWS:
        table.caption = f"... {len(ordered) - MAX_ROWS} more (use --format json)"
    return table


def _coverage(report: Report) -> Table:
    table = Table(title="coverage")
    for col in ("stage", "status", "checks", "notes", "seconds"):
        table.add_column(col, overflow="fold")
    for stage, cov in report.coverage.items():
        checks = f"{len(cov.checks_run)} ran" + (f", {len(cov.checks_failed)} failed" if cov.checks_failed else "")
        style = "green" if cov.status == "ran" else ("red" if cov.status == "failed" else "yellow")
        seconds = report.timings.get(stage)
        table.add_row(stage, Text(cov.status, style=style), checks, "; ".join(cov.notes),
                      f"{seconds:.2f}" if seconds is not None else "")
    return table


def build_renderable(report: Report) -> Group:
    parts: list[object] = [_summary(report), _findings(report)]
    if report.errors:
        errors = Table(title="errors (checks that could not finish)")
        for col in ("stage", "check", "path", "message"):
            errors.add_column(col, overflow="fold")
        for e in report.errors:
            errors.add_row(e.stage, e.check, e.path or "", e.message)
        parts.append(errors)
    parts.append(_coverage(report))
    if "total" in report.timings:
        parts.append(Text(f"scanned in {report.timings['total']:.2f} s", style="dim"))
    return Group(*parts)


def print_report(report: Report, console: Console) -> None:
    console.print(build_renderable(report))


@writers.register("console", description="Human-readable terminal report", extension=".txt")
def render_console(report: Report) -> str:
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=120, force_terminal=False, color_system=None))
    return buf.getvalue()
