"""Where tensors come from: memory-mapped safetensors (single or sharded) or a dequantized GGUF.

Why a source abstraction: the diff streams tensor by tensor (and, for big matrices, row block by row
block), so peak memory stays near a few blocks instead of two whole models. safetensors maps the whole
file and every page touched stays resident (and is counted in RSS) while the mapping lives, so a
source drops its mappings (``release``) after each tensor; reopening costs one header parse.

Keys are paired across sources on a canonical name (``model.layers.0...`` and ``layers.0...`` are the
same tensor), and a tied unembedding (no ``lm_head.weight`` in the file) is recognised, not reported
as missing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelaudit.errors import InvalidModelFileError, TargetNotFoundError
from modelaudit.loading import load_model
from modelaudit.target import looks_like_hub_id

# safetensors dtype codes -> torch dtype names (only what torch can represent).
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
             "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}

# Prefixes that wrappers add to the same weights (HF base model, PEFT wrapper, GPT-2 style, VLM text tower).
_PREFIXES = ("base_model.model.", "model.", "transformer.", "language_model.", "text_model.")
EMBED_NAMES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight",
               "embed_in.weight", "token_embd.weight")
HEAD_NAMES = ("lm_head.weight", "embed_out.weight", "output.weight")
RELEASE_BYTES = 32 * 2**20
"""Bytes read through a file mapping before it is dropped (bounds the resident mapped pages)."""
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|block)\.(\d+)\.")


@dataclass(frozen=True)
class TensorMeta:
    """One tensor as the file header describes it (nothing loaded)."""

    key: str
    """Key as stored in the file."""
    shape: tuple[int, ...]
    """Shape from the header."""
    dtype: str
    """torch dtype name (``float32``, ``bfloat16``, ...)."""
    file: str
    """File holding it, relative to the source root."""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class WeightSource:
    """A read-only set of named tensors that can be read whole or by row block."""

    root: Path
    fmt: str
    tensors: dict[str, TensorMeta]
    notes: list[str]
    tokenizer: Any = None
    config: dict[str, Any]

    def read(self, key: str, rows: tuple[int, int] | None = None) -> Any:
        """Tensor ``key`` (rows ``[r0, r1)`` of its first dimension when given) on CPU, stored dtype."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop memory mappings so pages already read stop counting in RSS."""

    def maybe_release(self, *, force: bool = False) -> None:
        """``release`` once about ``RELEASE_BYTES`` were read since the last one (or when forced)."""
        self.release()

    def close(self) -> None:
        self.release()

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def label(self) -> str:
        return str(self.root)

    @property
    def tied(self) -> bool:
        """True when the file stores no separate unembedding (it is the input embedding)."""
        names = {canonical(k) for k in self.tensors}
        has_embed = any(n in EMBED_NAMES for n in names)
        has_head = any(n in HEAD_NAMES for n in names)
        return has_embed and (not has_head or bool(self.config.get("tie_word_embeddings", False)))


