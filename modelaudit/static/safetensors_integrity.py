"""Safetensors integrity: parse every header ourselves, strictly, and ask the library for a second opinion.

Safetensors is only safe when the file really is one and its header is unambiguous. A lying header
(overlapping tensors, bytes hidden in gaps or after the data, duplicate keys that two parsers resolve
differently) is how a file smuggles data past one loader while another sees something else. We read
headers only, never tensor data, so a multi-GB folder costs a few small reads per file.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import math
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from modelaudit.findings import FileEntry, Finding, Location, Severity
from modelaudit.static.base import StaticContext, static_check
from modelaudit.static.pickles import DEFAULT_LIMITS, analyse_stream, classify_global
from modelaudit.target import magic

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest header we parse; the reference implementation refuses bigger ones too."""
MAX_TENSORS = 1_000_000
"""More tensors than any real model has: a header built to exhaust the loader."""
MAX_RANK = 1024
"""Most dimensions a tensor may have; also bounds the big-integer product of a hostile shape."""
MAX_EXAMPLES = 10
"""Tensor names listed in a finding's evidence; the count says how many there were in all."""
MAX_NAME_CHARS = 200
"""Longest tensor or shard name quoted in a finding: a hostile header can hold 100 MB names."""
INDEX_SUFFIX = ".safetensors.index.json"
MAX_METADATA_DECODE_CHARS = 16 * 1024 * 1024
"""Longest metadata value (or joined run of chunk values) decoded to look for a payload; longer is a finding."""
MIN_ENCODED_CHARS = 16
"""Shorter encoded strings cannot hold a payload worth hiding (a pickle that calls anything needs more)."""
MIN_PAYLOAD_BYTES = 8
"""Decoded bytes below this are not judged (too short for any format to be told from noise)."""

# Bits per element, as the safetensors format defines its dtypes (sub-byte types are packed).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

_H, _M, _L = Severity.HIGH, Severity.MEDIUM, Severity.LOW
RULES: dict[str, str] = {
    "static.safetensors.not-safetensors": "A .safetensors file whose bytes are another format",
    "static.safetensors.truncated": "A safetensors file too short to hold its 8-byte header length",
    "static.safetensors.header-beyond-file": "The declared header length runs past the end of the file",
    "static.safetensors.header-too-large": "The declared header length exceeds the 100 MB limit",
    "static.safetensors.header-invalid": "The header is not UTF-8 JSON holding one object",
    "static.safetensors.duplicate-key": "The header repeats a key; parsers may disagree on which one wins",
    "static.safetensors.header-padding": "Header padding holds bytes other than spaces",
    "static.safetensors.bad-metadata": "__metadata__ is not a map of strings to strings",
    "static.safetensors.bad-entry": "A tensor entry is not an object with dtype, shape and data_offsets",
    "static.safetensors.unknown-dtype": "A tensor has a dtype the format does not define",
    "static.safetensors.bad-shape": "A tensor shape is not a list of non-negative integers",
    "static.safetensors.bad-offsets": "data_offsets is not two integers with begin <= end",
    "static.safetensors.offsets-past-end": "A tensor's bytes lie past the end of the data section",
    "static.safetensors.overlap": "Two tensors share bytes",
    "static.safetensors.gap": "Unreferenced bytes between tensors",
    "static.safetensors.trailing-bytes": "Unreferenced bytes after the last tensor",
    "static.safetensors.size-mismatch": "A tensor's byte range does not match its shape and dtype",
    "static.safetensors.too-many-tensors": "The header declares an absurd number of tensors",
    "static.safetensors.rejected": "The safetensors library refuses a file our own parser accepted",
    "static.safetensors.index-invalid": "A sharded-checkpoint index is unreadable or malformed",
    "static.safetensors.index-missing-shard": "The index names a shard file that does not exist",
    "static.safetensors.index-shard-not-safetensors": "The index names a shard whose bytes are not safetensors",
    "static.safetensors.index-missing-tensor": "The index maps a tensor to a shard that does not hold it",
    "static.safetensors.index-unlisted-tensor": "A shard holds tensors its index does not list",
    "static.safetensors.metadata-payload": "__metadata__ hides an encoded pickle, archive, executable or Python code",
}


