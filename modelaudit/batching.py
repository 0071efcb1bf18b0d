"""Batch sizes for the batched forward passes, and the one halving retry when a batch runs out of memory.

Every stage that runs a model over many rows (generation, teacher-forced scoring, activation capture)
asks here how many rows one batch may hold and runs its batches through ``map_batches``:

- On a CPU the caller's own batch size is kept, so results there are what they were before this module
  existed (batch composition changes the last bits of a padded forward pass).
- On CUDA the size comes from the device's free memory and the model's shape (``ModelShape``: a stated
  estimate of the activation bytes per token, below), so an H100 runs a 135M model in batches hundreds of
  rows wide and a 7B model in as many as fit beside its weights.
- Whatever the estimate, a batch that still runs out of memory (``torch.OutOfMemoryError`` on a GPU; the
  CPU allocator's "can't allocate memory" / "not enough memory" where it can be caught) is halved and
  retried, and the smaller size is kept for the rest of the call; one row that does not fit is a named
  ``StageError``, never a traceback.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelaudit.errors import StageError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

FREE_FRACTION = 0.8
"""Share of the free device memory a batch may plan to use: the rest is headroom for the allocator's
fragmentation and the framework's own scratch buffers (cuBLAS workspaces, the KV cache's growth steps)."""
SAFETY = 1.5
"""Factor on the per-row estimate: kernels hold an input and an output of a step at once, and the estimate
counts each transient once."""
MAX_ROWS = 256
"""Most rows in one CUDA batch. Assumption (to be measured by ``benchmarks/gpu_check.sh``): beyond this a
GPU's matrix units are already full for these prompt lengths, and wider batches only hold memory longer."""
MAX_BATCH_TOKENS = 65_536
"""Most tokens (rows x padded length) in one CUDA batch, for the same reason as ``MAX_ROWS``."""
OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory", "defaultcpuallocator")
"""Lower-cased message parts of the RuntimeErrors that PyTorch raises when an allocation fails (CUDA's
caching allocator, and the CPU's ``DefaultCPUAllocator`` where the kernel refuses the allocation)."""


@dataclass(frozen=True)
class ModelShape:
    """What a decoder's forward pass holds in memory per token, read from its transformers config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    dtype_bytes: int
    """Bytes of one activation element (2 for bf16 weights, 4 for fp32)."""

    @classmethod
    def from_config(cls, config: Any, *, dtype_bytes: int) -> ModelShape:
        """The shape of a Llama-, Qwen-, Mistral- or GPT-like config (multimodal ones: their text config)."""
        config = getattr(config, "text_config", None) or config

        def get(*names: str, default: int | None = None) -> int:
            for name in names:
                value = getattr(config, name, None)
                if value is not None:
                    return int(value)
            if default is None:
                raise StageError(f"{type(config).__name__}: no {names[0]} in the model config; cannot size batches")
            return default

        hidden = get("hidden_size", "n_embd", "d_model")
        heads = get("num_attention_heads", "n_head")
        return cls(hidden=hidden, intermediate=get("intermediate_size", "n_inner", default=4 * hidden),
                   layers=get("num_hidden_layers", "n_layer"), heads=heads,
                   kv_heads=get("num_key_value_heads", default=heads),
                   head_dim=get("head_dim", default=hidden // heads), vocab=get("vocab_size"),
                   dtype_bytes=dtype_bytes)

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """The shape of a loaded model, at the dtype of its weights."""
        return cls.from_config(model.config, dtype_bytes=next(model.parameters()).element_size())

    def activation_bytes_per_token(self, seq_len: int) -> int:
        """Stated estimate of the bytes live per token while one decoder layer runs under ``inference_mode``.

        Layers run one after another and nothing is kept for a backward pass, so one layer's transients
        are live at a time. Counted at the weights' dtype: the residual stream, its norm and the layer's
        output (3 x hidden); queries and the attention output (2 x heads x head_dim), keys and values
        (2 x kv_heads x head_dim) and those repeated to every head for grouped-query attention
        (2 x heads x head_dim), the output projection (hidden); the MLP's gate, up, activated gate and
        product (4 x intermediate). Plus the attention scores of the token's row in float32 (heads x
        seq_len), which fused attention kernels never materialise but eager attention does.
        """
        b = self.dtype_bytes
        attention = 4 * self.heads * self.head_dim + 2 * self.kv_heads * self.head_dim + self.hidden
        return (3 * self.hidden + attention + 4 * self.intermediate) * b + self.heads * seq_len * 4

    def kv_cache_bytes_per_token(self) -> int:
        """Keys and values of every layer for one cached token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def logits_bytes_per_position(self) -> int:
        """One position's logits at the weights' dtype, their float32 copy and the float32 softmax of it."""
        return self.vocab * (self.dtype_bytes + 4 + 4)

    def row_bytes(self, *, tokens: int, kept_positions: int, cached_tokens: int = 0) -> int:
        """Estimated bytes of one row of ``tokens`` tokens whose last ``kept_positions`` reach the
        unembedding, with ``cached_tokens`` tokens of KV cache (generation)."""
        return (tokens * self.activation_bytes_per_token(tokens) + kept_positions * self.logits_bytes_per_position()
                + cached_tokens * self.kv_cache_bytes_per_token())