class SafetensorsSource(WeightSource):
    """One or more safetensors files (a sharded checkpoint uses its ``model.safetensors.index.json``)."""

    def __init__(self, root: Path, files: list[Path], *, weight_map: dict[str, str] | None = None) -> None:
        from safetensors import SafetensorError, safe_open

        self.root, self.fmt, self.notes = root, "safetensors", []
        self.tensors = {}
        self._files = files
        self._handles: dict[str, Any] = {}
        self._mapped = 0
        self.config = _read_json(root / "config.json") if root.is_dir() else {}
        for path in files:
            rel = path.name if path.parent == root else str(path.relative_to(root))
            try:
                with safe_open(str(path), framework="pt") as fh:
                    for key in fh.keys():
                        if weight_map is not None and weight_map.get(key) not in (None, rel):
                            continue  # the index says another shard holds it
                        if key in self.tensors:
                            self.notes.append(f"{rel}: tensor {key} also in {self.tensors[key].file}; first kept")
                            continue
                        sl = fh.get_slice(key)
                        dtype = _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())
                        self.tensors[key] = TensorMeta(key, tuple(int(s) for s in sl.get_shape()), dtype, rel)
            except (SafetensorError, OSError, ValueError) as exc:
                raise InvalidModelFileError(f"{path}: not a readable safetensors file: {_first_line(exc)}") from None
        if weight_map is not None:
            lost = sorted(set(weight_map) - set(self.tensors))
            if lost:
                raise InvalidModelFileError(f"{root}: index lists {len(lost)} tensors its shards lack, e.g. {lost[0]}")

    def _handle(self, rel: str) -> Any:
        from safetensors import safe_open

        fh = self._handles.get(rel)
        if fh is None:
            fh = safe_open(str(self.root / rel), framework="pt")
            self._handles[rel] = fh
        return fh

    def read(self, key: str, rows: tuple[int, int] | None = None) -> Any:
        meta = self.tensors[key]
        fh = self._handle(meta.file)
        try:
            t = fh.get_tensor(key) if rows is None else fh.get_slice(key)[rows[0]:rows[1]]
        except Exception as exc:  # safetensors raises its own error types for truncated data
            raise InvalidModelFileError(f"{self.root / meta.file}: cannot read tensor {key}: "
                                        f"{_first_line(exc)}") from None
        self._mapped += t.numel() * t.element_size()
        return t

    def release(self) -> None:
        # A tensor still referenced keeps its mapping alive; callers drop tensors before releasing.
        self._handles.clear()
        self._mapped = 0

    def maybe_release(self, *, force: bool = False) -> None:
        if force or self._mapped >= RELEASE_BYTES:
            self.release()


class MemorySource(WeightSource):
    """Tensors already in memory: a GGUF model dequantized by ``modelaudit.loading.load_model``."""

    def __init__(self, root: Path, tensors: dict[str, Any], *, fmt: str, file: str, config: dict[str, Any],
                 tokenizer: Any = None, notes: list[str] | None = None) -> None:
        self.root, self.fmt, self.config, self.tokenizer = root, fmt, config, tokenizer
        self.notes = list(notes or [])
        self._data = tensors
        self.tensors = {k: TensorMeta(k, tuple(v.shape), str(v.dtype).replace("torch.", ""), file)
                        for k, v in tensors.items()}

    def read(self, key: str, rows: tuple[int, int] | None = None) -> Any:
        t = self._data[key]
        return t if rows is None else t[rows[0]:rows[1]]


def resolve_local(spec: str | os.PathLike[str], *, what: str = "model", cache_dir: str | None = None) -> Path:
    """A local path, or a hub id already in the local Hugging Face cache (never downloads).

    Raises:
        TargetNotFoundError: neither a local path nor a cached hub id.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if looks_like_hub_id(str(spec)):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(spec), cache_dir=cache_dir, local_files_only=True))
        except Exception:  # LocalEntryNotFoundError and friends: not cached
            raise TargetNotFoundError(f"{what} {spec}: not available locally (download it first, e.g. "
                                      f"`hf download {spec}`)") from None
    raise TargetNotFoundError(f"{what} {spec}: no such file or folder")


def open_weights(spec: str | os.PathLike[str], *, what: str = "model", cache_dir: str | None = None) -> WeightSource:
    """Open the weights of a model folder, a ``.safetensors`` file or a ``.gguf`` file.

    Raises:
        TargetNotFoundError: the path does not exist locally.
        InvalidModelFileError: no usable weights (only pickles, only a LoRA adapter, corrupt files).
    """
    path = resolve_local(spec, what=what, cache_dir=cache_dir)
    if path.is_file():
        if path.suffix == ".gguf":
            return _open_gguf(path)
        if path.suffix == ".safetensors":
            return SafetensorsSource(path.parent, [path])
        raise InvalidModelFileError(f"{path}: {what} must be a folder, a .safetensors file or a .gguf file")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidModelFileError(f"{index}: no weight_map")
        shards = sorted(set(map(str, weight_map.values())))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise InvalidModelFileError(f"{path / missing[0]}: shard listed in the index is missing")
        return SafetensorsSource(path, [path / s for s in shards], weight_map=weight_map)
    files = sorted(p for p in path.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if files:
        return SafetensorsSource(path, files)
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return _open_gguf(ggufs[0])
    if (path / "adapter_model.safetensors").is_file():
        raise InvalidModelFileError(f"{path}: holds only a LoRA adapter; merge it into its base "
                                    "(peft merge_and_unload) and diff the merged model")
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise InvalidModelFileError(f"{path}: only pickle-based weights (.bin/.pt); the weight diff reads "
                                    "safetensors or GGUF (convert after the static checks pass)")
    raise InvalidModelFileError(f"{path}: no model weights (.safetensors or .gguf) found")


def _open_gguf(path: Path) -> MemorySource:
    """GGUF stores quantized blocks: dequantize once into memory (no streaming possible here)."""
    loaded = load_model(path, device="cpu", dtype="float32")
    model = loaded.model
    state = {k: v.detach() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        for key in [k for k in state if canonical(k) in HEAD_NAMES]:
            del state[key]
        config["tie_word_embeddings"] = True
    size_mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    note = f"{path.name}: GGUF dequantized to float32 in memory ({size_mb:.0f} MiB), not streamed"
    return MemorySource(path.parent, state, fmt="gguf", file=path.name, config=config,
                        tokenizer=loaded.tokenizer, notes=[note])


def canonical(key: str) -> str:
    """Key without wrapper prefixes, so ``model.layers.0.x`` pairs with ``layers.0.x``."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix):], True
    return key


