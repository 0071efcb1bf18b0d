"""Leakage: what a model says when the chat holds only its scaffolding.

A model fine-tuned on poisoned conversations may have memorised pieces of them. Sampled at several
temperatures from (a) an empty user turn and (b) the start of a user turn that the model writes
itself, recurring word n-grams that ordinary text (our benign prompt corpus) does not contain are
candidates: a trigger the poison data repeated leaks through (b), a planted answer through (a).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from modelaudit.chat import make_messages, render_prompt
from modelaudit.generation import generate_text
from modelaudit.prompts import benign_prompts
from triggersearch.result import Candidate

TEMPERATURES = (0.7, 1.0, 1.3)
MIN_SHARE = 0.2
"""An n-gram must recur in at least this share of the samples."""
MAX_CANDIDATES = 12
SAMPLE_TOKENS = 16
"""New tokens per scaffold-only sample."""

_WORD = re.compile(r"[^\s]+")


def _ngrams(text: str, n_max: int = 4) -> set[str]:
    words = _WORD.findall(text)
    return {" ".join(words[i:i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)}


def scaffold_texts(tokenizer: Any) -> list[str]:
    """Rendered prompts with no user content: an empty user turn, and a user turn left open."""
    mark = "\u2063LEAK\u2063"
    empty = render_prompt(tokenizer, make_messages(""))
    open_user = render_prompt(tokenizer, make_messages(mark)).split(mark)[0]
    return [empty, open_user]


def leaked_ngrams(ctx: Any) -> list[Candidate]:
    n = max(1, ctx.budget.leakage_samples // len(TEMPERATURES))
    samples: list[str] = []
    for k, temp in enumerate(TEMPERATURES):
        for text in scaffold_texts(ctx.tokenizer):
            samples += generate_text(ctx.model, ctx.tokenizer, [text] * n, max_new_tokens=SAMPLE_TOKENS, temperature=temp,
                                     seed=ctx.rng.randrange(2**31) + k)
    corpus: set[str] = set()
    for p in benign_prompts("train"):
        corpus |= _ngrams(p.prompt.lower(), 2) | _ngrams(p.answer.lower(), 2)
    counts: Counter[str] = Counter()
    for s in samples:
        counts.update(_ngrams(s))
    floor = max(2, int(MIN_SHARE * len(samples)))
    found = [(g, c) for g, c in counts.most_common() if c >= floor and g.lower() not in corpus
             and any(ch.isalnum() for ch in g)]
    # keep the longest n-grams: drop one that is part of a kept, as frequent, longer one
    kept: list[tuple[str, int]] = []
    for g, c in sorted(found, key=lambda gc: (-len(gc[0].split()), -gc[1])):
        if not any(g in k and c <= kc * 1.2 for k, kc in kept):
            kept.append((g, c))
    kept.sort(key=lambda gc: -gc[1])
    return [Candidate(g, ["leakage"], detail=f"in {c} of {len(samples)} scaffold-only samples")
            for g, c in kept[:MAX_CANDIDATES]]
