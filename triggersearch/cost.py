"""The triggers stage's work at a budget (``modelaudit.cost``): counted from the budget and the search's own
constants, step by step as ``search.search_triggers`` runs them.

Where the count depends on what the search finds, a named assumption stands in (how many tests survive
screening, how many hits are confirmed, how many n-grams leak); they were read off counted runs on the tiny
zoo and SmolLM2 (``benchmarks/bench_cost_model.py``), and a wrong one moves the estimate, never the scan.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import sys
from typing import Any

from modelaudit.chat import PLACEMENTS, PREFIX, SUFFIX, SYSTEM
from modelaudit.cost import SCORING_BATCH_ROWS, CostInput, StageWork
from triggersearch.budgets import BUDGETS, Budget
from triggersearch.codeprobe import CODE_PHRASING, code_probe_prompts, first_half
from triggersearch.confirm import GEN_CONTROLS
from triggersearch.controls import length_bucket
from triggersearch.engine import PROMPT_GROUP_MIN
from triggersearch.fixedanswer import LEAK_CONTROLS, LEAK_TOKENS
from triggersearch.generators import LIBRARY, YEAR_PHRASINGS, GeneratorContext, tokenizer_oddities
from triggersearch.gradient import OPT_PROMPTS, POSITIONS, TARGET_POSITIONS, gcg, gradient_skip_reason
from triggersearch.inversion import invert_targets
from triggersearch.leakage import SAMPLE_TOKENS, TEMPERATURES, scaffold_texts
from triggersearch.search import SCORER_ROWS

SURVIVOR_SHARE = 0.2
"""Assumption: share of (candidate, placement) tests that pass screening and are scored on every prompt (counted:
22 % on the untrained tiny model at the quick budget)."""
CONFIRMED_PLACEMENTS = 2
"""Assumption: behaviour confirmation generates ``generate_top`` candidates at this many placements each, with
``GEN_CONTROLS`` controls per (placement, length) of theirs, at most one such key per confirmed job (counted: 35
jobs on the untrained tiny model at quick, where this gives 32)."""
LEAKED_NGRAMS = 2
"""Assumption: n-grams the leakage generator proposes."""
GCG_ROW_WEIGHT = 2.5
"""A GCG row costs this many rows of the work around the model: ``gradient._Objective.loss`` assembles each
(trigger, prompt) row from embeddings in Python and reads its answer positions one row at a time (measured on the
tiny model, 16 rows x 49 swaps x 144 steps: 0.6 ms a row beyond the model, against 0.23 ms a rendered prompt)."""
CODE_YEARS_GOING_ON = 0.25
"""Assumption: share of the code probe's (year, placement) pairs still in reach of a hit after the first half of the
coding requests (``codeprobe.could_reach``), which are answered on the rest too."""
BANDIT_SECONDS = 0.004
"""Seconds bandit takes to judge one answer's code (measured: ~2 s for 420 short answers on one core)."""

_GCG_PROPOSALS = inspect.signature(gcg).parameters["batch"].default
"""Swaps GCG evaluates per step (``gradient.gcg``'s own default)."""
_INVERSION = {name: p.default for name, p in inspect.signature(invert_targets).parameters.items()}
"""Target inversion's own defaults (prompts, steps)."""


