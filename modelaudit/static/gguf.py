"""GGUF header validation: the header is parsed here with ``struct`` over a bounded reader, never by a loader.

A GGUF file declares how many metadata keys and tensors follow, and every string and array carries its own
length. Loaders trust those numbers: a count of 2**62 loops (or allocates) forever, a length past the end of
the file reads garbage or crashes, a tensor whose offset points outside the file reads memory it should not.
Here every count and length is checked against the bytes that are really left before anything is read, so a
hostile header costs at most one pass over the header's own bytes. Only the header is read, never tensor data.

The ``gguf`` package's reader is not used on scanned files: it memory-maps the file and trusts the counts.
The chat templates stored in the metadata are handed to the ``static.tokenizer`` check (``gguf_chat_templates``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from modelaudit.findings import FileEntry, Finding, Location, Severity
from modelaudit.static.base import StaticContext, static_check

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
"""Versions llama.cpp and the ``gguf`` package read (version 1 used 32-bit counts and is no longer loaded)."""
DEFAULT_ALIGNMENT = 32
"""Alignment of the tensor data when ``general.alignment`` is absent (GGUF specification)."""
MAX_DIMS = 4
"""GGML_MAX_DIMS: a tensor with more dimensions cannot be loaded."""
MAX_KEY_BYTES = 65535
"""Longest metadata key the specification allows."""
MAX_ARRAY_DEPTH = 4
"""Arrays of arrays nested deeper than this are refused: no real metadata nests at all."""
MAX_VARIABLE_ITEMS = 8_000_000
"""Strings and nested arrays read one by one in a header (vocabularies and merges reach ~10**6); beyond this a
header is refused as too large to analyse, which bounds the parse time of a file of billions of empty strings."""
MAX_TENSORS = 1_000_000
"""More tensors than any real model has."""
MAX_METADATA_KEYS = 100_000
"""More metadata keys than any real file has (they hold about fifty; vocabularies are single array values)."""
WINDOW_BYTES = 1024 * 1024
"""Bytes read at a time while stepping over the strings of an array."""
MAX_KEPT_STRING_BYTES = 4 * 1024 * 1024 + 4
"""Chat-template values are kept up to this many bytes (the template check refuses longer ones anyway)."""
MAX_EXAMPLES = 10
"""Tensor names listed in a finding's evidence; the count says how many there were in all."""
MAX_NAME_CHARS = 200
"""Longest key or tensor name quoted in a finding."""
MIN_KV_BYTES = 8 + 4 + 1
"""Smallest metadata entry: key length, value type, a one-byte value."""
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
"""Smallest tensor info: name length, dimension count, type, offset."""
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
"""The default chat template; named templates are ``tokenizer.chat_template.<name>``."""

# GGUF value types: struct format of the fixed-size ones; 8 is a string and 9 an array.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_UINT32 = 4

_H = Severity.HIGH
R_BAD_MAGIC = "static.gguf.bad-magic"
R_VERSION = "static.gguf.unsupported-version"
R_TRUNCATED = "static.gguf.truncated"
R_COUNTS = "static.gguf.count-exceeds-file"
R_LENGTH = "static.gguf.length-exceeds-file"
R_VALUE_TYPE = "static.gguf.bad-value-type"
R_KEY = "static.gguf.bad-key"
R_DUPLICATE_KEY = "static.gguf.duplicate-key"
R_ALIGNMENT = "static.gguf.bad-alignment"
R_TENSOR_INFO = "static.gguf.bad-tensor-info"
R_OUTSIDE = "static.gguf.tensor-outside-file"
R_MISALIGNED = "static.gguf.misaligned-tensor"
R_OVERLAP = "static.gguf.tensor-overlap"
R_TOO_LARGE = "static.gguf.too-large-to-analyse"

