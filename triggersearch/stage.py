"""The ``triggers`` stage of ``modelaudit.api.scan``.

Writes the contract's top-level ``triggers`` list (strongest first; ``trigger``, ``placement``,
``effect``, ``p_value``, ``behaviour``, ``examples`` and more per item) and a ``trigger_search``
section with the year-sweep curves, the control distributions and what the search tried.
Options (``ScanConfig.options``): ``triggers.candidates`` (extra texts), ``triggers.targets`` (suspected
backdoor answers for gradient search), ``triggers.generators``,
``triggers.placements``, ``triggers.code_probe`` (default on: the year sweep on coding requests).
With a base model (``--base``) the gradient generator's target inversion ranks answers against it, and
an answer that random insertions call up is checked against the base under the same insertions.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from modelaudit.chat import PLACEMENTS
from modelaudit.errors import ModelAuditError
from modelaudit.findings import Finding, Severity, StageCoverage
from modelaudit.stages import StageContext, StageOutput
from modelaudit.weightdiff.sharedbase import load_base_sharing
from modelaudit.weightdiff.sources import resolve_local
from triggersearch.budgets import BUDGETS
from triggersearch.gradient import skip_reason
from triggersearch.rules import trigger_findings
from triggersearch.search import search_triggers


UNAIDED_SEARCH_NOTE = ("a trigger nobody named is looked for by gradient search and target inversion, which find one "
                       "in some models and not in others (in 1 to 2 of 3 test models, see the README), so finding "
                       "none does not rule one out")
"""Said whenever the unaided search ran and nothing was flagged: a pass is not proof of no trigger."""


def unaided_search_notes(gradient_ran: bool, findings: list[Finding]) -> list[str]:
    """``UNAIDED_SEARCH_NOTE`` when gradient search ran and nothing was flagged high; else nothing (a skipped
    gradient search has its own note saying why it was off)."""
    flagged = any(f.severity >= Severity.HIGH for f in findings)
    return [UNAIDED_SEARCH_NOTE] if gradient_ran and not flagged else []


def run_triggers_stage(ctx: StageContext) -> StageOutput:
    opts = ctx.config.options
    loaded = ctx.model()
    notes: list[str] = list(loaded.notes)  # weights offloaded to CPU memory or disk: slower, said here
    generators = opts.get("triggers.generators")
    reference = None
    if ctx.base and (generators is None or "gradient" in generators):
        reference = load_reference(ctx.base, loaded, budget=ctx.config.budget, device=ctx.config.device,
                                   dtype=ctx.config.dtype, notes=notes)
    load_base = None  # the leak check loads the base only if an answer leaks under random text
    if ctx.base and reference is None:
        load_base = partial(load_base_model, ctx.base, loaded, device=ctx.config.device, dtype=ctx.config.dtype,
                            notes=notes, purpose="the leak check")
    result = search_triggers(loaded.model, loaded.tokenizer, budget=ctx.config.budget, seed=ctx.config.seed,
                             weightdiff=ctx.report.sections.get("weightdiff"),
                             extra=list(opts.get("triggers.candidates", ())),
                             targets=list(opts.get("triggers.targets", ())),
                             generators=generators, reference=reference, load_base=load_base,
                             placements=tuple(opts.get("triggers.placements", PLACEMENTS)),
                             code_probe=bool(opts.get("triggers.code_probe", True)),
                             progress=bool(opts.get("progress", False)))
    checks = sorted(result.generators) + (["code-probe"] if result.code_probe is not None else [])
    findings = trigger_findings(result)
    gradient_ran = "gradient" in result.generators and not skip_reason(loaded.model, BUDGETS[ctx.config.budget])
    notes += unaided_search_notes(gradient_ran, findings)
    return StageOutput(findings=findings, section=triggers_list(result), section_name="triggers",
                       coverage=StageCoverage(status="ran", checks_run=checks,
                                              notes=notes + list(result.notes)),
                       extra_sections={"trigger_search": search_summary(result)})


def load_reference(base: str, loaded: Any, *, budget: str, device: str, dtype: str, notes: list[str]) -> Any:
    """The claimed base model for target inversion, or None (with a note) when it would not be used,
    cannot be loaded, or tokenises differently (its probabilities would be of other tokens)."""
    if budget not in BUDGETS or skip_reason(loaded.model, BUDGETS[budget]):
        return None  # no gradient search, so no inversion; the search notes why
    return load_base_model(base, loaded, device=device, dtype=dtype, notes=notes, purpose="target inversion")


def load_base_model(base: str, loaded: Any, *, device: str, dtype: str, notes: list[str], purpose: str) -> Any:
    """The claimed base model for ``purpose``, or None with a note saying that ``purpose`` ran without it:
    it cannot be loaded, or it tokenises differently (its answers to the same token ids would mean nothing).

    The base shares every tensor it has in common with the model (``weightdiff.sharedbase``): it costs the
    memory of the tensors the fine-tune changed, not of a second model."""
    try:
        ref = load_base_sharing(resolve_local(base, what="base model"), loaded, device=device, dtype=dtype)
    except ModelAuditError as exc:
        notes.append(f"{purpose} ran without the base model: it was not loaded ({exc})")
        return None
    if ref.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
        notes.append(f"{purpose} ran without the base model: its tokenizer differs from the model's")
        return None
    return ref.model


def triggers_list(result: Any) -> list[dict[str, Any]]:
    """The contract's ``triggers`` list."""
    return [h.to_dict() for h in result.hits]


def search_summary(result: Any) -> dict[str, Any]:
    """Everything about the search except the hits themselves."""
    data = result.to_dict()
    data.pop("hits")
    return data