def triggers_work(budget: str, model: CostInput) -> StageWork:
    """The trigger search's work at ``budget`` on ``model`` (``ScanConfig.options`` as the stage reads them)."""
    b = BUDGETS[budget]
    opts = model.options
    placements = tuple(opts.get("triggers.placements", PLACEMENTS))
    generators = opts.get("triggers.generators")
    extra = [t for t in opts.get("triggers.candidates", ()) if str(t).strip()]
    p, a, g = b.prompts, b.answer_tokens, b.generate_tokens
    lp = round(sum(model.placed_tokens(pl) for pl in placements) / len(placements))  # a placement's mean prompt
    work = StageWork()
    for family in {(SYSTEM if pl == SYSTEM else PREFIX) for pl in placements}:  # once per baseline family
        work += model.generate(p, model.placed_tokens(family), g, part="baseline answers")
        work += model.forward(p, model.placed_tokens(family) + a, shared=model.scored_shared(family),
                              part="baseline scoring")
    leak_lp = round(sum(model.placed_tokens(pl) for pl in PLACEMENTS) / len(PLACEMENTS))
    work += model.generate(LEAK_CONTROLS * len(PLACEMENTS) * p, leak_lp + LEAK_TOKENS, g, part="leak controls")

    def uses(name: str) -> bool:
        return generators is None or name in generators

    texts = list(LIBRARY) if uses("library") else []
    if uses("year-sweep"):
        texts += [ph.format(year=y) for ph in YEAR_PHRASINGS[: b.phrasings] for y in range(b.years[0], b.years[1] + 1)]
    texts += extra if uses("user") else []
    lengths = [model.token_length(t) for t in texts] or [LEAK_TOKENS]
    n_cands = len(texts) + (min(tokenizer_candidates(model.tokenizer), b.tokenizer_max) if uses("tokenizer") else 0)
    n_cands += b.weightdiff_max if uses("weightdiff") and model.base else 0
    if uses("leakage"):
        per_temp = max(1, b.leakage_samples // len(TEMPERATURES))
        for _ in TEMPERATURES:
            for scaffold in scaffold_lengths(model):  # one generation run per scaffold and temperature
                work += model.generate(per_temp, scaffold, SAMPLE_TOKENS, part="leakage samples")
        n_cands += LEAKED_NGRAMS
    tests = n_cands * len(placements)
    if uses("gradient") and not gradient_skip_reason(model.device_type, model.params, b):
        gwork, runs = _gradient_work(b, model, placements)
        work += gwork
        tests += runs
    mean_len = sum(lengths) / len(lengths)
    screen = min(b.screen_prompts, p)
    buckets = sorted({length_bucket(n) for n in lengths})
    survivors = int(SURVIVOR_SHARE * tests)
    for pl in placements:  # each placement's share of the tests
        width = int(model.placed_tokens(pl) + mean_len + a)
        work += _scored(model, round(tests * screen / len(placements)), width, pl,
                        per_prompt=SCORER_ROWS // screen // len(placements), part="screening")
        for bucket in buckets:
            work += _scored(model, b.controls * p, model.placed_tokens(pl) + bucket + a, pl, per_prompt=b.controls,
                            part="controls")
        if p > screen:
            work += _scored(model, round(survivors * (p - screen) / len(placements)), width, pl,
                            per_prompt=SCORER_ROWS // (p - screen) // len(placements), part="survivors")
    confirmed = b.generate_top * min(CONFIRMED_PLACEMENTS, len(placements))
    control_keys = min(confirmed, len(placements) * len(buckets))
    work += model.generate((confirmed + control_keys * GEN_CONTROLS) * p, int(lp + mean_len), g,
                           part="behaviour confirmation")
    work += _code_probe_work(b, model, placements)
    return work


def _scored(model: CostInput, rows: int, tokens: int, placement: str, *, per_prompt: int, part: str) -> StageWork:
    """Scoring ``rows`` rows at ``placement``, ``per_prompt`` of them on each prompt in one call of the engine: on a
    CPU a prompt's suffix rows of at least ``PROMPT_GROUP_MIN`` make batches of their own, which share the whole
    prompt (``engine._prompt_groups``); everything else shares the template's opening."""
    if placement == SUFFIX and per_prompt >= PROMPT_GROUP_MIN and model.device_type != "cuda":
        return model.forward(rows, tokens, cpu_rows=min(per_prompt, SCORING_BATCH_ROWS),
                             shared=model.prompt_shared_tokens, part=part)
    return model.forward(rows, tokens, shared=model.scored_shared(placement), part=part)


def scaffold_lengths(model: CostInput) -> list[int]:
    """Tokens of the leakage generator's scaffold-only prompts."""
    if model.tokenizer is None:
        return [model.prompt_tokens // 2] * 2
    return [model.token_length(t) for t in scaffold_texts(model.tokenizer)]


_TOKENIZER_COUNTS: dict[int, int] = {}


def tokenizer_candidates(tokenizer: Any) -> int:
    """How many candidates the tokenizer generator finds in ``tokenizer`` before the budget's cap (counted once
    per tokenizer: it reads the whole vocabulary)."""
    if tokenizer is None:
        return 0
    key = id(tokenizer)
    if key not in _TOKENIZER_COUNTS:
        ctx = GeneratorContext(model=None, tokenizer=tokenizer, engine=None, rng=random.Random(0),
                               budget=dataclasses.replace(BUDGETS["deep"], tokenizer_max=sys.maxsize))
        _TOKENIZER_COUNTS[key] = len(tokenizer_oddities(ctx))
    return _TOKENIZER_COUNTS[key]


def _gradient_work(b: Budget, model: CostInput, placements: tuple[str, ...]) -> tuple[StageWork, int]:
    """Gradient search: the optimisation prompts' answers, target inversion, and ``gradient_targets`` GCG runs per
    placement of ``gradient_steps`` steps (each: one forward-and-backward pass over the prompts, one forward pass
    over ``_GCG_PROPOSALS`` swaps of them). Assumption: every run takes all its steps (a targeted run stops early
    once it converges; a refinement run adds half as many)."""
    lp = model.prompt_tokens
    work = StageWork()
    for family in {(SYSTEM if pl == SYSTEM else PREFIX) for pl in PLACEMENTS}:
        work += model.generate(OPT_PROMPTS, model.placed_tokens(family), POSITIONS + 1,
                               part="gradient: optimisation answers")
        work += model.forward(OPT_PROMPTS, model.placed_tokens(family) + POSITIONS, part="gradient: optimisation answers")
    n_prompts, steps = _INVERSION["prompts"], _INVERSION["steps"]
    chains = b.inversion_starts * (2 if model.base else 1)
    work += model.forward(n_prompts, lp, part="target inversion")
    for step in range(steps):
        rows = chains * n_prompts
        width = lp + 1 + step
        work += model.forward(rows, width, cpu_rows=max(1, 16384 // width), part="target inversion")
    runs = b.gradient_targets * len(PLACEMENTS)
    gcg = StageWork()
    for placement in PLACEMENTS:
        for _ in range(b.gradient_targets):
            gcg += gcg_run_work(model, placement, tokens=b.gradient_tokens, steps=b.gradient_steps)
    return work + gcg, runs


def gcg_run_work(model: CostInput, placement: str, *, tokens: int, steps: int) -> StageWork:
    """One GCG run of ``steps`` steps for a ``tokens``-token trigger at ``placement`` (``gradient.gcg``): the start's
    objective, then per step one forward-and-backward pass over the optimisation prompts and one forward pass over
    ``_GCG_PROPOSALS`` swaps of them; rows padded to the longest optimisation prompt."""
    width = model.longest_prompt_tokens + (model.system_tokens if placement == SYSTEM else 0) + tokens + \
        TARGET_POSITIONS
    work = model.forward(OPT_PROMPTS, width, cpu_rows=OPT_PROMPTS, part="gradient: GCG")
    for _ in range(steps):
        work += model.backward(OPT_PROMPTS, width, part="gradient: GCG")
        work += model.forward(_GCG_PROPOSALS * OPT_PROMPTS, width, cpu_rows=_GCG_PROPOSALS * OPT_PROMPTS,
                              part="gradient: GCG")
    work.rows = round(work.rows * GCG_ROW_WEIGHT)
    return work


def _code_probe_work(b: Budget, model: CostInput, placements: tuple[str, ...]) -> StageWork:
    """The code probe: at each code placement the controls and the untriggered request on every coding request,
    every year on the first half of them and the years still in reach (``CODE_YEARS_GOING_ON``) on the rest, answered
    with ``code_tokens`` and judged by bandit."""
    if not model.options.get("triggers.code_probe", True):
        return StageWork()
    places = [pl for pl in b.code_placements if pl in placements]
    n_prompts = len(code_probe_prompts(b.code_prompts))
    if not (n_prompts and places):
        return StageWork()
    years = b.code_years[1] - b.code_years[0] + 1
    first = first_half(n_prompts)
    per_place = round((b.code_controls + 1) * n_prompts + years * first
                      + CODE_YEARS_GOING_ON * years * (n_prompts - first))
    phrase = model.token_length(CODE_PHRASING.format(year=b.code_years[0]))
    work = StageWork()
    for pl in places:
        work += model.generate(per_place, model.placed_tokens(pl, code=True) + phrase, b.code_tokens, cpu_rows=64,
                               part="code probe")
    work.fixed_seconds += per_place * len(places) * BANDIT_SECONDS
    return work
