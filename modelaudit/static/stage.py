"""The ``static`` stage: every registered static check over the target's files, before any model load.

It reads files only (never imports or unpickles them), so it runs first; a critical finding here keeps
the model stages from loading the model unless the user forces it.
"""

from __future__ import annotations

from pathlib import Path

from modelaudit.findings import Finding, StageCoverage
from modelaudit.registry import Evidence, StageSpec, register_stage
from modelaudit.stages import StageContext, StageOutput
from modelaudit.static.base import WEIGHT_TYPES, StaticContext, run_static_checks

UNFINISHED_RULE_SUFFIXES = (".resource-limit", ".scan-incomplete", ".not-hashed")
"""Findings that say a file was not read to the end (a size, time or nesting cap was hit, or a hash limit): the
file is not known to be safe, so the stage did not fully run."""
NO_MODEL_NOTE = ("no model weights were recognised (looked for safetensors, PyTorch, pickle, GGUF and NumPy "
                 "files by their bytes); nothing here can be vouched for as a model")


def run_static_stage(ctx: StageContext) -> StageOutput:
    """Run the static checks; a check that raised is a recorded error and partial coverage."""
    base = Path(ctx.base) if ctx.base and Path(ctx.base).is_dir() else None
    files = ctx.resolved.info.files
    static = StaticContext(root=ctx.resolved.root, files=files, base_tokenizer_dir=base)
    result = run_static_checks(static)
    _mark_unfinished(result.coverage, result.findings, has_weights=any(f.content_type in WEIGHT_TYPES
                                                                        for f in files))
    return StageOutput(findings=result.findings, errors=result.errors, coverage=result.coverage)


def _mark_unfinished(coverage: StageCoverage, findings: list[Finding], *, has_weights: bool) -> None:
    """Lower coverage to ``partial`` where the checks could not vouch for the target (fail closed)."""
    gaps = [f"{f.location.path or 'a file'} was not read to the end: {f.message}"
            for f in findings if f.rule_id.endswith(UNFINISHED_RULE_SUFFIXES)]
    if not has_weights:
        gaps.append(NO_MODEL_NOTE)
    if gaps:
        coverage.notes.extend(gaps)
        coverage.status = "partial"


register_stage("static", StageSpec(entry="modelaudit.static.stage:run_static_stage", order=0,
                                   evidence=Evidence.FILES, reads_weights=False),
               description="Supply-chain checks on the model's files (nothing is imported or unpickled)",
               rules={})  # each static check declares its own rule ids
