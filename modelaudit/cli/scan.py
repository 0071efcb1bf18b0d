"""The scanning commands: ``scan``, ``triggers`` and ``report`` (and the options they share)."""

from __future__ import annotations

import json
import re
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from modelaudit import store as scan_store
from modelaudit.api import ScanConfig
from modelaudit.api import scan as run_scan
from modelaudit.chat import PLACEMENTS
from modelaudit.cli.edge import (FORMAT_CHOICE, SEVERITY_CHOICE, STDOUT, ModelAuditCommand, emit_text, info,
                                 settings, worst_exit)
from modelaudit.errors import InvalidModelFileError, ModelAuditError, TimeLimitError, UsageError
from modelaudit.findings import Report
from modelaudit.fleet.cached import scan_with_store
from modelaudit.policy import EXIT_INCOMPLETE, EXIT_USAGE, Policy, exit_code, parse_severity
from modelaudit.registry import stage_names, trigger_generators
from modelaudit.stages import BUDGETS
from reports.console import print_report
from reports.output import render
from reports.sarif import SARIF_ROOT_ENV

F = TypeVar("F", bound=Callable[..., Any])

FORMAT_HELP = "Report format (every registered writer, plugins included)."
OUTPUT_HELP = ("Write the report here (atomically); '-' is standard output. With several targets, one file per "
               "target: the target's name goes before the suffix (-o r.json: r-org--model.json, r-my-model.json).")
FAIL_ON_HELP = "Exit 1 when a finding is at or above this severity [default: high]."
STORE_HELP = ("Keep reports in a scan store and answer from it when the same content was scanned with the same "
              "settings by this version (the report says so); triage decisions about the content apply. An "
              "SQLAlchemy URL (postgresql+psycopg://user@host/db), a SQLite file path, or 'default' (a SQLite file "
              f"in the user cache folder) [env: {scan_store.DEFAULT_STORE_ENV}; without it nothing is stored].")


def hub_options(command: F) -> F:
    """The hub options every command that resolves a model shares: --revision, --cache-dir, --offline."""
    for option in reversed([
        click.option("--revision", help="Hub revision (branch, tag or commit); pinned to a commit sha in the report."),
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Hugging Face cache folder."),
        click.option("--offline/--online", default=None,
                     help="Force hub offline mode (default: follow HF_HUB_OFFLINE)."),
    ]):
        command = option(command)
    return command


def report_options(command: F) -> F:
    """--format, --output and --fail-on, as ``scan`` has them."""
    for option in reversed([
        click.option("--format", "fmt", type=FORMAT_CHOICE, default="console", show_default=True, help=FORMAT_HELP),
        click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), help=OUTPUT_HELP),
        click.option("--fail-on", type=SEVERITY_CHOICE, default=None, help=FAIL_ON_HELP),
        click.option("--sarif-root", type=click.Path(file_okay=False), expose_value=False, callback=_sarif_root,
                     help="Repository root that SARIF file URIs are relative to [default: MODELAUDIT_SARIF_ROOT, "
                          "else the working directory when the model is inside it]."),
    ]):
        command = option(command)
    return command


def stage_options(command: F) -> F:
    """What every scanning command asks about the stages: --stages, --budget, --device, --force."""
    for option in reversed((
        click.option("--stages", default=None, help="Comma-separated stages to run [default: every registered "
                     "stage]."),
        click.option("--budget", type=click.Choice(BUDGETS), default="standard", show_default=True,
                     help="Effort for the behavioural stages."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--force", is_flag=True, help="Load the model even if static checks found code execution."),
    )):
        command = option(command)
    return command


def time_options(command: F) -> F:
    """--time-limit and --fit: the cost model's estimate checked before the model stages run."""
    for option in reversed((
        click.option("--time-limit", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
                     help="Refuse the scan (exit 2, naming the estimate) when its estimated time is longer. The "
                     "estimate is made once the model is loaded, from this device's measured speed on it."),
        click.option("--fit", is_flag=True, help="With --time-limit: narrow --budget to the largest that fits "
                     "instead of refusing (the report records it; stages are never dropped)."),
    )):
        command = option(command)
    return command


def check_time_options(time_limit: float | None, fit: bool, *, store: bool = False) -> None:
    """--fit needs --time-limit, and cannot go with a scan store (a narrowed scan would be kept under the budget
    asked for).

    Raises:
        UsageError: either combination.
    """
    if fit and time_limit is None:
        raise UsageError("--fit needs --time-limit (the time the budget is narrowed to fit)")
    if fit and store:
        raise UsageError("--fit cannot be used with --store: the store keeps reports by the budget asked for, and "
                         "--fit may run a smaller one; choose the --budget that fits instead")


def _sarif_root(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """The SARIF writer reads its root from the environment, so every command that renders gets it alike."""
    if value:
        os.environ[SARIF_ROOT_ENV] = str(Path(value).resolve())


def parse_stages(text: str | None) -> tuple[str, ...]:
    """Stage names from ``--stages`` (default: every registered stage).

    Raises:
        UsageError: a name no stage is registered under.
    """
    known = stage_names()
    if text is None:
        return known
    selected = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = set(selected) - set(known)
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    return selected


@click.command(cls=ModelAuditCommand)
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@hub_options
@click.option("--base", help="Local folder of the claimed base model (tokenizer and weight comparison).")
@report_options
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False),
              help="modelaudit.toml policy file (fail_on, allow_rules, required_stages).")
