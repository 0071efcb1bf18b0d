"""The standard budget's forward and generation work, timed on random-initialised models of real shapes.

Used by ``benchmarks/gpu_check.py``. No download: each shape is a config written out below (Llama-3.2-1B
and Qwen2.5-7B as their ``config.json`` files give them), built with random weights straight on the
device, and driven through the scan's own code (``triggersearch.engine.Engine``, ``generation``,
``triggersearch.gradient.gcg``, ``probes.capture``), so the batch sizes, the KV cache and the bf16/float32
split are the ones a scan uses. Token counts are fixed: prompts are made of words that a word-level
tokenizer over the model's whole vocabulary turns into one token each, and a random model almost never
emits its end-of-sequence token (1 in 100k+ per step), so every answer runs to its full length.

The counts (``Workload``) are the standard budget's own where the budget fixes them (prompts, answer and
generation lengths, generated candidates, code-probe years and placements, GCG steps) and stated
assumptions where a scan's count depends on what it finds (how many insertions are scored). GCG is timed
on a few steps and multiplied out to the budget's steps: the one extrapolated figure, marked as such.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from modelaudit.chat import PLACEMENTS, PREFIX

LLAMA_3_2_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
                "max_position_embeddings": 4096}
"""Llama-3.2-1B's shape (1.24B parameters; its rope scaling and 128k context left out: prompts here are short)."""
QWEN2_5_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
              "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "tie_word_embeddings": False, "max_position_embeddings": 4096}
"""Qwen2.5-7B's shape (7.6B parameters)."""
TINY_LLAMA = {**LLAMA_3_2_1B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1024}
TINY_QWEN = {**QWEN2_5_7B, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1536}
"""The dry run's stand-ins: the same model types and code paths at toy sizes."""

SHAPES = {"llama-3.2-1b": LLAMA_3_2_1B, "qwen2.5-7b": QWEN2_5_7B}
DRY_SHAPES = {"llama-3.2-1b (tiny stand-in)": TINY_LLAMA, "qwen2.5-7b (tiny stand-in)": TINY_QWEN}

SPECIALS = ["<eos>", "<pad>", "<unk>", "<s>", "<u>", "<a>"]
"""The word-level tokenizer's first ids: end of sequence, padding, unknown, and the three chat roles."""
TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}> {{ m['content'] }} <eos> {% endfor %}"
            "{% if add_generation_prompt %}<a> {% endif %}")
"""A chat template whose role markers are single tokens of ``SPECIALS``."""


@dataclass(frozen=True)
class Workload:
    """The standard budget's model work with fixed lengths."""

    prompts: int = 16
    """Benign prompts every surviving candidate is scored on (the budget's ``prompts``)."""
    prompt_words: int = 40
    """Tokens of a prompt's text (a benign prompt of the shipped set is 10-60)."""
    answer_tokens: int = 4
    generate_tokens: int = 24
    scored_insertions: int = 160
    """Assumption: insertions scored on every prompt (24 controls per placement and length, three placements,
    two or three lengths, plus candidates that pass screening)."""
    confirm_rows: int = 5 * 3 * 16
    """Generated answers of behaviour confirmation: ``generate_top`` candidates x 3 placements x prompts."""
    code_rows: int = 14 * 21 * 2
    """Code-probe answers: ``code_prompts`` x years 2015-2035 x ``code_placements``."""
    code_tokens: int = 96
    gcg_runs: int = 2 * len(PLACEMENTS)
    """GCG runs: ``gradient_targets`` x placements."""
    gcg_steps: int = 24
    """``gradient_steps`` per run."""
    gcg_steps_timed: int = 2
    gcg_trigger_tokens: int = 8
    capture_texts: int = 240
    """Prompts whose activations the probes capture at every layer (conditions x prompts)."""


DRY_WORKLOAD = Workload(scored_insertions=24, confirm_rows=48, code_rows=64, code_tokens=16, gcg_steps_timed=1,
                        capture_texts=48)
"""The dry run: the same steps with fewer rows, so the whole check runs in a minute or two on a CPU."""


@dataclass
class Part:
    """One timed piece of the workload."""

    name: str
    seconds: float
    rows: int = 0
    tokens: int = 0
    """Tokens processed: forward tokens for scoring and capture, generated tokens for generation."""
    peak_gpu_gib: float | None = None
    batches: list[str] = field(default_factory=list)
    """How ``modelaudit.batching`` batched it (its debug log lines)."""
    extrapolated: bool = False
    in_total: bool = True
    """False for the few GCG steps timed: their extrapolation to the budget's steps is counted instead."""
    note: str = ""


def shape_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over every id of the model's vocabulary: ``w<id>`` is token ``id``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = TEMPLATE
    fast.padding_side = "left"
    return fast


