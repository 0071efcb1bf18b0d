"""The ``static`` stage: every registered static check over the target's files, before any model load.

It reads files only (never imports or unpickles them), so it runs first; a critical finding here keeps
the model stages from loading the model unless the user forces it.
"""

from __future__ import annotations

from pathlib import Path

from modelaudit.registry import Evidence, StageSpec, register_stage, static_checks
from modelaudit.stages import StageContext, StageOutput
from modelaudit.static.base import StaticContext, run_static_checks


def run_static_stage(ctx: StageContext) -> StageOutput:
    """Run the static checks; a check that raised is a recorded error and partial coverage."""
    base = Path(ctx.base) if ctx.base and Path(ctx.base).is_dir() else None
    static = StaticContext(root=ctx.resolved.root, files=ctx.resolved.info.files, base_tokenizer_dir=base)
    result = run_static_checks(static)
    return StageOutput(findings=result.findings, errors=result.errors, coverage=result.coverage)


register_stage("static", StageSpec(entry="modelaudit.static.stage:run_static_stage", order=0,
                                   evidence=Evidence.FILES, reads_weights=False),
               description="Supply-chain checks on the model's files (nothing is imported or unpickled)",
               rules={})  # each static check declares its own rule ids