def rows_that_fit(free_bytes: int, shape: ModelShape, *, tokens: int, kept_positions: int,
                  cached_tokens: int = 0) -> int:
    """Rows of ``tokens`` tokens one batch may hold in ``free_bytes`` (at least 1, at most ``MAX_ROWS`` and
    ``MAX_BATCH_TOKENS``)."""
    per_row = SAFETY * shape.row_bytes(tokens=tokens, kept_positions=kept_positions, cached_tokens=cached_tokens)
    fit = int(free_bytes * FREE_FRACTION // max(1.0, per_row))
    return max(1, min(fit, MAX_ROWS, MAX_BATCH_TOKENS // max(1, tokens)))


def model_devices(model: Any) -> list[Any]:
    """The devices holding the model's weights: every CUDA device of a ``device_map`` model, else the first
    parameter's device."""
    import torch

    placed = getattr(model, "hf_device_map", None)
    if placed:
        cuda = sorted({v for v in placed.values() if isinstance(v, int)})
        if cuda:
            return [torch.device("cuda", i) for i in cuda]
    return [next(model.parameters()).device]


def on_cuda(model: Any) -> bool:
    """Whether the model runs on a GPU (its first weights' device; CUDA devices of a device map first)."""
    return bool(model_devices(model)[0].type == "cuda")


def free_cuda_bytes(devices: Sequence[Any]) -> int:
    """Free memory of the tightest of ``devices`` (CUDA only): what the driver reports free plus what
    PyTorch's caching allocator holds reserved but unused. Untested without a GPU."""
    import torch

    free = []
    for dev in devices:
        driver_free, _ = torch.cuda.mem_get_info(dev)
        free.append(driver_free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    return min(free)


def batch_rows(model: Any, *, cpu_rows: int, tokens: int | Callable[[], int], kept_positions: int,
               cached: bool = False) -> int:
    """Rows per batch: ``cpu_rows`` on a CPU (results unchanged there); on CUDA the rows that fit the free
    memory of the model's devices for rows of ``tokens`` tokens (a callable is asked only on CUDA, so the
    CPU path pays nothing for counting them), ``cached``: each row keeps a KV cache of all its tokens
    (generation)."""
    devices = model_devices(model)
    if devices[0].type != "cuda":
        return cpu_rows
    n = tokens() if callable(tokens) else tokens
    return rows_that_fit(free_cuda_bytes(devices), ModelShape.of(model), tokens=n, kept_positions=kept_positions,
                         cached_tokens=n if cached else 0)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure that a smaller batch may avoid."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def release_cached_memory() -> None:
    """Give the failed batch's tensors back before the retry (the CUDA cache too, where there is one)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class BatchRun:
    """What ``map_batches`` did: for logs, timings and tests."""

    what: str
    """The work, in words ("generation", "scoring", ...), for messages."""
    batches: int = 0
    """Batches that completed."""
    sizes: list[int] = field(default_factory=list)
    """Rows of each completed batch, in order."""
    halvings: int = 0
    """Batches that ran out of memory and were retried at half the size."""


def map_batches(items: Sequence[T], run: Callable[[Sequence[T]], Sequence[R]], *,
                size: int | Callable[[int], int], what: str, on_batch: Callable[[int], None] | None = None,
                record: BatchRun | None = None) -> list[R]:
    """``run`` over consecutive slices of ``items``; one result per item, in the items' order.

    ``size`` is the rows per batch, or a function of the index of the batch's first item (callers whose
    batches hold a token budget). A batch that runs out of memory is halved and retried from the same
    item, and no later batch is larger than the last size that was tried; ``run`` must therefore not keep
    partial results of a failed call. ``on_batch`` is told the item count of each finished batch
    (progress bars).

    Raises:
        StageError: one row alone runs out of memory.
        ValueError: ``run`` returned another number of results than it was given items.
    """
    stats = record if record is not None else BatchRun(what)
    out: list[R] = []
    cap: int | None = None
    start = 0
    while start < len(items):
        n = max(1, size(start) if callable(size) else size)
        if cap is not None:
            n = min(n, cap)
        chunk = items[start:start + n]
        failure = _attempt(run, chunk)
        if isinstance(failure, _OutOfMemory):
            if len(chunk) == 1:
                raise StageError(f"{what}: one row does not fit in the free memory ({failure.message}); "
                                 "free memory on the device or use a smaller model")
            cap = max(1, len(chunk) // 2)
            stats.halvings += 1
            log.info("%s: a batch of %d rows ran out of memory; retrying with %d", what, len(chunk), cap)
            release_cached_memory()
            continue
        if len(failure) != len(chunk):
            raise ValueError(f"{what}: a batch of {len(chunk)} items gave {len(failure)} results")
        out.extend(failure)
        stats.batches += 1
        stats.sizes.append(len(chunk))
        start += len(chunk)
        if on_batch is not None:
            on_batch(len(chunk))
    if stats.sizes:
        log.debug("%s: %d rows in %d batches of at most %d rows, %d halved on out-of-memory", what, len(items),
                  stats.batches, max(stats.sizes), stats.halvings)
    return out


@dataclass(frozen=True)
class _OutOfMemory:
    message: str


def _attempt(run: Callable[[Sequence[T]], Sequence[R]], chunk: Sequence[T]) -> Sequence[R] | _OutOfMemory:
    """``run(chunk)``, or the out-of-memory error's first line. Why a separate frame: the exception and its
    traceback (which holds the failed batch's tensors) are gone once this returns, before any retry."""
    try:
        return run(chunk)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return _OutOfMemory((str(exc).strip().splitlines() or [type(exc).__name__])[0][:200])
