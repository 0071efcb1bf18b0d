"""``modelaudit triage``: review what the scan store holds and record decisions that later scans carry.

``list`` shows every stored scan with its verdict as stored and as decided now; ``show`` renders one stored
report with the decisions about its content applied; ``decide`` records a person's decision (who, when,
why) about its findings. The store defaults to the SQLite file in the user cache folder.
"""

from __future__ import annotations

import getpass
import io
import json
import re
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from modelaudit import store as scan_store
from modelaudit.cli.edge import FORMAT_CHOICE, STDOUT, ModelAuditGroup, emit_text, info
from modelaudit.errors import UsageError
from modelaudit.findings import TRIAGE_STATUSES, Verdict
from modelaudit.store.views import TriageRow, decided_report, triage_rows
from reports.console import print_report

LIST_FORMATS = ("table", "json")
TABLE_WIDTH = 160
"""Width of the listing when standard output is not a terminal (a file or a pipe)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
STORE_HELP = ("The scan store: an SQLAlchemy URL, a SQLite file path, or 'default' [env: "
              f"{scan_store.DEFAULT_STORE_ENV}; default: the SQLite file in the user cache folder].")

TRIAGE_COMMANDS: dict[str, str] = {
    # LEAD: wire the fleet page in at merge, when modelaudit/cli/triage_html.py exists:
    # "html": "modelaudit.cli.triage_html:triage_html",
}
"""Subcommands defined in other modules (name -> ``module:attribute``), imported only when they run."""


def store_option(command: Any) -> Any:
    """``--store URL`` as every triage command has it."""
    return click.option("--store", "store_url", envvar=scan_store.DEFAULT_STORE_ENV, default=None, metavar="URL",
                        help=STORE_HELP)(command)


@click.group(cls=ModelAuditGroup, lazy_commands=TRIAGE_COMMANDS)
def triage() -> None:
    """Review stored scans and record triage decisions.

    A decision covers findings of one model content (its digest): every later scan of the same files carries
    it. false-positive and accepted-risk take the findings out of the gate; confirmed always fails it.
    """


@triage.command(name="list")
@click.option("--verdict", "verdicts", default=None, metavar="VERDICT[,VERDICT...]",
              help="Only scans with one of these verdicts, as stored or as decided now "
                   f"({', '.join(v.value for v in Verdict)}).")
@click.option("--format", "fmt", type=click.Choice(LIST_FORMATS), default="table", show_default=True,
              help="table for people, json for tools.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the listing here (atomically); '-' is standard output.")
@store_option
def list_scans(verdicts: str | None, fmt: str, output: str | None, store_url: str | None) -> None:
    """List stored scans, latest first: verdict as stored and as decided now, strongest evidence, decisions."""
    wanted = _parse_verdicts(verdicts)
    with scan_store.open_store(store_url) as store:
        rows = triage_rows(store, wanted)
    if fmt == "json":
        text = json.dumps([_row_dict(r) for r in rows], indent=2, ensure_ascii=False) + "\n"
        emit_text(text, output, f"{len(rows)} stored scans listed in {output}")
        return
    if output and output != STDOUT:
        emit_text(_table_text(rows), output, f"{len(rows)} stored scans listed in {output}")
        return
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    console.print(_table(rows))
    info(f"{len(rows)} stored scan(s) in {store.url}; `modelaudit triage show ID` shows one")


def _parse_verdicts(text: str | None) -> set[str] | None:
    """``--verdict backdoored,incomplete`` as a set of verdict names.

    Raises:
        UsageError: a name that is not a verdict.
    """
    if text is None:
        return None
    names = {v.strip() for v in text.split(",") if v.strip()}
    known = [v.value for v in Verdict]
    unknown = sorted(names - set(known))
    if unknown or not names:
        raise UsageError(f"unknown verdict {', '.join(unknown) or repr(text)} (use: {', '.join(known)})")
    return names


def _row_dict(row: TriageRow) -> dict[str, Any]:
    scan = row.scan
    return {"id": scan.id, "target": scan.target, "revision": scan.revision, "digest": scan.key.digest,
            "tool_version": scan.key.tool_version, "stored_at": scan.stored_at, "verdict": scan.verdict,
            "exit_code": scan.exit_code, "verdict_now": row.verdict_now, "exit_code_now": row.exit_code_now,
            "strongest": row.strongest_now, "decisions": row.decisions}


def _cell(value: object) -> Text:
    """Stored text (targets, finding messages) as a literal: no markup, control characters made visible."""
    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", "" if value is None else str(value)))


def _table(rows: list[TriageRow]) -> Table:
    table = Table(title=f"stored scans ({len(rows)})")
    for name in ("id", "target", "verdict", "strongest evidence", "decisions", "stored at"):
        table.add_column(name, overflow="fold")
    for row in rows:
        verdict = row.scan.verdict if row.verdict_now == row.scan.verdict else f"{row.scan.verdict} -> {row.verdict_now}"
        target = row.scan.target + (f" @ {row.scan.revision[:12]}" if row.scan.revision else "")
        table.add_row(str(row.scan.id), _cell(target), _cell(verdict), _cell(row.strongest_now or "-"),
                      _cell(row.decision_summary() or "-"), row.scan.stored_at)
    return table


def _table_text(rows: list[TriageRow]) -> str:
    """The listing as plain text (for ``-o FILE``)."""
    buf = io.StringIO()
    Console(file=buf, width=TABLE_WIDTH, color_system=None, force_terminal=False).print(_table(rows))
    return buf.getvalue()


@triage.command(name="show")
@click.argument("scan_id", type=int, metavar="ID")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="console", show_default=True,
              help="Report format (every registered writer).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the report here (atomically); '-' is standard output.")
@store_option
def show(scan_id: int, fmt: str, output: str | None, store_url: str | None) -> None:
    """Show stored scan ID's report, with the decisions about its content applied (verdict and gate as they
    stand now)."""
    with scan_store.open_store(store_url) as store:
        report = decided_report(store, store.get(scan_id))
    if fmt == "console" and (not output or output == STDOUT):
        print_report(report, Console(width=None if sys.stdout.isatty() else 120))
    else:
        emit_text(report.render(fmt), output, f"stored scan {scan_id} ({report.verdict.value}) written to {output}")


@triage.command(name="decide")
@click.argument("scan_id", type=int, metavar="ID")
@click.option("--status", type=click.Choice(TRIAGE_STATUSES), required=True,
              help="confirmed: the findings always fail the gate; false-positive or accepted-risk: they no longer do.")
@click.option("--note", required=True, help="Why (shown in every report it applies to, e.g. as the SARIF "
                                              "suppression's justification).")
@click.option("--rule", "rules", multiple=True, metavar="RULE_ID",
              help="Cover only findings of this rule id or dotted prefix (repeatable) [default: every finding of "
                   "the scan].")
@click.option("--by", "decided_by", default=None, help="Who decides [default: the user name of this process].")
@store_option
def decide(scan_id: int, status: str, note: str, rules: tuple[str, ...], decided_by: str | None,
           store_url: str | None) -> None:
    """Record a decision about stored scan ID's findings; every scan of the same content carries it."""
    with scan_store.open_store(store_url) as store:
        stored = store.get(scan_id)
        identities = None
        if rules:
            assert stored.report is not None  # get() reads the report
            covered = [f for f in stored.report.findings
                       if any(f.rule_id == r or f.rule_id.startswith(r + ".") for r in rules)]
            if not covered:
                raise UsageError(f"stored scan {scan_id} has no finding of rule {', '.join(rules)} (see `modelaudit "
                                 f"triage show {scan_id}`)")
            identities = [f.identity for f in covered]
        decision = store.decide(scan_id, status, note, decided_by or _user_name(), identities)
    click.echo(f"decision {decision.id}: {decision.status} on {len(decision.identities)} finding(s) of stored scan "
               f"{scan_id} by {decision.decided_by} at {decision.decided_at}; scans of {decision.digest} carry it")


def _user_name() -> str:
    """The OS user name; a usage error where there is none (a container without a passwd entry)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise UsageError("cannot tell who you are (no user name): give --by NAME") from None