@stage_options
@time_options
@click.option("--store", "store_url", envvar=scan_store.DEFAULT_STORE_ENV, default=None, metavar="URL",
              help=STORE_HELP)
@click.option("--rescan", is_flag=True, help="With --store: scan even when the store has the answer (the stored "
              "report is replaced).")
def scan(targets: tuple[str, ...], revision: str | None, cache_dir: str | None, offline: bool | None,
         base: str | None, fmt: str, output: str | None, fail_on: str | None, policy_file: str | None,
         stages: str | None, budget: str, device: str, force: bool, time_limit: float | None, fit: bool,
         store_url: str | None, rescan: bool) -> None:
    """Scan each TARGET: a hub id (org/model), a local model folder, or a single model file.

    Several targets get one report each; the exit code is the worst of their outcomes (3, incomplete or
    unreadable, above 1, findings).
    """
    policy = Policy.from_toml(policy_file) if policy_file else Policy()
    if fail_on is not None:
        policy.fail_on = parse_severity(fail_on)
    check_time_options(time_limit, fit, store=bool(store_url))
    config = ScanConfig(policy=policy, cache_dir=cache_dir, offline=offline, stages=parse_stages(stages),
                        budget=budget, device=device, force=force, progress=settings().reporter,
                        time_limit=time_limit, fit=fit)
    if rescan and not store_url:
        raise UsageError("--rescan applies only with --store (without a store every scan runs)")
    store = scan_store.open_store(store_url) if store_url else None
    try:
        if len(targets) == 1:
            report = _scan_target(targets[0], revision=revision, base=base, config=config, store=store,
                                  rescan=rescan)
            _emit(report, fmt, output)
            sys.exit(exit_code(report, policy))
        paths = output_paths(targets, output)
        codes = [_scan_one(t, paths[t], revision=revision, base=base, config=config, fmt=fmt, store=store,
                           rescan=rescan) for t in targets]
        sys.exit(worst_exit(codes))
    finally:
        if store is not None:
            store.close()


def _scan_target(target: str, *, revision: str | None, base: str | None, config: ScanConfig,
                 store: scan_store.ScanStore | None, rescan: bool) -> Report:
    """One scan: through the store when there is one (answered from it, or scanned and stored)."""
    if store is None:
        return run_scan(target, revision=revision, base=base, config=config)
    report = scan_with_store(target, revision=revision, base=base, config=config, store=store, rescan=rescan)
    if report.scan is not None and report.scan.stored_scan is not None:
        info(f"{target}: answered from the scan store {store.url} (scan {report.scan.stored_scan}, made "
             f"{report.scan.stored_at}); --rescan scans again")
    return report


def _scan_one(target: str, output: str | None, *, revision: str | None, base: str | None, config: ScanConfig,
              fmt: str, store: scan_store.ScanStore | None = None, rescan: bool = False) -> int:
    """One target of several: its report, or its error as one line (the other targets still run; a target over
    --time-limit is refused alone, exit 2, since the estimate is the target's own)."""
    info(f"scanning {target}")
    try:
        report = _scan_target(target, revision=revision, base=base, config=config, store=store, rescan=rescan)
    except TimeLimitError as exc:
        click.echo(f"modelaudit: error: {target}: {exc}", err=True)
        return EXIT_USAGE
    except UsageError:
        raise
    except ModelAuditError as exc:
        click.echo(f"modelaudit: error: {exc}", err=True)  # the message names the target
        return EXIT_INCOMPLETE
    _emit(report, fmt, output)
    return exit_code(report, config.policy)


