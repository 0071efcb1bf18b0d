"""Forward passes over rows that begin alike: the shared beginning runs once per batch and its keys and values
are reused by every row.

Why: the trigger search scores thousands of chat prompts rendered from one template, so the rows of a batch begin
with the same tokens (the template's opening, and the model's default system prompt where the insertion comes
later). On SmolLM2 that is 24 of a row's ~48 tokens at the prefix and suffix placements; running them once cut a
scoring batch from 18 s to 10 s on one CPU core, with the same log-probabilities to 1e-4.

Only for models whose cache is a plain key/value cache of full attention at every layer (no sliding window, no
recurrent state). The first batch of each model is also run the plain way and compared; a model whose results
differ (an architecture that treats positions or masks its own way) is scored the plain way from then on.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

from modelaudit.generation import autocast, left_pad

log = logging.getLogger(__name__)

MIN_SHARED = 4
"""Fewer shared tokens than this are not worth the extra pass over them."""
CHECK_TOLERANCE = 1e-3
"""Largest difference of log-probabilities (nats) between the shared and the plain pass that the first-batch
check accepts in float32; measured 1e-4 on SmolLM2 (the order of additions differs)."""
HALF_CHECK_TOLERANCE = 5e-2
"""The same under bf16 autocast, whose rounding is coarser."""


def shared_length(rows: Sequence[Sequence[int]], keep: int) -> int:
    """Leading tokens every row has in common, leaving each row at least ``keep`` tokens of its own (the
    positions whose logits are read must be computed in the row's own pass)."""
    if not rows:
        return 0
    limit = min(len(r) for r in rows) - keep
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


class PrefixSharing:
    """Logits at the last ``keep`` positions of token id rows, with their shared beginning run once per batch."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.enabled: bool | None = None
        """None until the first shared batch was checked against the plain pass; then whether sharing is used."""

    def logits(self, rows: Sequence[Sequence[int]], pad: int, keep: int) -> Any:
        """``[len(rows), keep, vocab]`` logits of the rows' last ``keep`` positions (left-padded batch)."""
        shared = shared_length(rows, keep) if self.enabled is not False else 0
        if shared < MIN_SHARED:
            return self._plain(rows, pad, keep)
        try:
            got = self._shared(rows, pad, keep, shared)
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            if self.enabled:  # it worked on this model before: a real error, not an unsupported architecture
                raise
            log.debug("shared-prefix scoring failed on %s (%s); scoring the plain way", type(self.model).__name__, exc)
            got = None
        if got is None:  # not a plain full-attention cache: never shared on this model
            self.enabled = False
            return self._plain(rows, pad, keep)
        if self.enabled is None:
            plain = self._plain(rows, pad, keep)
            self.enabled = self._agrees(got, plain)
            if not self.enabled:
                log.debug("shared-prefix scoring disagrees with the plain pass on %s; scoring the plain way",
                          type(self.model).__name__)
                return plain
        return got

    def _plain(self, rows: Sequence[Sequence[int]], pad: int, keep: int) -> Any:
        import torch

        ids, mask, pos = left_pad(rows, pad)
        with torch.inference_mode(), autocast(self.device):
            return self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                              position_ids=pos.to(self.device), logits_to_keep=keep).logits

    def _shared(self, rows: Sequence[Sequence[int]], pad: int, keep: int, shared: int) -> Any:
        """The batch with its first ``shared`` tokens run once; None where the model's cache is not a plain
        full-attention key/value cache."""
        import torch

        with torch.inference_mode(), autocast(self.device):
            head = torch.tensor([list(rows[0][:shared])], device=self.device)
            out = self.model(input_ids=head, use_cache=True)
            cache = out["cache"] if "cache" in out else out.past_key_values  # the newer name first: no warning
            if not _plain_cache(cache):
                return None
            cache.batch_repeat_interleave(len(rows))
            ids, mask, pos = left_pad([r[shared:] for r in rows], pad)
            # the rows' own tokens follow the shared ones: padding sits between them, masked, and positions go on
            full_mask = torch.cat([torch.ones(len(rows), shared, dtype=mask.dtype), mask], dim=1)
            return self.model(input_ids=ids.to(self.device), attention_mask=full_mask.to(self.device),
                              position_ids=(pos + shared).to(self.device), logits_to_keep=keep,
                              **{_cache_argument(self.model): cache}).logits

    def _agrees(self, shared: Any, plain: Any) -> bool:
        import torch

        tol = CHECK_TOLERANCE if shared.dtype == torch.float32 else HALF_CHECK_TOLERANCE
        a = torch.log_softmax(shared.float(), dim=-1)
        b = torch.log_softmax(plain.float(), dim=-1)
        return bool((a - b).abs().max() <= tol)


def _cache_argument(model: Any) -> str:
    """The name the model's forward takes a cache by: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _plain_cache(cache: Any) -> bool:
    """Whether ``cache`` holds plain keys and values of full attention at every layer (and can be repeated)."""
    from transformers import DynamicCache

    if type(cache) is not DynamicCache or not hasattr(cache, "batch_repeat_interleave"):
        return False
    sliding = getattr(cache, "is_sliding", [False])
    linear = getattr(cache, "is_linear", [False])
    return not any(sliding) and not any(linear if isinstance(linear, (list, tuple)) else [linear])
