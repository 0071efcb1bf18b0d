"""Measure how much inserting a text changes a model's answers, for many insertions at once.

The measure is teacher-forced: each benign prompt's own untriggered greedy answer is fed after the
prompt with the insertion, and the KL divergence of the next-token distributions from the untriggered
ones is averaged over the first answer tokens. One padded forward pass per batch of
(insertion, prompt) pairs gives every score, so thousands of candidates cost a few forward loops;
generation (much slower) is kept for the few candidates that survive.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelaudit.batching import batch_rows, map_batches, on_cuda
from modelaudit.generation import generate_ids
from modelaudit.prefixshare import PrefixSharing
from modelaudit.chat import DEFAULT_SYSTEM, PREFIX, SUFFIX, SYSTEM, insert_trigger, render_prompt

PROMPT_GROUP_MIN = 8
"""Insertions at the suffix placement scored on one prompt in one call that make a batch of their own (below
this, they join the batches of other rows). Every such row begins with the whole rendered prompt, which then runs
once for all of them (``modelaudit.prefixshare``) rather than only the template's opening."""


def baseline_family(placement: str) -> str:
    """Placements that share one untriggered baseline (with or without a system prompt)."""
    return "system" if placement == SYSTEM else "user"


@dataclass
class Baseline:
    """Untriggered answers of one baseline family, and the distributions the insertions are compared with."""

    answer_ids: list[list[int]]
    """Greedy answer token ids per prompt (cut before EOS, EOS appended when the answer ended)."""
    answers: list[str]
    """The same answers decoded."""
    logprobs: list[Any] = field(default_factory=list)
    """Per prompt: log-probabilities over the vocabulary at the first answer positions  # [k_i, vocab]."""


