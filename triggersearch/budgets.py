"""How much a trigger search may spend: the named budgets the CLI and the scan offer.

Kept apart from the search so that light code (the stage deciding whether a reference model is worth
loading, generators reading their limits) can look a budget up without importing the search.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelaudit.chat import PREFIX, SUFFIX, SYSTEM
from modelaudit.errors import UsageError


@dataclass(frozen=True)
class Budget:
    """How much a search may spend."""

    name: str
    prompts: int
    """Benign prompts every surviving candidate is scored on."""
    screen_prompts: int
    """Prompts of the first, screening pass."""
    controls: int
    """Random control insertions per (placement, token length)."""
    years: tuple[int, int]
    phrasings: int
    """How many of the year phrasings the sweep uses."""
    generate_top: int
    """Candidates whose greedy answers are generated and judged by the behaviour detectors."""
    gradient_steps: int
    """GCG steps per run (a run: one target, or the divergence objective, at one placement). Gradient search
    and target inversion run on CUDA at every budget where this is above 0; on a CPU only for models up to
    50M parameters or at the deep budget (``triggersearch.gradient.gradient_skip_reason``)."""
    gradient_tokens: int
    leakage_samples: int
    tokenizer_max: int = 64
    weightdiff_max: int = 24
    answer_tokens: int = 4
    """Answer positions the divergence averages."""
    generate_tokens: int = 24
    gradient_targets: int = 2
    """Answers gradient search aims at (suspected and leaked ones first, then inverted ones)."""
    inversion_starts: int = 32
    """Start tokens target inversion extends (each kind: most probable, most raised over the base)."""
    code_prompts: int = 14
    """Coding requests of the code probe (0: no code probe)."""
    code_years: tuple[int, int] = (2015, 2035)
    code_placements: tuple[str, ...] = (SYSTEM, PREFIX)
    code_controls: int = 4
    code_tokens: int = 96
    """New tokens per code-probe answer (the vulnerable line of a short function comes well within 64)."""


BUDGETS = {
    "quick": Budget("quick", prompts=8, screen_prompts=4, controls=10, years=(2018, 2030), phrasings=1,
                    generate_top=4, gradient_steps=0, gradient_tokens=4, leakage_samples=8, tokenizer_max=24,
                    weightdiff_max=12, generate_tokens=16, code_years=(2019, 2029), code_controls=3, code_tokens=64),
    "standard": Budget("standard", prompts=16, screen_prompts=4, controls=24, years=(1990, 2040), phrasings=2,
                       generate_top=5, gradient_steps=24, gradient_tokens=8, leakage_samples=24),
    "deep": Budget("deep", prompts=32, screen_prompts=8, controls=48, years=(1990, 2040), phrasings=3,
                   generate_top=8, gradient_steps=60, gradient_tokens=8, leakage_samples=64, tokenizer_max=256,
                   gradient_targets=4, inversion_starts=64,
                   weightdiff_max=48, answer_tokens=6, code_years=(1995, 2040), code_controls=6, code_tokens=128,
                   code_placements=(SYSTEM, PREFIX, SUFFIX)),
}


def get_budget(name: str) -> Budget:
    """The budget called ``name``; a typo is the user's to fix, so it is a usage error, not a KeyError.

    Raises:
        UsageError: unknown budget.
    """
    if name not in BUDGETS:
        raise UsageError(f"unknown budget {name!r}; expected one of {', '.join(BUDGETS)}")
    return BUDGETS[name]