RULES = {
    R_BAD_MAGIC: "A file sniffed as GGUF does not start with the GGUF magic",
    R_VERSION: "A GGUF version that loaders do not read",
    R_TRUNCATED: "A GGUF file ends inside its header",
    R_COUNTS: "The declared tensor or metadata count is more than the file's size can hold",
    R_LENGTH: "A string or array length in the header runs past the end of the file",
    R_VALUE_TYPE: "A metadata value has a type the format does not define",
    R_KEY: "A metadata key is empty, too long or not UTF-8",
    R_DUPLICATE_KEY: "A metadata key or tensor name appears twice; loaders refuse it or disagree on which wins",
    R_ALIGNMENT: "general.alignment is not a power-of-two uint32",
    R_TENSOR_INFO: "A tensor info has an unknown type, too many dimensions or a shape its type cannot hold",
    R_OUTSIDE: "A tensor's bytes lie past the end of the file",
    R_MISALIGNED: "A tensor's offset is not a multiple of the data alignment",
    R_OVERLAP: "Two tensors share bytes",
    R_TOO_LARGE: "A GGUF header too large to analyse within the scan's limits",
}


class GGUFFormatError(ValueError):
    """The header is malformed at ``offset``; ``rule`` names the problem. Parsing stops there."""

    def __init__(self, rule: str, message: str, offset: int) -> None:
        super().__init__(message)
        self.rule = rule
        self.offset = offset


@dataclass
class GGUFArray:
    """An array value, described instead of kept: its items are skipped, not loaded."""

    item_type: int
    count: int