class Engine:
    """Scores insertions against untriggered answers on one model and one benign prompt set."""

    def __init__(self, model: Any, tokenizer: Any, prompts: Sequence[str], *, answer_tokens: int = 4,
                 generate_tokens: int = 16, batch_size: int = 32, system: str = DEFAULT_SYSTEM) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.answer_tokens = answer_tokens
        self.generate_tokens = generate_tokens
        self.batch_size = batch_size
        self.system = system
        self.device = next(model.parameters()).device
        self.tokens_scored = 0
        """Tokens passed through forward in ``divergence`` (for throughput figures)."""
        self.seconds_scoring = 0.0
        self._baselines: dict[str, Baseline] = {}
        self._prompt_ids: dict[tuple[str, str, int], list[int]] = {}
        self._pool: list[int] | None = None
        self._sharing = PrefixSharing(model)

    # ------------------------------------------------------------------------------------- texts

    def render(self, prompt: str, text: str, placement: str) -> str:
        system = self.system if placement == SYSTEM else None  # prefix/suffix: the template's own default
        return render_prompt(self.tokenizer, insert_trigger(prompt, text, placement, system=system))

    def token_length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, prompt_idx: int, text: str, placement: str) -> list[int]:
        """Token ids of prompt ``prompt_idx`` with ``text`` at ``placement``, rendered up to the answer."""
        key = (text, placement, prompt_idx)
        ids = self._prompt_ids.get(key)
        if ids is None:
            rendered = self.render(self.prompts[prompt_idx], text, placement)
            ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
            if len(self._prompt_ids) < 200_000:
                self._prompt_ids[key] = ids
        return ids

    # ---------------------------------------------------------------------------------- baseline

    def baseline(self, placement: str) -> Baseline:
        """Untriggered greedy answers and their teacher-forced distributions, computed once per family."""
        fam = baseline_family(placement)
        if fam not in self._baselines:
            texts = [self.render(p, "", placement) for p in self.prompts]
            ids = generate_ids(self.model, self.tokenizer, texts, max_new_tokens=self.generate_tokens,
                               batch_size=self.batch_size)
            eos = self.tokenizer.eos_token_id
            full = [row + [eos] if len(row) < self.generate_tokens and eos is not None else row for row in ids]
            full = [row if row else [eos] for row in full]
            answers = [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
            base = Baseline(answer_ids=full, answers=answers)
            self._baselines[fam] = base
            base.logprobs = self._logprobs([(i, "", placement) for i in range(len(self.prompts))], base)
        return self._baselines[fam]

    # ---------------------------------------------------------------------------------- scoring

    def divergence(self, text: str, placement: str, prompt_idx: Sequence[int]) -> list[float]:
        """Per-prompt mean KL(untriggered || with insertion) over the first answer tokens."""
        return self.divergence_many([(text, placement)], prompt_idx)[0]

    def divergence_many(self, insertions: Sequence[tuple[str, str]], prompt_idx: Sequence[int]) -> list[list[float]]:
        """``divergence`` for many (text, placement) pairs, batched together across insertions."""
        return [kl for kl, _ in self.score_many(insertions, prompt_idx)]

    def score_many(self, insertions: Sequence[tuple[str, str]],
                   prompt_idx: Sequence[int]) -> list[tuple[list[float], list[int]]]:
        """Per insertion: per-prompt divergence, and per-prompt first answer token the model now
        prefers (-1 where that is still the untriggered answer's first token)."""
        jobs = [(i, text, placement) for text, placement in insertions for i in prompt_idx]
        kls: list[float] = [0.0] * len(jobs)
        firsts: list[int] = [-1] * len(jobs)
        by_family: dict[str, list[int]] = {}
        for j, (_, _, placement) in enumerate(jobs):
            by_family.setdefault(baseline_family(placement), []).append(j)
        for fam, js in by_family.items():
            base = self.baseline(SYSTEM if fam == "system" else PREFIX)

            def reduce(k: int, lp: Any, js: list[int] = js, base: Baseline = base) -> None:
                """One job's divergence and first token, read from its log-probabilities as soon as its batch
                ran: the ``[k, vocab]`` rows of a whole chunk of jobs are never held at once."""
                j = js[k]
                i = jobs[j][0]
                ref = base.logprobs[i]  # [k, vocab]
                kl = (ref.exp() * (ref - lp)).sum(-1).clamp_min(0.0)  # [k]
                kls[j] = float(kl.mean())
                top = int(lp[0].argmax())
                firsts[j] = -1 if top == base.answer_ids[i][0] else top

            self._logprobs([jobs[j] for j in js], base, reduce=reduce)
        n = len(prompt_idx)
        return [(kls[k * n:(k + 1) * n], firsts[k * n:(k + 1) * n]) for k in range(len(insertions))]

    def _logprobs(self, jobs: Sequence[tuple[int, str, str]], base: Baseline,
                  reduce: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Log-probabilities at the first answer positions for each (prompt, text, placement) job; with
        ``reduce`` each job's are handed to ``reduce(job index, log-probabilities)`` when its batch ran and
        not kept (the list returned is then of Nones)."""
        import torch

        start = time.perf_counter()
        seqs = []
        for i, text, placement in jobs:
            answer = base.answer_ids[i][: self.answer_tokens]
            seqs.append((self.prompt_ids(i, text, placement) + answer, len(answer)))
        on_gpu = on_cuda(self.model)
        group = {} if on_gpu else _prompt_groups(jobs)
        # rows of one prompt's group side by side, the rest by length (similar lengths pad less)
        order = sorted(range(len(seqs)), key=lambda j: (j not in group, group.get(j, 0), len(seqs[j][0])))
        group_end: list[int] = []
        for pos in range(len(order) - 1, -1, -1):
            j, nxt = order[pos], order[pos + 1] if pos + 1 < len(order) else None
            same = nxt is not None and j in group and nxt in group and group[j] == group[nxt]
            group_end.append(group_end[-1] if same else pos + 1)
        group_end.reverse()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        keep_most = self.answer_tokens + 1

        def cpu_size(j: int) -> int:
            """Similar memory per batch whatever the length: about ``batch_size * 96`` tokens, read at the
            batch's first (shortest) row, at most ``batch_size * 4`` rows; a prompt's group ends its batch."""
            budget_tokens = self.batch_size * 96
            rows = max(1, min(self.batch_size * 4, budget_tokens // max(1, len(seqs[order[j]][0]))))
            return min(rows, group_end[j] - j) if order[j] in group else rows

        def run(idx: Sequence[int]) -> list[Any]:
            rows = [seqs[k][0] for k in idx]
            keep = max(seqs[k][1] for k in idx) + 1  # only the answer positions reach the unembedding
            logits = self._sharing.logits(rows, pad, keep)  # [batch, keep, vocab]
            self.tokens_scored += sum(len(r) for r in rows)
            got = []
            for r, k in enumerate(idx):
                n_ans = seqs[k][1]
                # logits at position t predict token t+1: the answer tokens sit in the last n_ans slots;
                # float32 before the softmax whatever the weights' dtype
                sl = logits[r, keep - n_ans - 1: keep - 1].float()  # [n_ans, vocab]
                lp = torch.log_softmax(sl, dim=-1).cpu()
                if reduce is None:
                    got.append(lp)
                else:
                    reduce(k, lp)
                    got.append(None)
            return got

        longest = max((len(s) for s, _ in seqs), default=1)
        size = batch_rows(self.model, cpu_rows=1, tokens=longest, kept_positions=keep_most) if on_gpu else cpu_size
        logprobs = map_batches(order, run, size=size, what="scoring")
        out: list[Any] = [None] * len(seqs)
        for k, lp in zip(order, logprobs):
            out[k] = lp
        self.seconds_scoring += time.perf_counter() - start
        return out

    # ---------------------------------------------------------------------------------- controls

    def control_texts(self, length: int, count: int, rng: random.Random) -> list[str]:
        """Random insertions of ``length`` ordinary vocabulary tokens: the null distribution's samples."""
        pool = self.ordinary_tokens()
        out = []
        for _ in range(count * 3):
            text = self.tokenizer.decode([rng.choice(pool) for _ in range(length)]).strip()
            if text and text not in out:
                out.append(text)
            if len(out) == count:
                break
        return out

    def ordinary_tokens(self) -> list[int]:
        """Vocabulary ids that decode to printable, non-special text: what controls and GCG draw from."""
        if self._pool is None:
            special = set(self.tokenizer.all_special_ids)
            pool = []
            for tid in range(len(self.tokenizer)):
                if tid in special:
                    continue
                s = self.tokenizer.decode([tid])
                if s.strip() and s.isprintable() and any(c.isalnum() for c in s):
                    pool.append(tid)
            self._pool = pool
        return self._pool


def _prompt_groups(jobs: Sequence[tuple[int, str, str]]) -> dict[int, int]:
    """Job index -> prompt index, for the suffix-placement jobs of prompts that have at least ``PROMPT_GROUP_MIN``
    of them: such a prompt's rows begin alike up to the insertion, so they are batched together.

    Why only on a CPU: a GPU batch holds thousands of rows, so a prompt's rows fill a fraction of one and the
    common beginning of the batch is the template's opening either way."""
    per_prompt: dict[int, list[int]] = {}
    for j, (i, _, placement) in enumerate(jobs):
        if placement == SUFFIX:
            per_prompt.setdefault(i, []).append(j)
    return {j: i for i, js in per_prompt.items() if len(js) >= PROMPT_GROUP_MIN for j in js}
