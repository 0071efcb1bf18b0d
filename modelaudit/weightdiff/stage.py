"""The scan's ``weights`` stage: diff the target against the base it claims (``--base``)."""

from __future__ import annotations

from pathlib import Path

from modelaudit.errors import StageError
from modelaudit.findings import Finding, Severity, StageCoverage
from modelaudit.stages import StageContext, StageOutput
from modelaudit.weightdiff.core import diff_models
from modelaudit.weightdiff.rules import weight_findings
from modelaudit.weightdiff.sources import ArchitectureMismatchError

CHECKS = ["provenance", "tensor-stats", "delta-spectrum", "token-rows"]


def run_weights_stage(ctx: StageContext) -> StageOutput:
    """The scan's ``weights`` stage: diff the target against ``--base``.

    A base of another architecture is itself evidence that the claim is false, so it becomes a
    ``weights.provenance-mismatch`` finding (and partial coverage) rather than a failed stage; other
    errors (base not available locally, unreadable files) propagate and the scan records them.
    Options: ``weights.reference`` (clean fine-tune of the base), ``weights.block_mb``.
    """
    if not ctx.base:
        raise StageError("no base model given (--base)")
    info = ctx.resolved.info
    target = Path(info.local_path) if info.kind == "file" else ctx.resolved.root
    opts = ctx.config.options
    try:
        result = diff_models(target, ctx.base, reference_dir=opts.get("weights.reference"),
                             device=ctx.config.device, block_mb=float(opts.get("weights.block_mb", 16.0)),
                             cache_dir=ctx.config.cache_dir)
    except ArchitectureMismatchError as exc:
        finding = Finding(rule_id="weights.provenance-mismatch", severity=Severity.HIGH, confidence=0.9,
                          message=f"not derived from the claimed base: {exc}",
                          evidence={"verdict": "not-derived", "reason": "architecture", "base": str(ctx.base)})
        section = {"derived_from_base": False, "provenance": {"verdict": "not-derived", "reason": str(exc)},
                   "layers": [], "token_candidates": []}
        cov = StageCoverage(status="partial", checks_run=["provenance"], checks_failed=CHECKS[1:],
                            notes=[f"architectures differ; nothing else compared: {exc}"])
        return StageOutput(findings=[finding], section=section, coverage=cov, section_name="weightdiff")
    cov = StageCoverage(status="ran", checks_run=list(CHECKS) if result.tokens else CHECKS[:3],
                        notes=list(result.coverage_notes))
    return StageOutput(findings=weight_findings(result), section=result.to_dict(), coverage=cov,
                       section_name="weightdiff")