@dataclass
class TensorInfo:
    """One tensor as the header declares it; ``offset`` is relative to the start of the data section."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass
class GGUFHeader:
    """What a GGUF header declares, once every count and length in it was checked against the file size."""

    version: int
    byte_order: str
    """``<`` or ``>`` (struct prefix)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Scalars as Python values, arrays as ``GGUFArray``, strings as ``bytes``: chat templates up to
    ``MAX_KEPT_STRING_BYTES``, other strings only their first ``MAX_NAME_CHARS`` bytes (the rest is skipped)."""
    value_types: dict[str, int] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0
    """File offset of the tensor data (end of the header, padded to the alignment)."""
    alignment: int = DEFAULT_ALIGNMENT


class _Reader:
    """Sequential reads that never pass the end of the file: every length is checked before it is read."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh = fh
        self.size = size
        self.pos = 0
        self.order = "<"
        self.variable_items = 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def read(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise GGUFFormatError(R_TRUNCATED, f"the file ends inside the header while reading {what} "
                                               f"({n} bytes needed at offset {self.pos}, {self.left} left)", self.pos)
        data = self.fh.read(n)
        self.pos += n
        return data

    def unpack(self, fmt: str, what: str) -> Any:
        fmt = self.order + fmt
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def skip(self, n: int) -> None:
        self.fh.seek(n, 1)
        self.pos += n

    def count_variable_item(self, n: int = 1) -> None:
        """``n`` more strings or nested arrays read item by item; too many and the header is refused."""
        self.variable_items += n
        if self.variable_items > MAX_VARIABLE_ITEMS:
            raise GGUFFormatError(R_TOO_LARGE, f"the header holds more than {MAX_VARIABLE_ITEMS} strings or "
                                               f"arrays, more than any real model", self.pos)

    def length(self, what: str, item_bytes: int = 1) -> int:
        """A uint64 length whose items (at least ``item_bytes`` each) must fit in the bytes left."""
        at = self.pos
        n = int(self.unpack("Q", f"the length of {what}"))
        if n * item_bytes > self.left:
            raise GGUFFormatError(R_LENGTH, f"{what} declares {n} {'bytes' if item_bytes == 1 else 'items'} at "
                                            f"offset {at}, but only {self.left} bytes are left in the file", at)
        return n

    def skip_strings(self, count: int, what: str) -> None:
        """Step over ``count`` length-prefixed strings (a vocabulary) through a window of the file, each length
        checked against the bytes left: about ten times faster than one read per string."""
        self.count_variable_item(count)
        window, base, i = b"", self.pos, 0  # window[0] is at file offset base; i is the cursor in it
        width = struct.calcsize(self.order + "Q")
        for _ in range(count):
            if i + width > len(window):
                self.fh.seek(base + i)
                base, i = base + i, 0
                window = self.fh.read(WINDOW_BYTES)
                if len(window) < width:
                    self.pos = base
                    raise GGUFFormatError(R_TRUNCATED, f"the file ends inside the header while reading {what}",
                                          base)
            n = struct.unpack_from(self.order + "Q", window, i)[0]
            left = self.size - (base + i + width)
            if n > left:
                raise GGUFFormatError(R_LENGTH, f"{what} declares {n} bytes at offset {base + i}, but only {left} "
                                                f"bytes are left in the file", base + i)
            i += width + n
        self.pos = base + i
        self.fh.seek(self.pos)

    def string(self, what: str, *, keep: int = 0) -> bytes | None:
        """A length-prefixed string: its bytes when it is at most ``keep`` long (or the first ``keep``), else None."""
        self.count_variable_item()
        n = self.length(what)
        if n <= keep:
            return self.read(n, what)
        if keep:
            head = self.read(keep, what)
            self.skip(n - keep)
            return head
        self.skip(n)
        return None


def _short(text: str) -> str:
    return text if len(text) <= MAX_NAME_CHARS else text[:MAX_NAME_CHARS] + "..."


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse and check a GGUF header; raises ``GGUFFormatError`` at the first structural problem.

    Time and memory are bounded by the header's own bytes: counts are checked against the file size before any
    loop, and string and array contents are skipped with a seek unless they are kept (chat templates).

    Raises:
        GGUFFormatError: the header is malformed (the rule and the offset say where and how).
        OSError: the file cannot be read.
    """
    with path.open("rb") as fh:
        reader = _Reader(fh, path.stat().st_size)
        magic = reader.read(4, "the magic")
        if magic != GGUF_MAGIC:
            raise GGUFFormatError(R_BAD_MAGIC, f"starts with {magic!r}, not the GGUF magic", 0)
        raw_version = reader.read(4, "the version")
        version = struct.unpack("<I", raw_version)[0]
        if version & 0xFFFF == 0:  # big-endian files, as the gguf package detects them
            reader.order = ">"
            version = struct.unpack(">I", raw_version)[0]
        if version not in SUPPORTED_VERSIONS:
            raise GGUFFormatError(R_VERSION, f"GGUF version {version} is not one loaders read "
                                             f"({', '.join(map(str, SUPPORTED_VERSIONS))})", 4)
        header = GGUFHeader(version=version, byte_order=reader.order)
        n_tensors = int(reader.unpack("Q", "the tensor count"))
        n_kv = int(reader.unpack("Q", "the metadata key count"))
        _check_counts(reader, n_tensors, n_kv)
        for _ in range(n_kv):
            _read_kv(reader, header)
        _read_alignment(header)
        names: set[str] = set()
        for _ in range(n_tensors):
            info = _read_tensor_info(reader)
            if info.name in names:
                raise GGUFFormatError(R_DUPLICATE_KEY, f"tensor {_short(info.name)!r} is declared twice", reader.pos)
            names.add(info.name)
            header.tensors.append(info)
        pad = -reader.pos % header.alignment
        if header.tensors and pad > reader.left:  # a file without tensors (a vocabulary) needs no data section
            raise GGUFFormatError(R_TRUNCATED, f"the file ends before the aligned start of the tensor data "
                                               f"(offset {reader.pos + pad}, file size {reader.size})", reader.pos)
        header.data_start = reader.pos + pad
        return header


def _check_counts(reader: _Reader, n_tensors: int, n_kv: int) -> None:
    """Counts larger than the bytes left can hold are forged (or the file is cut); refuse them before any loop."""
    need = n_tensors * MIN_TENSOR_INFO_BYTES + n_kv * MIN_KV_BYTES
    if need > reader.left:
        raise GGUFFormatError(R_COUNTS, f"declares {n_tensors} tensors and {n_kv} metadata keys, which need at least "
                                        f"{need} bytes, but only {reader.left} bytes follow", 8)
    if n_tensors > MAX_TENSORS or n_kv > MAX_METADATA_KEYS:
        raise GGUFFormatError(R_TOO_LARGE, f"declares {n_tensors} tensors and {n_kv} metadata keys, more than any "
                              f"real model has (limits {MAX_TENSORS} and {MAX_METADATA_KEYS})", 8)


def _read_kv(reader: _Reader, header: GGUFHeader) -> None:
    at = reader.pos
    raw = reader.string("a metadata key", keep=MAX_KEY_BYTES + 1)
    assert raw is not None  # keep > 0 always returns bytes
    if not raw or len(raw) > MAX_KEY_BYTES:
        raise GGUFFormatError(R_KEY, f"metadata key at offset {at} is empty or longer than {MAX_KEY_BYTES} bytes", at)
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GGUFFormatError(R_KEY, f"metadata key at offset {at} is not UTF-8: {raw[:MAX_NAME_CHARS]!r}",
                              at) from None
    if key in header.metadata:
        raise GGUFFormatError(R_DUPLICATE_KEY, f"metadata key {_short(key)!r} appears twice", at)
    vtype = int(reader.unpack("I", f"the value type of {_short(key)!r}"))
    keep = MAX_KEPT_STRING_BYTES if key.startswith(CHAT_TEMPLATE_KEY) else MAX_NAME_CHARS
    header.value_types[key] = vtype
    header.metadata[key] = _read_value(reader, vtype, key, keep=keep, depth=0)


def _read_value(reader: _Reader, vtype: int, key: str, *, keep: int, depth: int) -> Any:
    """One value of type ``vtype``; arrays are walked (strings and nested arrays) or skipped (fixed-size items)."""
    what = f"the value of {_short(key)!r}"
    if vtype in _SCALAR_FORMATS:
        return reader.unpack(_SCALAR_FORMATS[vtype], what)
    if vtype == _STRING:
        return reader.string(what, keep=keep)
    if vtype != _ARRAY:
        raise GGUFFormatError(R_VALUE_TYPE, f"{_short(key)!r} has value type {vtype}, which GGUF does not define",
                              reader.pos - 4)
    if depth >= MAX_ARRAY_DEPTH:
        raise GGUFFormatError(R_VALUE_TYPE, f"{_short(key)!r} nests arrays more than {MAX_ARRAY_DEPTH} deep",
                              reader.pos)
    item_type = int(reader.unpack("I", f"the item type of {_short(key)!r}"))
    if item_type in _SCALAR_FORMATS:
        count = reader.length(what, struct.calcsize(_SCALAR_FORMATS[item_type]))
        reader.skip(count * struct.calcsize(_SCALAR_FORMATS[item_type]))
    elif item_type == _STRING:
        count = reader.length(what, 8)
        reader.skip_strings(count, f"an item of {_short(key)!r}")
    elif item_type == _ARRAY:
        count = reader.length(what, 12)
        for _ in range(count):
            reader.count_variable_item()
            _read_value(reader, _ARRAY, key, keep=0, depth=depth + 1)
    else:
        raise GGUFFormatError(R_VALUE_TYPE, f"{_short(key)!r} is an array of type {item_type}, which GGUF does not "
                                            f"define", reader.pos - 4)
    return GGUFArray(item_type, count)


def _read_alignment(header: GGUFHeader) -> None:
    """general.alignment, when present, must be a power-of-two uint32 (the loaders' own rule)."""
    if "general.alignment" not in header.metadata:
        return
    value, vtype = header.metadata["general.alignment"], header.value_types["general.alignment"]
    if vtype != _UINT32 or value <= 0 or value & (value - 1):  # the type test comes first: value may be no number
        raise GGUFFormatError(R_ALIGNMENT, f"general.alignment is {value!r} (value type {vtype}), not a power-of-two "
                                           f"uint32", 0)
    header.alignment = int(value)


def _read_tensor_info(reader: _Reader) -> TensorInfo:
    at = reader.pos
    raw = reader.string("a tensor name", keep=MAX_KEY_BYTES + 1)
    assert raw is not None
    name = raw.decode("utf-8", errors="replace")
    n_dims = int(reader.unpack("I", f"the dimension count of tensor {_short(name)!r}"))
    if n_dims > MAX_DIMS:
        raise GGUFFormatError(R_TENSOR_INFO, f"tensor {_short(name)!r} declares {n_dims} dimensions (at most "
                                             f"{MAX_DIMS})", at)
    dims = tuple(int(reader.unpack("Q", f"a dimension of tensor {_short(name)!r}")) for _ in range(n_dims))
    ggml_type = int(reader.unpack("I", f"the type of tensor {_short(name)!r}"))
    offset = int(reader.unpack("Q", f"the offset of tensor {_short(name)!r}"))
    return TensorInfo(name, dims, ggml_type, offset)


def tensor_nbytes(info: TensorInfo) -> int:
    """Bytes a tensor occupies, from the ggml block sizes; raises ValueError for an unknown type or a row that
    its type's blocks cannot hold."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # heavy package: only when GGUF is scanned

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(info.ggml_type)]
    except (ValueError, KeyError):
        raise ValueError(f"ggml type {info.ggml_type} is one no loader knows") from None
    if info.dims and info.dims[0] % block:
        raise ValueError(f"rows of {info.dims[0]} elements are not a multiple of its type's block of {block}")
    elements = 1
    for dim in info.dims:
        elements *= dim  # Python integers: a forged shape cannot overflow, it only exceeds the file
    return elements // block * type_size


@dataclass
class _Groups:
    """Tensor problems grouped by rule, so a million bad tensors make one finding each."""

    path: str
    groups: dict[str, tuple[str, list[str], dict[str, Any]]] = field(default_factory=dict)

    def add(self, rule: str, message: str, tensor: str, **evidence: Any) -> None:
        self.groups.setdefault(rule, (message, [], evidence))[1].append(_short(tensor))

    def findings(self) -> Iterator[Finding]:
        for rule, (message, names, evidence) in self.groups.items():
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            yield Finding(rule, _H, f"{self.path}: tensor {names[0]!r}: {message}{more}",
                          location=Location(path=self.path, member=names[0]),
                          evidence={**evidence, "tensors": names[:MAX_EXAMPLES], "count": len(names)})


def tensor_findings(path: str, header: GGUFHeader, size: int) -> Iterator[Finding]:
    """Every tensor must have a known type, lie inside the file, start aligned and share no byte with another."""
    groups = _Groups(path)
    data_bytes = size - header.data_start
    spans: list[tuple[int, int, str]] = []
    for info in header.tensors:
        try:
            nbytes = tensor_nbytes(info)
        except ValueError as exc:
            groups.add(R_TENSOR_INFO, str(exc), info.name, ggml_type=info.ggml_type, dims=list(info.dims))
            continue
        if info.offset % header.alignment:
            groups.add(R_MISALIGNED, f"offset {info.offset} is not a multiple of the alignment {header.alignment}",
                       info.name, offset=info.offset, alignment=header.alignment)
        if info.offset + nbytes > data_bytes:
            groups.add(R_OUTSIDE, f"its {nbytes} bytes at data offset {info.offset} run past the end of the file "
                                  f"({data_bytes} data bytes): the file is truncated or the header is forged",
                       info.name, offset=info.offset, nbytes=nbytes, data_bytes=data_bytes)
            continue
        spans.append((info.offset, info.offset + nbytes, info.name))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            groups.add(R_OVERLAP, f"shares bytes with tensor {_short(first)!r}; two names read the same data",
                       second, other=_short(first))
    yield from groups.findings()


def inspect_gguf(path: Path, entry: FileEntry) -> tuple[GGUFHeader | None, list[Finding]]:
    """The parsed header (None when it is malformed) and every finding for one GGUF file; never raises."""
    try:
        header = read_gguf_header(path)
    except GGUFFormatError as exc:
        return None, [Finding(exc.rule, _H, f"{entry.path}: malformed GGUF header: {exc}; loaders would fail or "
                                            f"misread it", location=Location(path=entry.path),
                              evidence={"problem": str(exc), "offset": exc.offset, "size": entry.size})]
    except OSError as exc:
        return None, [Finding(R_TRUNCATED, _H, f"{entry.path}: cannot read the GGUF header: {exc.strerror or exc}",
                              location=Location(path=entry.path), evidence={"problem": str(exc)})]
    return header, list(tensor_findings(entry.path, header, entry.size))


def gguf_chat_templates(header: GGUFHeader) -> Iterator[tuple[str, bytes | None]]:
    """``tokenizer.chat_template`` and ``tokenizer.chat_template.<name>`` values: (key, raw bytes, or None when
    the value is not a string)."""
    for key, value in header.metadata.items():
        if key == CHAT_TEMPLATE_KEY or key.startswith(CHAT_TEMPLATE_KEY + "."):
            yield key, value if isinstance(value, bytes) else None


@static_check("static.gguf", rules=RULES,
              description="GGUF header parsed with bounded reads: counts, lengths, types, tensor layout")
def check_gguf(ctx: StaticContext) -> Iterator[Finding]:
    """Validate the header of every file whose bytes are GGUF (its chat templates go to ``static.tokenizer``)."""
    for entry in ctx.by_type("gguf"):
        yield from inspect_gguf(ctx.path(entry.path), entry)[1]