def output_paths(targets: tuple[str, ...], output: str | None) -> dict[str, str | None]:
    """Where each of several targets' reports goes: standard output, or ``OUTPUT`` with the target's name
    before the suffix (a hub id ``org/model`` as ``org--model``, a path as its last part; ``-2``, ``-3`` for
    names already taken).

    Raises:
        UsageError: the same target given twice (its reports would overwrite each other).
    """
    if len(set(targets)) != len(targets):
        raise UsageError("a target is given more than once")
    if output is None or output == STDOUT:
        return dict.fromkeys(targets, output)
    out = Path(output)
    taken: set[str] = set()
    paths: dict[str, str | None] = {}
    for target in targets:
        stem = f"{out.stem}-{target_slug(target)}"
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        paths[target] = str(out.with_name(name + out.suffix))
    return paths


def target_slug(target: str) -> str:
    """A file-name part naming a target: ``org/model`` -> ``org--model``, ``./models/x/`` -> ``x``."""
    path = Path(target)
    text = target.replace("/", "--") if not path.exists() and target.count("/") == 1 else path.name or "target"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "target"


@click.command(cls=ModelAuditCommand)
@click.argument("target")
@click.option("--budget", type=click.Choice(BUDGETS), default="standard", show_default=True,
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
@hub_options
@report_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True, help="Seed for prompts and controls.")
@time_options
def triggers(target: str, budget: str, candidates: tuple[str, ...], placements: tuple[str, ...],
             targets: tuple[str, ...], generators: str | None, code_probe: bool, base: str | None, revision: str | None,
             cache_dir: str | None, offline: bool | None, fmt: str, output: str | None, fail_on: str | None,
             device: str, seed: int, time_limit: float | None, fit: bool) -> None:
    """Search TARGET for inserted texts that switch its behaviour (a scan with the triggers stage only).

    The static checks still run first, so a model whose files execute code is never loaded.
    """
    policy = Policy()  # every stage it runs (weights too, with --base) is required: fail closed
    if fail_on is not None:
        policy.fail_on = parse_severity(fail_on)
    check_time_options(time_limit, fit)
    options: dict[str, object] = {"triggers.candidates": list(candidates), "triggers.targets": list(targets),
                                  "triggers.code_probe": code_probe}
    if placements:
        options["triggers.placements"] = list(placements)
    if generators:
        names = [g.strip() for g in generators.split(",") if g.strip()]
        unknown = [g for g in names if g not in trigger_generators.names()]
        if unknown:
            raise UsageError(f"unknown trigger generator {unknown[0]!r} (known: {', '.join(trigger_generators.names())})")
        options["triggers.generators"] = names
    stages = ("static", "weights", "triggers") if base else ("static", "triggers")
    report = run_scan(target, revision=revision, base=base,
                      config=ScanConfig(policy=policy, stages=stages, budget=budget, device=device, seed=seed,
                                        options=options, cache_dir=cache_dir, offline=offline,
                                        progress=settings().reporter, time_limit=time_limit, fit=fit))
    _emit(report, fmt, output)
    sys.exit(exit_code(report, policy))


@click.command(name="report", cls=ModelAuditCommand)
@click.argument("report_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="console", show_default=True, help=FORMAT_HELP)
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the rendering here (atomically); '-' is standard output.")
def report_cmd(report_json: str, fmt: str, output: str | None) -> None:
    """Render a saved JSON report in another format."""
    try:
        with open(report_json, encoding="utf-8") as fh:
            report = Report.from_dict(json.load(fh))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidModelFileError(f"{report_json}: not a modelaudit JSON report ({exc})") from None
    _emit(report, fmt, output)


def _emit(report: Report, fmt: str, output: str | None) -> None:
    """The report on standard output (no ``-o``, or ``-o -``) or written atomically to ``output``."""
    if fmt == "console" and (not output or output == STDOUT):
        print_report(report, Console(width=None if sys.stdout.isatty() else 120))
    else:
        emit_text(render(report, fmt), output, f"{report.verdict.value}: report written to {output}")
