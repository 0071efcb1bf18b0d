"""Terminal rendering with rich: verdict first, then the findings a triage analyst acts on.

Every string that can come from a model (file names, tensor names, messages, notes) goes into a
``rich.text.Text`` after control characters are made visible: a plain ``str`` in a rich table is
parsed as markup, so a tensor named ``[/bold]`` would crash the report and ``[red]`` would vanish,
and an ESC byte would reach the analyst's terminal.
"""

from __future__ import annotations

import io
import re
from collections import Counter

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from modelaudit.findings import NOT_APPLICABLE, Report, Severity, Verdict
from modelaudit.registry import writers
from reports.order import SEVERITIES_WORST_FIRST, ordered_findings
from reports.triage import decision_label, decision_origin, finding_counts

MAX_ROWS = 50
"""Findings shown on a live terminal; the string rendering (written to files) shows all of them."""
WIDTH = 120
"""Width of the string rendering, wide enough for dotted rule ids and sha256s."""

_VERDICT_STYLE = {Verdict.PASS: "bold green", Verdict.SUSPICIOUS: "bold yellow", Verdict.BACKDOORED: "bold red",
                  Verdict.UNSAFE_FILES: "bold red", Verdict.INCOMPLETE: "bold magenta"}
_SEVERITY_STYLE = {Severity.CRITICAL: "bold red", Severity.HIGH: "red", Severity.MEDIUM: "yellow",
                   Severity.LOW: "cyan", Severity.INFO: "dim"}
_STATUS_STYLE = {"ran": "green", "partial": "yellow", "skipped": "dim", NOT_APPLICABLE: "dim", "failed": "red"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(value: object, style: str = "") -> Text:
    """Untrusted text as a literal: no markup, no emoji codes, control characters shown as ``\\xNN``."""
    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value)), style=style)