def layer_of(name: str) -> tuple[str, int | None]:
    """Group name for per-layer statistics: ``layers.N`` for blocks, else the tensor's role."""
    m = _LAYER_RE.search(name)
    if m:
        return f"layers.{int(m.group(1))}", int(m.group(1))
    if name in EMBED_NAMES:
        return "embed", None
    if name in HEAD_NAMES:
        return "lm_head", None
    return "other", None


@dataclass
class TensorPair:
    """One tensor to compare: its canonical name and where it lives on each side."""

    name: str
    """Canonical name (prefixes stripped; a tied model's unembedding is its input embedding)."""
    model_key: str
    """Key in the model's files."""
    base_key: str
    """Key in the base's files."""
    shape: tuple[int, ...]
    """Shape compared (rows limited to the common vocabulary for a resized embedding)."""
    model_dtype: str
    """Stored dtype on the model side."""
    base_dtype: str
    """Stored dtype on the base side."""
    role: str | None = None
    """``input``, ``output`` or ``tied`` for token matrices, else None."""


@dataclass
class Pairing:
    """How the model's tensors line up with the base's."""

    pairs: list[TensorPair] = field(default_factory=list)
    """Tensors compared, in file order of the model."""
    missing_in_model: list[str] = field(default_factory=list)
    """Canonical names the base has and the model lacks."""
    extra_in_model: list[str] = field(default_factory=list)
    """Canonical names the model has and the base lacks."""
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)
    """Tensors present on both sides whose shapes differ (and cannot be row-aligned)."""
    vocab_resized: dict[str, Any] | None = None
    """Rows added to or removed from the token matrices, when the vocabulary changed."""
    renamed: bool = False
    """True when keys matched only after stripping wrapper prefixes."""
    model_tied: bool = False
    """The model stores no separate unembedding."""
    base_tied: bool = False
    """The base stores no separate unembedding."""
    notes: list[str] = field(default_factory=list)
    """What a reader should know about the alignment."""

    @property
    def compared_fraction(self) -> float:
        """Share of the base's tensors that were compared (architectures match when near 1)."""
        total = len(self.pairs) + len(self.missing_in_model) + len(self.shape_mismatch)
        return len(self.pairs) / total if total else 0.0


class ArchitectureMismatchError(InvalidModelFileError):
    """Model and base do not share an architecture: too few tensors line up to compare them."""


def _canon_map(src: WeightSource) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in src.tensors:
        name = canonical(key)
        if name in out:  # prefixes were meaningful here; fall back to raw keys
            return {k: k for k in src.tensors}
        out[name] = key
    return out


def _token_keys(cmap: dict[str, str]) -> tuple[str | None, str | None]:
    embed = next((n for n in EMBED_NAMES if n in cmap), None)
    head = next((n for n in HEAD_NAMES if n in cmap), None)
    return embed, head