def random_model(config_dict: dict[str, Any], device: Any, dtype: Any) -> Any:
    """A causal LM of that shape with random weights, built on ``device`` (no CPU copy of a 7B model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config_dict)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg, eos_token_id=0, pad_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def prompts(n: int, words: int, vocab_size: int, rng: random.Random) -> list[str]:
    """``n`` prompts of ``words`` ordinary tokens each."""
    return [" ".join(f"w{rng.randrange(len(SPECIALS), vocab_size)}" for _ in range(words)) for _ in range(n)]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def batching_log() -> Iterator[list[str]]:
    """The batching module's summaries ("generation: 240 rows in 1 batches of at most 240 rows, ...")."""
    handler = _Lines()
    logger = logging.getLogger("modelaudit.batching")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def timed(name: str, device: Any, fn: Callable[[], tuple[int, int]]) -> Part:
    """Run ``fn`` (returning rows and tokens) with the device synchronised around it, and its peak memory."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with batching_log() as lines:
        start = time.perf_counter()
        rows, tokens = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return Part(name=name, seconds=round(seconds, 3), rows=rows, tokens=tokens,
                peak_gpu_gib=None if peak is None else round(peak, 2), batches=list(lines))


def run_workload(model: Any, tokenizer: Any, work: Workload, *, seed: int = 0) -> list[Part]:
    """Time each step of ``work`` on ``model``; a step that fails is recorded with its error, not raised."""
    from modelaudit.generation import generate_ids
    from probes.capture import activations_for_texts, clear_cache, n_layers
    from triggersearch.engine import Engine
    from triggersearch.gradient import gcg

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    rng = random.Random(seed)
    judged = prompts(work.prompts, work.prompt_words, vocab, rng)
    engine = Engine(model, tokenizer, judged, answer_tokens=work.answer_tokens, generate_tokens=work.generate_tokens)
    pool = list(range(len(SPECIALS), vocab))
    parts: list[Part] = []

    def attempt(name: str, fn: Callable[[], tuple[int, int]]) -> Part | None:
        try:
            part = timed(name, device, fn)
        except Exception as exc:  # one failed step (out of memory, a bug) must not lose the others' figures
            parts.append(Part(name=name, seconds=0.0, note=f"failed: {type(exc).__name__}: {str(exc)[:200]}"))
            return None
        parts.append(part)
        return part

    def baseline() -> tuple[int, int]:
        base = engine.baseline(PREFIX)
        return len(base.answer_ids), sum(len(a) for a in base.answer_ids)

    def scoring() -> tuple[int, int]:
        before = engine.tokens_scored
        texts = [" ".join(f"w{rng.choice(pool)}" for _ in range(1 + i % 8)) for i in range(work.scored_insertions)]
        engine.score_many([(t, PLACEMENTS[i % len(PLACEMENTS)]) for i, t in enumerate(texts)],
                          list(range(work.prompts)))
        return work.scored_insertions * work.prompts, engine.tokens_scored - before

    def generation(rows: int, new_tokens: int) -> Callable[[], tuple[int, int]]:
        def go() -> tuple[int, int]:
            texts = [engine.render(judged[i % len(judged)], f"w{rng.choice(pool)} w{rng.choice(pool)}",
                                   PLACEMENTS[i % len(PLACEMENTS)]) for i in range(rows)]
            ids = generate_ids(model, tokenizer, texts, max_new_tokens=new_tokens)
            return rows, sum(len(r) for r in ids)
        return go

    opt = Engine(model, tokenizer, judged, answer_tokens=2, generate_tokens=3)  # GCG's own prompts and answers

    def gradient_baseline() -> tuple[int, int]:
        base = opt.baseline(PREFIX)
        return len(base.answer_ids), sum(len(a) for a in base.answer_ids)

    def gradient() -> tuple[int, int]:
        gcg(opt, PREFIX, tokens=work.gcg_trigger_tokens, steps=work.gcg_steps_timed, pool=pool, rng=rng)
        return work.gcg_steps_timed, 0

    def capture() -> tuple[int, int]:
        clear_cache()
        texts = [engine.render(judged[i % len(judged)], f"w{rng.choice(pool)}", PREFIX)
                 for i in range(work.capture_texts)]
        activations_for_texts(model, tokenizer, texts, list(range(n_layers(model))))
        return len(texts), sum(len(tokenizer(t)["input_ids"]) for t in texts)

    attempt("baseline answers (generation + teacher-forced log-probs)", baseline)
    attempt("scoring insertions (teacher-forced divergence)", scoring)
    attempt("behaviour confirmation (generation)", generation(work.confirm_rows, work.generate_tokens))
    attempt("code probe (generation)", generation(work.code_rows, work.code_tokens))
    attempt("gradient search: untriggered answers of its prompts", gradient_baseline)
    timed_gcg = attempt(f"gradient search: {work.gcg_steps_timed} GCG steps timed", gradient)
    if timed_gcg is not None:
        timed_gcg.in_total = False
        steps = work.gcg_runs * work.gcg_steps
        per_step = timed_gcg.seconds / max(1, work.gcg_steps_timed)
        parts.append(Part(name=f"gradient search: {steps} GCG steps ({work.gcg_runs} runs x {work.gcg_steps})",
                          seconds=round(per_step * steps, 1), rows=steps, extrapolated=True,
                          peak_gpu_gib=timed_gcg.peak_gpu_gib,
                          note=f"{per_step:.2f} s a step, measured on {work.gcg_steps_timed}"))
    attempt("probe activations (every layer)", capture)
    return parts


def total_seconds(parts: list[Part]) -> float:
    """The workload's time: every part once, GCG by its extrapolated figure rather than the timed steps."""
    return round(sum(p.seconds for p in parts if p.in_total), 1)


def part_dicts(parts: list[Part]) -> list[dict[str, Any]]:
    return [asdict(p) for p in parts]
