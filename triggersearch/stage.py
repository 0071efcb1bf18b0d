"""The ``triggers`` stage of ``modelaudit.api.scan``.

Writes the contract's top-level ``triggers`` list (strongest first; ``trigger``, ``placement``,
``effect``, ``p_value``, ``behaviour``, ``examples`` and more per item) and a ``trigger_search``
section with the year-sweep curves, the control distributions and what the search tried.
Options (``ScanConfig.options``): ``triggers.candidates`` (extra texts), ``triggers.targets`` (suspected
backdoor answers for gradient search), ``triggers.generators``,
``triggers.placements``, ``triggers.code_probe`` (default on: the year sweep on coding requests).
"""

from __future__ import annotations

from typing import Any


def run_triggers_stage(ctx: Any) -> Any:
    from modelaudit.api import StageOutput
    from modelaudit.findings import StageCoverage
    from triggersearch.engine import PLACEMENTS
    from triggersearch.rules import trigger_findings
    from triggersearch.search import search_triggers

    opts = ctx.config.options
    loaded = ctx.model()
    result = search_triggers(loaded.model, loaded.tokenizer, budget=ctx.config.budget, seed=ctx.config.seed,
                             weightdiff=ctx.report.sections.get("weightdiff"),
                             extra=list(opts.get("triggers.candidates", ())),
                             targets=list(opts.get("triggers.targets", ())),
                             generators=opts.get("triggers.generators"),
                             placements=tuple(opts.get("triggers.placements", PLACEMENTS)),
                             code_probe=bool(opts.get("triggers.code_probe", True)),
                             progress=bool(opts.get("progress", False)))
    checks = sorted(result.generators) + (["code-probe"] if result.code_probe is not None else [])
    return StageOutput(findings=trigger_findings(result), section=triggers_list(result), section_name="triggers",
                       coverage=StageCoverage(status="ran", checks_run=checks,
                                              notes=list(result.notes)),
                       extra_sections={"trigger_search": search_summary(result)})


def triggers_list(result: Any) -> list[dict[str, Any]]:
    """The contract's ``triggers`` list."""
    return [h.to_dict() for h in result.hits]


def search_summary(result: Any) -> dict[str, Any]:
    """Everything about the search except the hits themselves."""
    data = result.to_dict()
    data.pop("hits")
    return data