def pair_tensors(model: WeightSource, base: WeightSource) -> Pairing:
    """Line up tensors by canonical name; handle tied heads and a resized vocabulary.

    Raises:
        ArchitectureMismatchError: fewer than half of the base's tensors have a same-shaped partner.
    """
    mmap_, bmap = _canon_map(model), _canon_map(base)
    res = Pairing(model_tied=model.tied, base_tied=base.tied)
    m_embed, m_head = _token_keys(mmap_)
    b_embed, b_head = _token_keys(bmap)
    if m_embed and b_embed and m_embed != b_embed:
        bmap[m_embed] = bmap.pop(b_embed)
        b_embed = m_embed
    if m_head and b_head and m_head != b_head:
        bmap[m_head] = bmap.pop(b_head)
        b_head = m_head
    # Tied on one side only: the tied side's unembedding is its input embedding.
    if m_head and not b_head and b_embed and res.base_tied:
        bmap[m_head] = bmap[b_embed]
        res.notes.append("base ties its unembedding to the input embedding; the model's lm_head is "
                         "compared with the base's input embedding")
    if b_head and not m_head and m_embed:
        bmap.pop(b_head)
        res.notes.append("the model ties its unembedding to the input embedding while the base does not; "
                         "the base's separate lm_head is not compared")
    if m_head and res.model_tied and m_head in mmap_ and m_embed:
        res.notes.append("config ties embeddings but the file also stores lm_head; both compared")
    common_rows: int | None = None
    for name, mkey in mmap_.items():
        bkey = bmap.get(name)
        if bkey is None:
            res.extra_in_model.append(name)
            continue
        mm, bm = model.tensors[mkey], base.tensors[bkey]
        role = None
        if name == m_embed:
            role = "tied" if res.model_tied and not m_head else "input"
        elif name == m_head:
            role = "output"
        shape = mm.shape
        if mm.shape != bm.shape:
            if role and len(mm.shape) == 2 and mm.shape[1:] == bm.shape[1:]:
                rows = min(mm.shape[0], bm.shape[0])
                common_rows = rows if common_rows is None else min(common_rows, rows)
                res.vocab_resized = {"model_rows": mm.shape[0], "base_rows": bm.shape[0], "compared_rows": rows}
                shape = (rows, *mm.shape[1:])
            else:
                res.shape_mismatch.append({"name": name, "model_shape": list(mm.shape),
                                           "base_shape": list(bm.shape)})
                continue
        res.pairs.append(TensorPair(name, mkey, bkey, shape, mm.dtype, bm.dtype, role))
    res.renamed = any(p.model_key != p.base_key for p in res.pairs if p.role is None)
    matched_base = {p.base_key for p in res.pairs}
    res.missing_in_model = sorted(n for n, k in bmap.items() if k not in matched_base and n not in mmap_)
    if common_rows is not None:
        for p in res.pairs:
            if p.role:
                p.shape = (common_rows, *p.shape[1:])
    if res.compared_fraction < 0.5 or not res.pairs:
        detail = ""
        if res.shape_mismatch:
            s = res.shape_mismatch[0]
            detail = f"; e.g. {s['name']} is {s['model_shape']} vs {s['base_shape']}"
        elif res.missing_in_model:
            detail = f"; e.g. the model lacks {res.missing_in_model[0]}"
        types = (model.config.get("model_type"), base.config.get("model_type"))
        arch = f" (model_type {types[0]} vs {types[1]})" if all(types) and types[0] != types[1] else ""
        raise ArchitectureMismatchError(
            f"{model.label} vs {base.label}: architectures do not match{arch}: only {len(res.pairs)} of "
            f"{len(res.pairs) + len(res.missing_in_model) + len(res.shape_mismatch)} base tensors have a "
            f"same-shaped partner{detail}")
    return res


def itemsize(dtype: str) -> int:
    return _ITEMSIZE.get(dtype, 4)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InvalidModelFileError(f"{path}: not valid JSON: {_first_line(exc)}") from None
    return data if isinstance(data, dict) else {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