class _DuplicateKey(ValueError):
    """Raised from the JSON hook so the first repeated key is reported by name."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass
class ParsedHeader:
    """What a header declares, once it parsed as a JSON object."""

    header_len: int
    """Declared header length in bytes (after the 8-byte prefix)."""
    tensors: dict[str, Any]
    """Raw tensor entries keyed by name (``__metadata__`` removed)."""
    metadata: Any = None
    """Raw ``__metadata__`` value, if present."""


@dataclass
class FileReport:
    """Problems found in one file, grouped by rule so a million bad tensors make one finding each."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    header: ParsedHeader | None = None
    _groups: dict[str, tuple[Severity, str, list[str], dict[str, Any]]] = field(default_factory=dict)

    def add(self, rule: str, severity: Severity, message: str, *, member: str | None = None,
            **evidence: Any) -> None:
        self.findings.append(Finding(rule, severity, f"{self.path}: {message}",
                                     location=Location(path=self.path, member=member), evidence=evidence))

    def group(self, rule: str, severity: Severity, message: str, tensor: str, **evidence: Any) -> None:
        """Record one tensor against a per-rule group; the first tensor's evidence describes the group."""
        if rule not in self._groups:
            self._groups[rule] = (severity, message, [], evidence)
        self._groups[rule][2].append(_name(tensor))

    def flush(self) -> list[Finding]:
        for rule, (severity, message, names, evidence) in self._groups.items():
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            self.findings.append(Finding(
                rule, severity, f"{self.path}: tensor {names[0]!r}: {message}{more}",
                location=Location(path=self.path, member=names[0]),
                evidence={**evidence, "tensors": names[:MAX_EXAMPLES], "count": len(names)}))
        self._groups.clear()
        return self.findings


@static_check("static.safetensors", rules=RULES,
              description="Strict safetensors header parse, second opinion from the library, shard index")
def check_safetensors(ctx: StaticContext) -> Iterator[Finding]:
    """Validate every safetensors file's header and every sharded index against its shards."""
    headers: dict[str, ParsedHeader | None] = {}
    for entry in ctx.files:
        if entry.content_type != "safetensors" and not entry.path.lower().endswith(".safetensors"):
            continue
        report = inspect_file(ctx.path(entry.path), entry)
        headers[entry.path] = report.header
        yield from report.findings
    for entry in ctx.files:
        if entry.path.endswith(INDEX_SUFFIX):
            yield from check_index(ctx, entry, headers)


def inspect_file(path: Path, entry: FileEntry) -> FileReport:
    """All findings for one file; never raises on malformed content."""
    report = FileReport(entry.path)
    if entry.content_type != "safetensors":
        severity = _M if entry.content_type == "empty" else _H
        report.add("static.safetensors.not-safetensors", severity,
                   f"named .safetensors but its bytes are {entry.content_type}",
                   content_type=entry.content_type)
        if entry.content_type not in {"binary", "text", "json"}:
            return report  # another real format: the checks for that format take over
    try:
        _parse_file(path, entry.size, report)
    except OSError as exc:
        report.add("static.safetensors.truncated", _H, f"cannot read file: {exc.strerror or exc}")
        return report
    if report.header is not None:
        _validate_tensors(report.header, entry.size, report)
        report.flush()
        if not report.findings:
            _second_opinion(path, report)
        if isinstance(report.header.metadata, dict):
            _check_metadata(report.header.metadata, report)
    return report


def _parse_file(path: Path, size: int, report: FileReport) -> None:
    """Read the length prefix and header bytes; set ``report.header`` when they form a JSON object."""
    if size < 8:
        report.add("static.safetensors.truncated", _H, f"only {size} bytes, fewer than the 8-byte length prefix",
                   size=size)
        return
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:  # the file shrank since the inventory sized it
            report.add("static.safetensors.truncated", _H, "file ended inside the 8-byte length prefix",
                       size=len(prefix))
            return
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            report.add("static.safetensors.header-too-large", _H,
                       f"declared header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit",
                       header_len=n, size=size)
            return
        if n > size - 8:
            report.add("static.safetensors.header-beyond-file", _H,
                       f"declared header length {n} runs past the end of the {size}-byte file",
                       header_len=n, size=size)
            return
        raw = fh.read(n)
    if len(raw) != n:  # the file shrank under us
        report.add("static.safetensors.header-beyond-file", _H, "file ended inside the header", header_len=n)
        return
    _parse_header(raw, report)


