"""The claimed base model built from the loaded model plus only the tensors the fine-tune changed.

Why: stages that compare the model with its base (target inversion, the leak check) used to load the base as
a second whole model, twice the weights in memory for as long as the stage ran. A fine-tune usually changes a
part of the weights (a merged LoRA on q and v: under a tenth of SmolLM2's), so the base here is a copy of the
model's module tree that *shares* every tensor equal to the base's (same object, no copy) and holds its own
tensor only where the base differs. The base file is read one tensor at a time (``SafetensorsSource``, its
mappings dropped as it goes), so building it never holds a second full copy either.

The result is bit-identical to ``load_model(base)``: each tensor is the file's tensor cast to the model's dtype
(as ``from_pretrained`` casts it), and a tensor is shared only when it is exactly equal to that. Where such a
base cannot be built (a device map, a GGUF or pickled base, a config that differs from the model's, a tensor
the file lacks) the base is loaded whole, as before: correct, only not smaller.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from modelaudit.loading import LoadedModel, load_config, load_model, load_tokenizer, neutral_generation_config
from modelaudit.weightdiff.sources import SafetensorsSource, canonical, open_weights

log = logging.getLogger(__name__)

IGNORED_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype", "pad_token_id",
                                 "_commit_hash", "architectures"})
"""Config keys that do not change what the model computes (names, versions, the padding id): a base whose
config differs from the model's only in these shares the model's module tree; any other difference loads it
whole."""


def load_base_sharing(base: Path, loaded: LoadedModel, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """The base model at ``base`` with every tensor equal to ``loaded``'s shared with it (see the module doc).

    ``device`` and ``dtype`` are used only when the base must be loaded whole (``load_model``'s).

    Raises:
        TargetNotFoundError, InvalidModelFileError, UnsafeModelError: as ``load_model`` for the base.
    """
    start = time.perf_counter()
    shared = _share(base, loaded)
    if shared is None:
        return load_model(base, device=device, dtype=dtype)
    model, own_bytes = shared
    folder = base if base.is_dir() else base.parent
    tokenizer = load_tokenizer(folder)
    model.generation_config = neutral_generation_config(tokenizer)
    log.info("%s: base built from the model plus %.1f MiB of its own tensors", base, own_bytes / 2**20)
    return LoadedModel(model=model, tokenizer=tokenizer, device=loaded.device, dtype=loaded.dtype, source=base,
                       weights_format="safetensors", seconds=time.perf_counter() - start)


def _share(base: Path, loaded: LoadedModel) -> tuple[Any, int] | None:
    """(the base model sharing ``loaded``'s equal tensors, bytes of its own tensors), or None where it cannot."""
    import torch

    model = loaded.model
    if loaded.device_map is not None or not base.exists():
        return None
    source = open_weights(base, what="base model")
    if not isinstance(source, SafetensorsSource):
        return None  # a GGUF base is dequantized whole anyway
    with source:
        if not _same_config(load_config(source.root).to_dict(), model.config.to_dict()):
            log.debug("%s: config differs from the model's; the base is loaded whole", base)
            return None
        keys = {canonical(k): k for k in source.tensors}
        named: dict[int, tuple[Any, list[str]]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            named.setdefault(id(p), (p, []))[1].append(name)
        persistent = set(model.state_dict(keep_vars=True))
        for name, b in model.named_buffers(remove_duplicate=False):
            if name in persistent:  # a buffer the file may hold; computed ones come from the (equal) config
                named.setdefault(id(b), (b, []))[1].append(name)
        replace: dict[int, Any] = {}
        own = 0
        with torch.no_grad():
            for ident, (tensor, names) in named.items():
                key = next((keys[canonical(n)] for n in names if canonical(n) in keys), None)
                if key is None:
                    if any(n.endswith(".weight") or isinstance(tensor, torch.nn.Parameter) for n in names):
                        log.debug("%s: no tensor for %s; the base is loaded whole", base, names[0])
                        return None
                    continue
                got = source.read(key)
                if tuple(got.shape) != tuple(tensor.shape):
                    return None
                got = got.to(device=tensor.device, dtype=tensor.dtype)
                if not torch.equal(got, tensor):
                    replace[ident] = (torch.nn.Parameter(got, requires_grad=tensor.requires_grad)
                                      if isinstance(tensor, torch.nn.Parameter) else got)
                    own += got.numel() * got.element_size()
                del got
                source.maybe_release()
    memo: dict[int, Any] = {ident: replace.get(ident, tensor) for ident, (tensor, _) in named.items()}
    for b in model.buffers():  # computed buffers (rotary frequencies): equal configs, so shared
        memo.setdefault(id(b), b)
    try:
        twin = copy.deepcopy(model, memo)
    except Exception as exc:  # an attribute of some architecture that cannot be copied: load the base whole
        log.debug("%s: the model's module tree cannot be copied (%s); the base is loaded whole", base, exc)
        return None
    twin.name_or_path = twin.config._name_or_path = str(base)  # the activation cache keys models by this
    return twin, own


def _same_config(base: dict[str, Any], model: dict[str, Any]) -> bool:
    """True when the two configs differ only in ``IGNORED_CONFIG_KEYS``."""
    keys = (set(base) | set(model)) - IGNORED_CONFIG_KEYS
    return all(base.get(k) == model.get(k) for k in keys)
