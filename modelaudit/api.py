"""The one entry point: ``scan(target) -> Report``.

Stages run in order (resolve, static, then the model stages when registered and selected); each one
records coverage and timings, and an exception inside one becomes a recorded error, never a crash.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelaudit import __version__
from modelaudit.findings import Report, StageCoverage
from modelaudit.policy import Policy, apply_policy
from modelaudit.static.base import StaticContext, run_static_checks
from modelaudit.target import ResolvedTarget, resolve_target


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
    base_tokenizer: str | None = None
    """Local folder of the base model whose tokenizer added tokens are compared against."""


def scan(target: str | os.PathLike[str], *, revision: str | None = None, base: str | None = None,
         config: ScanConfig | None = None) -> Report:
    """Audit one model and return its report.

    Raises:
        TargetNotFoundError: the target does not exist (or is not cached while offline).
        TargetUnreadableError: the target cannot be read.
        UsageError: contradictory arguments.
    """
    cfg = config or ScanConfig()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    resolved = resolve_target(str(target), revision=revision, cache_dir=cfg.cache_dir, offline=cfg.offline)
    timings["resolve"] = time.perf_counter() - start
    report = Report(target=resolved.info, tool_version=__version__, timings=timings)
    if "static" in cfg.stages:
        _run_static(report, resolved, cfg, base=base)
    for stage in cfg.stages:
        if stage != "static":
            report.coverage[stage] = StageCoverage(status="skipped", notes=[f"stage {stage!r} is not available"])
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