def _parse_header(raw: bytes, report: FileReport) -> None:
    n = len(raw)
    if not raw.startswith(b"{"):
        report.add("static.safetensors.header-invalid", _H, "header does not start with '{'",
                   first_bytes=raw[:16].hex())
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add("static.safetensors.header-invalid", _H, f"header is not UTF-8 (byte {exc.start})",
                   offset=exc.start)
        return
    try:
        obj, end = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant) \
            .raw_decode(text)
    except _DuplicateKey as exc:
        report.add("static.safetensors.duplicate-key", _H,
                   f"header repeats key {_name(exc.key)!r}; loaders may disagree on which entry wins",
                   key=_name(exc.key))
        return
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        report.add("static.safetensors.header-invalid", _H, f"header is not valid JSON: {_short(exc)}")
        return
    if not isinstance(obj, dict):
        report.add("static.safetensors.header-invalid", _H, "header JSON is not an object")
        return
    padding = text[end:]
    if padding.strip(" "):
        junk = padding.strip()
        severity = _M if junk else _L
        what = f"{len(junk.encode())} non-whitespace bytes" if junk else "whitespace other than spaces"
        report.add("static.safetensors.header-padding", severity,
                   f"header padding after the JSON holds {what}",
                   padding_bytes=len(padding.encode()), header_len=n, sample=padding[:32])
    metadata = obj.pop("__metadata__", None)
    had_metadata = metadata is not None
    if had_metadata and not (isinstance(metadata, dict)
                             and all(isinstance(v, str) for v in metadata.values())):
        report.add("static.safetensors.bad-metadata", _M, "__metadata__ is not a map of strings to strings",
                   member="__metadata__", type=type(metadata).__name__)
    report.header = ParsedHeader(header_len=n, tensors=obj, metadata=metadata)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _short(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__


@dataclass
class _Span:
    name: str
    begin: int
    end: int


def _validate_tensors(header: ParsedHeader, size: int, report: FileReport) -> None:
    """Check each entry, then the layout of the data section as a whole."""
    if len(header.tensors) > MAX_TENSORS:
        report.add("static.safetensors.too-many-tensors", _H,
                   f"header declares {len(header.tensors)} tensors (limit {MAX_TENSORS})",
                   count=len(header.tensors))
        return
    data_len = size - 8 - header.header_len
    spans: list[_Span] = []
    for name, info in header.tensors.items():
        span = _validate_entry(name, info, data_len, report)
        if span is not None:
            spans.append(span)
    _check_layout(spans, data_len, report)


def _validate_entry(name: str, info: Any, data_len: int, report: FileReport) -> _Span | None:
    """One tensor entry; returns its byte span when the offsets are usable for the layout check."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        report.group("static.safetensors.bad-entry", _M, "entry is not an object with dtype, shape and data_offsets",
                     name)
        return None
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    bits = DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
    if bits is None:
        report.group("static.safetensors.unknown-dtype", _M, f"unknown dtype {str(dtype)[:40]!r}", name,
                     dtype=str(dtype)[:40])
    shape_ok = (isinstance(shape, list) and len(shape) <= MAX_RANK
                and all(_is_int(d) and 0 <= d < 2**64 for d in shape))
    if not shape_ok:
        report.group("static.safetensors.bad-shape", _M,
                     f"shape is not a list of at most {MAX_RANK} integers in [0, 2**64)", name,
                     shape=str(shape)[:80])
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        report.group("static.safetensors.bad-offsets", _H,
                     "data_offsets is not [begin, end] integers with begin <= end", name,
                     data_offsets=str(offsets)[:80])
        return None
    begin, end = offsets
    if end > data_len:
        report.group("static.safetensors.offsets-past-end", _H,
                     f"bytes [{begin}, {end}) run past the {data_len}-byte data section", name,
                     data_offsets=[begin, end], data_len=data_len)
        return None
    if bits is not None and shape_ok:
        total_bits = math.prod(shape) * bits
        if total_bits != (end - begin) * 8:
            expected = f"{total_bits / 8:g}" if total_bits < 2**64 else "more than 2**61"
            report.group("static.safetensors.size-mismatch", _H,
                         f"{end - begin} bytes for shape {shape[:8]} of {dtype} (expects {expected})",
                         name, nbytes=end - begin, expected_bits=total_bits if total_bits < 2**53 else None)
    return _Span(name, begin, end)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_layout(spans: list[_Span], data_len: int, report: FileReport) -> None:
    """Tensors must tile the data section exactly: no shared bytes, no holes, nothing after the end."""
    spans.sort(key=lambda s: (s.begin, s.end))
    covered = 0
    for span in spans:
        if span.begin < covered:
            report.group("static.safetensors.overlap", _H, f"bytes [{span.begin}, {span.end}) overlap another tensor",
                         span.name, data_offsets=[span.begin, span.end])
        elif span.begin > covered:
            report.group("static.safetensors.gap", _L, f"{span.begin - covered} unreferenced bytes before it",
                         span.name, gap_begin=covered, gap_end=span.begin)
        covered = max(covered, span.end)
    if covered < data_len:
        report.add("static.safetensors.trailing-bytes", _M,
                   f"{data_len - covered} bytes after the last tensor are referenced by no tensor",
                   trailing_bytes=data_len - covered, data_len=data_len)


def _second_opinion(path: Path, report: FileReport) -> None:
    """Open with the reference implementation (header only) and flag any disagreement with our parse.

    ``framework="numpy"``: header validation is the same Rust code for every framework, and "pt" would
    import torch (seconds) into a scan that otherwise never needs it.
    """
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as fh:
            keys = set(fh.keys())
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # SafetensorError, OSError, or a Rust panic (pyo3's PanicException)
        report.add("static.safetensors.rejected", _H, f"the safetensors library refuses it: {_short(exc)}",
                   error=_short(exc))
        return
    ours = set(report.header.tensors) if report.header is not None else set()
    if keys != ours:
        diff = sorted(keys ^ ours)
        report.add("static.safetensors.rejected", _H,
                   "the safetensors library sees different tensor names than the header declares",
                   tensors=[_name(t) for t in diff[:MAX_EXAMPLES]], count=len(diff))


# --- payloads hidden in __metadata__ ------------------------------------------------------------------
# Metadata is free text that loaders hand to user code; a pickle encoded there (whole, or split over keys
# that code elsewhere joins and unpickles) passes every tensor check. Decoding a string runs nothing.

_ENCODINGS: tuple[tuple[str, re.Pattern[str], Any], ...] = (
    ("hex", re.compile(r"(?:[0-9a-fA-F]{2})+"), bytes.fromhex),
    ("base64", re.compile(r"[A-Za-z0-9+/]+={0,2}"), lambda s: base64.b64decode(s + "=" * (-len(s) % 4))),
    ("base64", re.compile(r"[A-Za-z0-9_-]+={0,2}"), lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))),
    ("base85", re.compile(r"[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]+"), base64.b85decode),
    ("ascii85", re.compile(r"(?:<~)?[!-uz]+(?:~>)?"), lambda s: base64.a85decode(s, adobe=s.startswith("<~"))),
)
_CHUNK_KEY = re.compile(r"^(.*?)(\d+)$")
_EXECUTABLE = {"elf": "an ELF executable", "pe": "a Windows PE executable", "macho": "a Mach-O executable"}
_CODE_CALLS = frozenset({"exec", "eval", "compile", "__import__", "getattr", "open", "system", "popen", "loads"})


@dataclass
class _Payload:
    """What a decoded metadata value turned out to be."""

    kind: str
    severity: Severity
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _check_metadata(metadata: dict[str, Any], report: FileReport) -> None:
    """Decode every value, and runs of values that look like chunks of one, and name any payload found."""
    values = {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}
    flagged = {key for key, value in values.items() if _judge_text(value, [key], report)}
    for keys in _chunk_runs(values):
        if flagged.isdisjoint(keys) and _judge_text("".join(values[k].strip() for k in keys), keys, report):
            flagged.update(keys)  # one finding per payload, not one per way of joining its chunks


def _chunk_runs(values: dict[str, str]) -> list[list[str]]:
    """Key sequences whose values may be pieces of one encoded blob: every encoded-looking value in header
    order and in natural key order, and each family of numbered keys (``p0``, ``p1``, ...) in number order."""
    encoded = [k for k, v in values.items() if any(rx.fullmatch(v.strip()) for _, rx, _ in _ENCODINGS)]
    families: dict[str, list[tuple[int, str]]] = {}
    for key in encoded:
        m = _CHUNK_KEY.match(key)
        if m:
            families.setdefault(m.group(1), []).append((int(m.group(2)), key))
    runs = [encoded, sorted(encoded, key=_natural)]
    runs += [[k for _, k in sorted(family)] for family in families.values()]
    unique: list[list[str]] = []
    for run in runs:
        if len(run) > 1 and run not in unique:
            unique.append(run)
    return unique


def _natural(key: str) -> tuple[str, int]:
    m = _CHUNK_KEY.match(key)
    return (m.group(1), int(m.group(2))) if m else (key, -1)


def _judge_text(text: str, keys: list[str], report: FileReport) -> bool:
    """One finding (the worst reading) for a value or a joined run of values; True when it made one."""
    text = text.strip()
    if len(text) < MIN_ENCODED_CHARS:
        return False
    what = f"__metadata__ key {_name(keys[0])!r}" if len(keys) == 1 else \
        f"__metadata__ keys {', '.join(repr(_name(k)) for k in keys[:MAX_EXAMPLES])} joined"
    if len(text) > MAX_METADATA_DECODE_CHARS:
        if any(rx.fullmatch(text[:4096]) for _, rx, _ in _ENCODINGS):
            report.add("static.safetensors.metadata-payload", _M,
                       f"{what}: {len(text)} encoded-looking characters, more than the "
                       f"{MAX_METADATA_DECODE_CHARS} this check decodes; it is unchecked",
                       member="__metadata__", keys=[_name(k) for k in keys[:MAX_EXAMPLES]], chars=len(text))
            return True
        return False
    found: list[tuple[str, _Payload]] = []
    for encoding, pattern, decode in _ENCODINGS:
        if not pattern.fullmatch(text):
            continue
        try:
            data = decode(text)
        except (ValueError, binascii.Error):
            continue
        payload = _identify(data)
        if payload is not None:
            found.append((encoding, payload))
    if found:
        encoding, payload = max(found, key=lambda ep: ep[1].severity.rank)
        report.add("static.safetensors.metadata-payload", payload.severity,
                   f"{what}: {encoding} text that decodes to {payload.detail}; code that decodes metadata "
                   "would run or unpack it", member="__metadata__",
                   keys=[_name(k) for k in keys[:MAX_EXAMPLES]], encoding=encoding, payload=payload.kind,
                   **payload.evidence)
    return bool(found)


def _identify(data: bytes) -> _Payload | None:
    """A pickle, archive, executable or Python source in decoded bytes; None for anything else."""
    if len(data) < MIN_PAYLOAD_BYTES:
        return None
    kind = magic(data[:512])
    if kind in _EXECUTABLE and (kind != "pe" or _has_pe_header(data)):
        return _Payload(kind, _H, _EXECUTABLE[kind])
    if kind in {"zip", "gzip", "bz2", "xz", "tar"} and _archive_opens(kind, data):
        return _Payload(kind, _M, f"a {kind} archive")
    pickle = _as_pickle(data)
    if pickle is not None:
        return pickle
    return _as_python(data)


def _archive_opens(kind: str, data: bytes) -> bool:
    """Magic bytes plus a readable start: gzip's two-byte magic alone begins one hash in 65536."""
    if kind == "gzip":
        try:
            zlib.decompressobj(wbits=31).decompress(data, MIN_PAYLOAD_BYTES)
        except zlib.error:
            return False
        return True
    if kind == "bz2":
        return data[3:4].isdigit() and data[4:10] == b"1AY&SY"
    return True  # zip, xz and tar magic are four or more bytes


def _has_pe_header(data: bytes) -> bool:
    """``MZ`` alone is two bytes any hash can start with; a PE file also points at its ``PE\\0\\0`` header."""
    if len(data) < 64:
        return False
    (offset,) = struct.unpack_from("<I", data, 60)
    return data[offset:offset + 4] == b"PE\x00\x00"


def _as_pickle(data: bytes) -> _Payload | None:
    """The pickle check's own opcode simulation (nothing is unpickled) on the decoded bytes."""
    analysis = analyse_stream(io.BytesIO(data), limits=DEFAULT_LIMITS)
    refs = sorted(analysis.globals)
    denied = [g.ref for g in analysis.globals.values() if classify_global(g.module, g.name) == "deny"]
    # the whole blob is the pickle, with a real protocol header (2-5) or as protocol-0 text: random bytes
    # that happen to parse for a few opcodes (a decoded hash) are neither
    whole = analysis.pickles > 0 and analysis.error is None and analysis.end >= len(data.rstrip(b"\n")) and (
        (data[0] == 0x80 and 2 <= data[1] <= 5) or data.isascii())
    if denied:
        return _Payload("pickle", _H, f"a pickle that reaches {', '.join(denied[:3])} (code execution on load)",
                        {"globals": refs[:MAX_EXAMPLES]})
    if whole:
        return _Payload("pickle", _M, "a pickle (loading it with pickle.loads can run code)",
                        {"globals": refs[:MAX_EXAMPLES]})
    return None


def _as_python(data: bytes) -> _Payload | None:
    """Python source: it parses, and imports something, defines something, or calls exec-like names."""
    try:
        tree = ast.parse(data.decode("utf-8"))
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                             ast.Lambda)):
            return _Payload("python", _M, "Python source code")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in _CODE_CALLS:
                return _Payload("python", _M, "Python source code")
    return None


