"""``modelaudit rules [RULE_ID]``: the rule catalogue (every rule id, or what one means and how to act on it)."""

from __future__ import annotations

import json

import click

from modelaudit.cli.edge import ModelAuditCommand
from modelaudit.rulebook import RuleInfo, catalogue, lookup

RULE_FORMATS = ("console", "json")


@click.command(name="rules", cls=ModelAuditCommand)
@click.argument("rule_id", required=False)
@click.option("--format", "fmt", type=click.Choice(RULE_FORMATS), default="console", show_default=True,
              help="console for people, json for tools.")
def rules(rule_id: str | None, fmt: str) -> None:
    """List every rule a scan can report, or explain RULE_ID: what it means, why it matters, how to fix or
    suppress it (policy ``allow_rules``).

    The list is taken from the installed checks and stages, so a plugin's rules appear too.
    """
    if rule_id is not None:
        info = lookup(rule_id)
        click.echo(json.dumps(info.to_dict(), indent=2) if fmt == "json" else f"{info.id}\n\n{info.help_text()}")
        return
    listed = list(catalogue().values())
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in listed], indent=2))
        return
    click.echo(_table(listed))


def _table(listed: list[RuleInfo]) -> str:
    """One line per rule: id, severity (or severities), stage, summary."""
    id_width = max((len(r.id) for r in listed), default=0)
    sev_width = max((len(r.severity_text) for r in listed), default=0)
    stage_width = max((len(r.stage) for r in listed), default=0)
    header = f"{'RULE':<{id_width}}  {'SEVERITY':<{sev_width}}  {'STAGE':<{stage_width}}  SUMMARY"
    lines = [f"{r.id:<{id_width}}  {r.severity_text:<{sev_width}}  {r.stage:<{stage_width}}  {r.summary}"
             for r in listed]
    return "\n".join([header, *lines, "", f"{len(listed)} rules; `modelaudit rules RULE_ID` explains one."])
