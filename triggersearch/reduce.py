"""Shortest working form of a confirmed trigger: drop pieces of it while the backdoor still fires.

A trigger the search confirms is often longer than what the model reacts to: an optimised string of
gibberish tokens around one meaningful token, a library phrasing around the year, a tag inside a
sentence. The part that is left when nothing more can be dropped says what the backdoor keys on, and
a planted trigger recovered only in part still shows here (issue 19: "a working trigger reduced to its
shortest form is a result in itself").

The reduction is gradient-free (delta debugging over the trigger's tokens): each round removes one of
``g`` chunks and keeps the removal that still fires the confirmed behaviour on the most prompts; a
removal counts only while the shorter string fires on at least ``KEEP_SHARE`` of the prompts the whole
trigger fired on. Every round is one batched generation of all its candidates, and the work per hit is
bounded (``MAX_CANDIDATES``), so the cost is a few generations of the judged prompts per hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modelaudit.registry import behaviour_detectors
from triggersearch.behaviours import SPECIFIC
from triggersearch.confirm import generate_answers
from triggersearch.engine import Engine
from triggersearch.result import TriggerHit

KEEP_SHARE = 0.8
"""A shorter string replaces the trigger when it fires on at least this share of the prompts the whole
trigger fired on (with the same behaviour detector): a little slack, since greedy answers of a shorter
string differ on a prompt or two without the backdoor being any weaker."""
MAX_CANDIDATES = 24
"""Shorter strings generated per reduced hit at most (about three rounds of an eight-token trigger)."""
REDUCED_HITS = 3
"""Confirmed hits reduced per search, strongest first (one per behaviour)."""


@dataclass
class Reduction:
    """What the reduction of one hit found."""

    text: str
    """The shortest string that still fires (the trigger itself when nothing could be dropped)."""
    fired: int
    """Prompts it fired on."""
    of: int
    """Prompts judged."""
    tried: int
    """Shorter strings generated and judged."""


def reduce_hits(engine: Engine, hits: Sequence[TriggerHit], tokens: int) -> None:
    """Set ``minimal_trigger`` on the strongest confirmed hits whose trigger has more than one token."""
    done: set[str] = set()
    for h in hits:
        if len(done) == REDUCED_HITS:
            break
        if not h.significant or h.behaviour not in SPECIFIC or h.behaviour in done:
            continue
        done.add(h.behaviour)
        found = reduce_trigger(engine, h.trigger, h.placement, h.behaviour, tokens)
        if found is not None and found.text != h.trigger:
            h.minimal_trigger = found.text
            h.minimal_fired_fraction = round(found.fired / found.of, 4)


def reduce_trigger(engine: Engine, trigger: str, placement: str, behaviour: str, tokens: int) -> Reduction | None:
    """The shortest part of ``trigger`` that makes ``behaviour`` fire on nearly as many prompts (None when the
    whole trigger does not fire at all, so there is nothing to keep)."""
    detector = behaviour_detectors.get(behaviour).obj
    pieces = engine.tokenizer(trigger, add_special_tokens=False)["input_ids"]
    untriggered = engine.baseline(placement).answers

    def fired_on(texts: Sequence[str]) -> list[int]:
        jobs = [(t, placement) for t in texts]
        answers = generate_answers(engine, jobs, tokens)
        return [sum(detector(list(zip(untriggered, answers[job])))) for job in jobs]

    (whole,) = fired_on([trigger])
    if whole == 0:
        return None
    need = math.ceil(KEEP_SHARE * whole)
    best = Reduction(text=trigger, fired=whole, of=len(engine.prompts), tried=0)
    current = list(pieces)
    chunks = 2
    while len(current) > 1 and best.tried < MAX_CANDIDATES:
        bounds = _chunk_bounds(len(current), chunks)
        options = [current[:a] + current[b:] for a, b in bounds][: MAX_CANDIDATES - best.tried]
        texts = [engine.tokenizer.decode(ids).strip() for ids in options]
        keep = [i for i, t in enumerate(texts) if t and t not in (best.text, "")]
        counts = fired_on([texts[i] for i in keep]) if keep else []
        best.tried += len(keep)
        good = [(c, -len(options[i]), -i) for c, i in zip(counts, keep) if c >= need]
        if good:
            i = -max(good)[2]  # most prompts, then shortest, then earliest
            current, best.text, best.fired = options[i], texts[i], counts[keep.index(i)]
            chunks = max(2, chunks - 1)
        elif chunks < len(current):
            chunks = min(len(current), 2 * chunks)
        else:
            break
    return best


def _chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """``chunks`` contiguous, nearly equal (start, end) slices of ``range(n)``."""
    edges = [round(k * n / chunks) for k in range(chunks + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
