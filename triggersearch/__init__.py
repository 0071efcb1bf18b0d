"""Trigger search: inserted texts that make a model behave far differently than random text does.

Callers outside the package import from here: ``search_triggers`` and what it returns, the budgets,
the code probe, what generator plugins receive, and the findings' rules. The modules behind these
names are free to move things around.

Why most names load lazily: the plugin registry imports ``triggersearch.generators`` and
``triggersearch.behaviours`` for every scan, static-only ones included, and importing a submodule runs
this file first. So it imports only the plain data modules (``result``, ``budgets``) and resolves every
other name on first use (PEP 562 module ``__getattr__``): ``import triggersearch`` never loads the
search, the scoring engine or chat rendering, let alone torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelaudit.lazy import lazy_attributes

from triggersearch.budgets import BUDGETS, Budget, get_budget
from triggersearch.result import (
    Candidate,
    ControlStats,
    Example,
    InvertedTarget,
    LeakedAnswer,
    SweepCurve,
    TriggerHit,
    TriggerSearchResult,
)

if TYPE_CHECKING:
    from triggersearch.behaviours import SPECIFIC
    from triggersearch.codeprobe import CodeProbeResult, code_probe_prompts, run_code_probe
    from triggersearch.controls import ALPHA, MIN_EFFECT
    from triggersearch.engine import Engine
    from triggersearch.generators import LIBRARY, YEAR_PHRASINGS, GeneratorContext
    from triggersearch.inversion import invert_targets
    from triggersearch.rules import RULES, trigger_findings
    from triggersearch.search import DEFAULT_GENERATORS, search_triggers
    from triggersearch.stage import run_triggers_stage
    from triggersearch.sweeps import step_year

_LAZY = {
    "search_triggers": "triggersearch.search",
    "DEFAULT_GENERATORS": "triggersearch.search",
    "ALPHA": "triggersearch.controls",
    "MIN_EFFECT": "triggersearch.controls",
    "step_year": "triggersearch.sweeps",
    "run_code_probe": "triggersearch.codeprobe",
    "code_probe_prompts": "triggersearch.codeprobe",
    "CodeProbeResult": "triggersearch.codeprobe",
    "Engine": "triggersearch.engine",
    "invert_targets": "triggersearch.inversion",
    "GeneratorContext": "triggersearch.generators",
    "LIBRARY": "triggersearch.generators",
    "YEAR_PHRASINGS": "triggersearch.generators",
    "SPECIFIC": "triggersearch.behaviours",
    "RULES": "triggersearch.rules",
    "trigger_findings": "triggersearch.rules",
    "run_triggers_stage": "triggersearch.stage",
}
"""Public name -> the module that defines it, imported on first access."""

__all__ = [
    "ALPHA",
    "BUDGETS",
    "DEFAULT_GENERATORS",
    "LIBRARY",
    "MIN_EFFECT",
    "RULES",
    "SPECIFIC",
    "YEAR_PHRASINGS",
    "Budget",
    "Candidate",
    "CodeProbeResult",
    "ControlStats",
    "Engine",
    "Example",
    "GeneratorContext",
    "InvertedTarget",
    "LeakedAnswer",
    "SweepCurve",
    "TriggerHit",
    "TriggerSearchResult",
    "code_probe_prompts",
    "get_budget",
    "invert_targets",
    "run_code_probe",
    "run_triggers_stage",
    "search_triggers",
    "step_year",
    "trigger_findings",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