def check_index(ctx: StaticContext, entry: FileEntry,
                headers: dict[str, ParsedHeader | None]) -> Iterator[Finding]:
    """A sharded index must name only shards that exist, are safetensors, and hold the tensors it claims."""
    loc = Location(path=entry.path)
    try:
        data = ctx.read_json(entry.path)
    except (ValueError, OSError) as exc:
        yield Finding("static.safetensors.index-invalid", _M, f"{entry.path}: {_short(exc)}", location=loc)
        return
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        yield Finding("static.safetensors.index-invalid", _M,
                      f"{entry.path}: no weight_map object mapping tensor names to shard file names", location=loc)
        return
    base = PurePosixPath(entry.path).parent
    by_shard: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(tensor)
    for shard, tensors in sorted(by_shard.items()):
        rel = _shard_rel(base, shard)
        yield from _check_shard(ctx, entry.path, shard, rel, tensors, headers)
        header = headers.get(rel) if rel is not None else None
        if header is not None and rel is not None:
            yield from _unlisted_tensors(entry.path, rel, header, weight_map)


def _check_shard(ctx: StaticContext, index: str, shard: str, rel: str | None, tensors: list[str],
                 headers: dict[str, ParsedHeader | None]) -> Iterator[Finding]:
    """Findings for one shard the index names: escaping, missing, not safetensors, or lacking tensors."""
    loc = Location(path=index, member=_name(tensors[0]))
    evidence = {"shard": _name(shard), "tensors": [_name(t) for t in tensors[:MAX_EXAMPLES]], "count": len(tensors)}
    if rel is None:
        yield Finding("static.safetensors.index-invalid", _H,
                      f"{index}: shard name {_name(shard)!r} leaves the model folder", location=loc, evidence=evidence)
        return
    if rel not in headers:
        found = ctx.find(rel)
        if found is None:
            yield Finding("static.safetensors.index-missing-shard", _H,
                          f"{index}: shard {_name(shard)!r} ({len(tensors)} tensors) is missing",
                          location=loc, evidence=evidence)
        else:  # exists, but neither named .safetensors nor sniffed as one: a loader would be handed other bytes
            yield Finding("static.safetensors.index-shard-not-safetensors", _H,
                          f"{index}: shard {_name(shard)!r} is not a safetensors file (its bytes are "
                          f"{found.content_type})", location=loc,
                          evidence={**evidence, "content_type": found.content_type})
        return
    header = headers[rel]
    if header is None:
        return  # the shard's own findings already say why it could not be read
    missing = [t for t in tensors if t not in header.tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        yield Finding("static.safetensors.index-missing-tensor", _H,
                      f"{index}: shard {_name(shard)!r} does not hold {_name(missing[0])!r}{more}",
                      location=Location(path=index, member=_name(missing[0])),
                      evidence={"shard": _name(shard), "tensors": [_name(t) for t in missing[:MAX_EXAMPLES]],
                                "count": len(missing)})


def _unlisted_tensors(index: str, rel: str, header: ParsedHeader,
                      weight_map: dict[str, str]) -> Iterator[Finding]:
    """Tensors a shard holds that the index never mentions: loaders skip them, so they can hide data."""
    extra = sorted(set(header.tensors) - set(weight_map))
    if extra:
        yield Finding("static.safetensors.index-unlisted-tensor", _L,
                      f"{rel}: holds {len(extra)} tensors that {index} does not list",
                      location=Location(path=rel, member=_name(extra[0])),
                      evidence={"index": index, "tensors": [_name(t) for t in extra[:MAX_EXAMPLES]],
                                "count": len(extra)})


def _name(text: str) -> str:
    """A tensor or shard name short enough to quote in a report."""
    return text if len(text) <= MAX_NAME_CHARS else text[:MAX_NAME_CHARS] + "..."


def _shard_rel(base: PurePosixPath, shard: str) -> str | None:
    """Shard path relative to the model root, or None if it escapes the folder or is absolute."""
    if not shard or "\\" in shard or "\x00" in shard or shard.startswith("/"):
        return None
    parts = [p for p in (base / shard).parts if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)
