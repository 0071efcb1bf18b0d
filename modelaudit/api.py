"""The one entry point: ``scan(target) -> Report``.

Stages run in order: resolve, static, then the model stages (weights, triggers, probes) that are
selected. The model is loaded at most once, lazily, by the first stage that needs it, and never when
the static checks found code execution (unless forced). Each stage records coverage and timings, and
an exception inside one becomes a recorded error on the report, never a crash.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelaudit import __version__
from modelaudit.findings import Finding, Report, ScanError, Severity, StageCoverage
from modelaudit.policy import Policy, apply_policy
from modelaudit.static.base import StaticContext, run_static_checks
from modelaudit.target import ResolvedTarget, resolve_target

MODEL_STAGES = ("weights", "triggers", "probes")
ALL_STAGES = ("static", *MODEL_STAGES)


@dataclass
class ScanConfig:
    """Options that shape a scan; defaults suit a CI gate."""

    policy: Policy = field(default_factory=Policy)
    """Fail-on level, allow-list and required stages."""
    stages: tuple[str, ...] = ("static",)
    """Stages to run, in order."""
    cache_dir: str | None = None
    """Hugging Face cache folder (default: the hub's own default / HF_HUB_CACHE)."""
    offline: bool | None = None
    """Force hub offline mode; None follows HF_HUB_OFFLINE."""
    device: str = "auto"
    """auto, cpu or cuda for stages that load the model."""
    dtype: str = "auto"
    """Weights dtype for loaded models (auto: bf16 on GPU, fp32 on CPU)."""
    base_tokenizer: str | None = None
    """Local folder of the base model whose tokenizer added tokens are compared against."""
    force: bool = False
    """Load the model even when static checks found code execution (pickles still load weights_only)."""
    budget: str = "standard"
    """Behaviour-stage budget: quick, standard or deep."""
    seed: int = 0
    """Seed for every sampled choice (control insertions, random directions)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Stage-specific options, keyed ``stage.option`` (e.g. ``triggers.extra``)."""


@dataclass
class StageContext:
    """What a model stage gets: the target, the config, earlier results, and the model on demand."""

    resolved: ResolvedTarget
    config: ScanConfig
    report: Report
    base: str | None = None
    _model: Any = None

    def model(self) -> Any:
        """The ``LoadedModel``, loaded once for all stages."""
        if self._model is None:
            from modelaudit.loading import load_model

            start = time.perf_counter()
            pickle_ok = self.report.coverage.get("static") is not None and not any(
                f.stage == "static" and f.severity >= Severity.HIGH for f in self.report.findings)
            self._model = load_model(self.resolved.root if self.resolved.info.kind != "file"
                                     else Path(self.resolved.info.local_path),
                                     device=self.config.device, dtype=self.config.dtype,
                                     allow_pickle_weights=pickle_ok or self.config.force)
            self.report.timings["load"] = time.perf_counter() - start
        return self._model


@dataclass
class StageOutput:
    """What a model stage returns; ``scan`` merges it into the report."""

    findings: list[Finding] = field(default_factory=list)
    section: Any = None
    """JSON-ready data stored under ``report.sections[stage]`` (or the name in ``section_name``)."""
    coverage: StageCoverage = field(default_factory=lambda: StageCoverage(status="ran"))
    section_name: str | None = None
    extra_sections: dict[str, Any] = field(default_factory=dict)
    """Further top-level report sections (e.g. ``trigger_search`` beside the ``triggers`` list)."""


StageFn = Callable[[StageContext], StageOutput]


def _stage_functions() -> dict[str, StageFn]:
    """Model stages, imported lazily so a static-only scan never imports torch."""
    stages: dict[str, StageFn] = {}
    try:
        from modelaudit.weightdiff import run_weights_stage

        stages["weights"] = run_weights_stage
    except ImportError:
        pass
    try:
        from triggersearch import run_triggers_stage

        stages["triggers"] = run_triggers_stage
    except ImportError:
        pass
    try:
        from probes.stage import run_probes_stage

        stages["probes"] = run_probes_stage
    except ImportError:
        pass
    return stages


def scan(target: str | os.PathLike[str], *, revision: str | None = None, base: str | None = None,
         config: ScanConfig | None = None) -> Report:
    """Audit one model and return its report.

    Raises:
        TargetNotFoundError: the target does not exist (or is not cached while offline).
        TargetUnreadableError: the target cannot be read.
        UsageError: contradictory arguments.
    """
    cfg = config or ScanConfig()
    start = time.perf_counter()
    resolved = resolve_target(str(target), revision=revision, cache_dir=cfg.cache_dir, offline=cfg.offline)
    report = Report(target=resolved.info, tool_version=__version__,
                    timings={"resolve": time.perf_counter() - start})
    if "static" in cfg.stages:
        _run_static(report, resolved, cfg, base=base)
    ctx = StageContext(resolved=resolved, config=cfg, report=report, base=base)
    available = _stage_functions()
    code_exec = any(f.stage == "static" and f.severity >= Severity.CRITICAL for f in report.findings)
    for stage in (s for s in MODEL_STAGES if s in cfg.stages):
        required = stage in cfg.policy.required_stages
        if stage not in available:
            report.coverage[stage] = StageCoverage(status="skipped", required=required,
                                                   notes=[f"stage {stage!r} is not installed"])
        elif stage == "weights" and base is None:
            report.coverage[stage] = StageCoverage(status="skipped", required=required,
                                                   notes=["no base model given (--base)"])
        elif code_exec and not cfg.force:
            report.coverage[stage] = StageCoverage(
                status="skipped", required=required,
                notes=["static checks found code execution; the model was not loaded (--force overrides)"])
        else:
            _run_model_stage(stage, available[stage], ctx, required)
    apply_policy(report, cfg.policy)
    report.timings["total"] = time.perf_counter() - start
    return report


def _run_static(report: Report, resolved: ResolvedTarget, cfg: ScanConfig, *, base: str | None) -> None:
    base_tok = cfg.base_tokenizer or base
    ctx = StaticContext(root=resolved.root, files=resolved.info.files,
                        base_tokenizer_dir=Path(base_tok) if base_tok and Path(base_tok).is_dir() else None)
    result = run_static_checks(ctx)
    report.findings.extend(result.findings)
    report.errors.extend(result.errors)
    result.coverage.required = "static" in cfg.policy.required_stages
    report.coverage["static"] = result.coverage
    report.timings["static"] = result.seconds


def _run_model_stage(stage: str, fn: StageFn, ctx: StageContext, required: bool) -> None:
    """Run one stage; an exception becomes a ScanError and a failed coverage entry (fail closed)."""
    from modelaudit.errors import ModelAuditError

    report = ctx.report
    start = time.perf_counter()
    try:
        out = fn(ctx)
    except ModelAuditError as exc:
        report.errors.append(ScanError(stage=stage, check=stage, message=str(exc)))
        report.coverage[stage] = StageCoverage(status="failed", required=required, notes=[str(exc)])
    except Exception as exc:  # a broken stage must not kill the scan
        report.errors.append(ScanError(stage=stage, check=stage, message=f"{type(exc).__name__}: {exc}"))
        report.coverage[stage] = StageCoverage(status="failed", required=required,
                                               notes=[f"{type(exc).__name__}: {exc}"])
    else:
        report.findings.extend(out.findings)
        out.coverage.required = required
        report.coverage[stage] = out.coverage
        if out.section is not None:
            report.sections[out.section_name or stage] = out.section
        report.sections.update(out.extra_sections)
    report.timings[stage] = time.perf_counter() - start