def _size(n: int) -> str:
    """Human size: bytes exactly, larger sizes to one decimal."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def _summary(report: Report) -> Panel:
    t = report.target
    counts = Counter(f.severity for f in report.findings)
    lines = Text()
    lines.append("verdict   ")
    lines.append(report.verdict.value, style=_VERDICT_STYLE.get(report.verdict, "bold"))
    lines.append(f"  ({report.gate.describe()})")
    lines.append("\ntarget    ")
    lines.append_text(_safe(f"{t.spec} ({t.kind})"))
    if t.resolved_revision or t.requested_revision:
        lines.append("\nrevision  ")
        lines.append_text(_safe(t.resolved_revision or "unresolved"))
        if t.requested_revision and t.requested_revision != t.resolved_revision:
            lines.append_text(_safe(f" (requested {t.requested_revision})"))
    if report.scan is not None:
        lines.append("\nscan      ")
        lines.append_text(_safe(report.scan.describe()))
    lines.append(f"\nfiles     {len(t.files)} ({_size(sum(f.size for f in t.files))})")
    lines.append("\nfindings  ")
    for sev in SEVERITIES_WORST_FIRST:
        n = counts.get(sev, 0)
        lines.append(f"{sev.value} {n}", style=_SEVERITY_STYLE[sev] if n else "")
        lines.append("  ")
    lines.append(f"\ngate      {finding_counts(report).describe()}")
    lines.append("\ntool      ")
    lines.append_text(_safe(f"{report.tool} {report.tool_version} (report schema {report.schema_version})"))
    return Panel(lines, title="modelaudit report", expand=False)


def _findings(report: Report, max_rows: int | None) -> RenderableType:
    if not report.findings:
        return Text("No findings.", style="green")
    ordered = ordered_findings(report.findings)
    shown = ordered if max_rows is None else ordered[:max_rows]
    # Rule id and location share a column (location on the second line): side by side, two long
    # columns would squeeze the message into a sliver at 120 characters.
    table = Table(title=f"findings ({len(ordered)})", show_lines=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("rule / location", overflow="fold")
    table.add_column("message", overflow="fold")
    table.add_column("conf.", no_wrap=True, justify="right")
    for f in shown:
        where = _safe(f.rule_id)
        if str(f.location):
            where.append("\n")
            where.append_text(_safe(f.location, style="cyan"))
        severity = Text(f.severity.value, style="dim" if f.suppressed else _SEVERITY_STYLE[f.severity])
        message = _safe(f.message, style="dim" if f.suppressed else "")
        if f.decision is not None:
            # The decision under the message: a suppressed finding must not read as one that blocks.
            severity.append("\nsuppressed" if f.suppressed else "\nconfirmed",
                            style="bold" if f.suppressed else "bold red")
            message.append("\n")
            message.append_text(_safe(decision_label(f.decision), style="bold" if f.suppressed else "bold red"))
            message.append("\n")
            message.append_text(_safe(decision_origin(f.decision), style="dim"))
        table.add_row(severity, where, message, f"{f.confidence:.2f}")
    if len(shown) < len(ordered):
        table.caption = f"... {len(ordered) - len(shown)} more (use --format json or --output)"
    return table


def _errors(report: Report) -> Table:
    table = Table(title="errors (checks that could not finish)")
    for col in ("stage", "check", "path", "message"):
        table.add_column(col, overflow="fold")
    for e in report.errors:
        table.add_row(_safe(e.stage), _safe(e.check), _safe(e.path or ""), _safe(e.message, style="red"))
    return table


def _coverage(report: Report) -> Table | Text:
    if not report.coverage:
        return Text("No coverage recorded.", style="magenta")
    table = Table(title="coverage")
    for col in ("stage", "status", "required", "checks run", "checks failed", "notes"):
        table.add_column(col, overflow="fold")
    for stage, cov in report.coverage.items():
        table.add_row(_safe(stage), _safe(cov.status, style=_STATUS_STYLE.get(cov.status, "")),
                      "yes" if cov.required else "no", str(len(cov.checks_run)),
                      _safe(", ".join(cov.checks_failed) or "-", style="red" if cov.checks_failed else ""),
                      _safe("; ".join(cov.notes)))
    return table


def _timings(report: Report) -> Table:
    table = Table(title="timings")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in report.timings.items():
        if stage != "total":
            table.add_row(_safe(stage), f"{seconds:.2f}")
    if "total" in report.timings:
        table.add_row(Text("total", style="bold"), f"{report.timings['total']:.2f}")
    return table


TRIGGER_ROWS = 5


def _triggers(report: Report) -> Table | None:
    """The strongest trigger candidates with one example pair each (model text shown literally)."""
    rows = report.sections.get("triggers")
    if not isinstance(rows, list) or not rows:
        return None
    table = Table(title="trigger candidates (strongest first)", show_lines=True)
    for col in ("trigger", "place", "effect", "p", "behaviour", "example: untriggered -> triggered"):
        table.add_column(col, overflow="fold")
    for row in rows[:TRIGGER_ROWS]:
        style = "red" if row.get("significant") else "dim"
        ex = (row.get("examples") or [{}])[0]
        pair = _safe(f"{ex.get('untriggered', '')[:60]!r} -> {ex.get('triggered', '')[:60]!r}") if ex else Text("")
        table.add_row(_safe(repr(row.get("trigger", "")), style), _safe(row.get("placement", "")),
                      f"{float(row.get('effect', 0.0)):.1f}x", f"{float(row.get('p_value', 1.0)):.2g}",
                      _safe(row.get("behaviour", "")), pair)
    return table


def build_renderable(report: Report, *, max_rows: int | None = None) -> Group:
    """The whole report as one rich renderable; ``max_rows`` caps the findings table (None: all)."""
    parts: list[RenderableType] = [_summary(report), _findings(report, max_rows)]
    triggers = _triggers(report)
    if triggers is not None:
        parts.append(triggers)
    if report.errors:
        parts.append(_errors(report))
    parts.append(_coverage(report))
    if report.timings:
        parts.append(_timings(report))
    return Group(*parts)


def print_report(report: Report, console: Console, *, max_rows: int | None = MAX_ROWS) -> None:
    """Print to a real terminal; rich colours it when ``console`` is a TTY and keeps it plain otherwise."""
    console.print(build_renderable(report, max_rows=max_rows))


@writers.register("console", description="Human-readable terminal report", extension=".txt")
def render_console(report: Report, *, rules: dict[str, str]) -> str:
    """Plain-text rendering (no colour codes) of every finding, for files and pipes."""
    del rules  # the table shows rule ids; descriptions would crowd it
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=WIDTH, force_terminal=False, color_system=None,
                                 highlight=False, emoji=False), max_rows=None)
    return buf.getvalue()
