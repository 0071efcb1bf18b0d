"""Resolve a TARGET (hub id, folder, single file) to local files, pinned and inventoried.

Content types are sniffed from bytes, never trusted from extensions: a pickle renamed
``model.safetensors`` must still be treated as a pickle by every later check.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import pickletools
import re
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from modelaudit.errors import TargetNotFoundError, TargetUnreadableError, UsageError
from modelaudit.findings import FileEntry, TargetInfo

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HASH_CHUNK = 8 * 1024 * 1024
_PICKLE_SNIFF_LIMIT = 8 * 1024 * 1024
# Opcodes a real pickle can start with (protocol 0/1 have no PROTO header).
_PICKLE_FIRST_OPCODES = set(b"(c}])NIFLSVUJKMGTX\x80\x8c\x95")
# A stream without a real magic number (zlib's two bytes, lzma "alone"'s properties byte) is believed only when
# a trial decompression of this much of its head succeeds and yields bytes.
_TRIAL_INPUT = 4096
_TRIAL_OUTPUT = 64
# joblib < 0.10 wrote b"ZF" + hex(length) padded to 19 bytes, then one zlib stream.
_JOBLIB_ZFILE = re.compile(rb"ZF0x[0-9a-fA-F]+L? *")
JOBLIB_ZFILE_HEADER = 21


@dataclass
class ResolvedTarget:
    """A target on local disk plus the facts the report records about it."""

    info: TargetInfo
    root: Path

    def file_path(self, rel: str) -> Path:
        return self.root / rel


def looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.startswith((".", "/"))


def resolve_target(spec: str, *, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                   offline: bool | None = None) -> ResolvedTarget:
    """Resolve TARGET to local files and inventory them.

    Raises:
        TargetNotFoundError: no such path, or a hub id that is not cached while offline.
        TargetUnreadableError: the path exists but holds nothing readable.
        UsageError: ``revision`` given for a local path.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if revision is not None:
            raise UsageError(f"--revision applies to hub ids only, but {spec!r} is a local path")
        if path.is_dir():
            root, rels, kind = path.resolve(), None, "folder"
        elif path.is_file():
            root, rels, kind = path.resolve().parent, [path.name], "file"
        else:
            raise TargetUnreadableError(f"{spec}: not a regular file or folder")
        info = TargetInfo(spec=spec, kind=kind, local_path=str(root if kind == "folder" else path.resolve()))
    elif looks_like_hub_id(spec):
        root = _download_snapshot(spec, revision=revision, cache_dir=cache_dir, offline=offline)
        rels, kind = None, "hub"
        info = TargetInfo(spec=spec, kind=kind, local_path=str(root), repo_id=spec,
                          requested_revision=revision or "main", resolved_revision=root.name)
    else:
        raise TargetNotFoundError(f"{spec}: no such file or folder, and not a hub id of the form org/name")
    info.files = inventory(root, rels)
    if not info.files:
        raise TargetUnreadableError(f"{spec}: the folder contains no files")
    return ResolvedTarget(info=info, root=root)


def _hub_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)


def _download_snapshot(repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike[str] | None,
                       offline: bool | None) -> Path:
    """Fetch (or find in the cache) a hub snapshot; its folder name is the resolved commit sha."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = cache_dir if cache_dir is not None else os.environ.get("HF_HUB_CACHE")
    local_only = _hub_offline(offline)
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=local_only)
    except LocalEntryNotFoundError:
        where = f" in cache {cache}" if cache else ""
        mode = "offline mode is on" if local_only else "the hub could not be reached"
        raise TargetNotFoundError(
            f"{repo_id}@{revision or 'main'}: not found{where} and {mode}") from None
    except RevisionNotFoundError:
        raise TargetNotFoundError(f"{repo_id}: revision {revision!r} does not exist") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise TargetNotFoundError(f"{repo_id}: repository not found or not accessible") from None
    except (HfHubHTTPError, OSError) as exc:
        raise TargetUnreadableError(f"{repo_id}: download failed: {exc}") from None
    return Path(folder)


def inventory(root: Path, rels: list[str] | None = None) -> list[FileEntry]:
    """Hash and sniff every file under ``root`` (or just ``rels``), two files at a time.

    sha256 in OpenSSL releases the GIL on large buffers, so two threads keep both cores busy.
    """
    if rels is None:
        rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and ".git" not in p.relative_to(root).parts)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda rel: _entry(root, rel), rels))


def _entry(root: Path, rel: str) -> FileEntry:
    path = root / rel
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            head = fh.read(_HASH_CHUNK)
            buf = head
            while buf:
                digest.update(buf)
                size += len(buf)
                buf = fh.read(_HASH_CHUNK)
    except OSError as exc:
        raise TargetUnreadableError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    return FileEntry(path=rel, size=size, sha256=digest.hexdigest(), content_type=sniff(path, head[:65536], size))


def magic(head: bytes) -> str | None:
    """Format named by leading bytes alone (and a bounded trial decompression for streams without a magic
    number); None when they name none.

    The one magic-byte table: file sniffing below and the pickle scanner's walk through nested
    containers (whose members have no path to look at) both read it.
    """
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head.startswith(b"MZ"):
        return "pe"
    if head[:4] in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):
        return "macho"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return _headerless_compression(head)


def _headerless_compression(head: bytes) -> str | None:
    """zlib, lzma "alone" and old joblib streams, which ``joblib.load`` opens by their first bytes (``x``,
    ``]\\x00``, ``ZF``) whatever the file is called: named only when a bounded trial decompression works."""
    if head.startswith(b"ZF") and _JOBLIB_ZFILE.fullmatch(head[:JOBLIB_ZFILE_HEADER]):
        return "joblib-zfile" if _trial(zlib.decompressobj(), head[JOBLIB_ZFILE_HEADER:]) else None
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib" if _trial(zlib.decompressobj(), head) else None
    if head.startswith(b"]\x00"):
        return "lzma" if _trial(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), head) else None
    return None


def _trial(decompressor: zlib._Decompress | lzma.LZMADecompressor, head: bytes) -> bool:
    """Whether the start of ``head`` decompresses to some bytes without an error (bounded in and out)."""
    try:
        return bool(decompressor.decompress(head[:_TRIAL_INPUT], _TRIAL_OUTPUT))
    except (zlib.error, lzma.LZMAError, EOFError):
        return False


def sniff(path: Path, head: bytes, size: int) -> str:
    """Content type from the leading bytes; the extension is only a tie-breaker for plain text."""
    if size == 0:
        return "empty"
    if len(head) >= 9 and not head.startswith(b"GGUF"):
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < n <= size - 8:
            return "safetensors"
    kind = magic(head)
    if kind == "zip":
        return _sniff_zip(path)
    if kind is not None:
        return kind
    if head[:1] and head[0] in _PICKLE_FIRST_OPCODES and size <= _PICKLE_SNIFF_LIMIT and _parses_as_pickle(path):
        return "pickle"
    text = _as_text(head)
    if text is None:
        return "binary"
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return "json"
    if stripped.startswith("#!"):  # the interpreter line says what runs it
        return "python" if "python" in stripped.split("\n", 1)[0] else "script"
    if path.suffix == ".py":
        return "python"
    return "text"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return "zip-corrupt"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "pytorch-zip"
    return "zip"


def _parses_as_pickle(path: Path) -> bool:
    """True when the whole file is a well-formed opcode stream ending in STOP (protocol 0/1 pickles)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    try:
        last = None
        for op, _arg, pos in pickletools.genops(io.BytesIO(data)):
            last = (op.name, pos)
    except Exception:  # any parse failure means: not a pickle
        return False
    return last is not None and last[0] == "STOP" and last[1] is not None and last[1] >= len(data.rstrip()) - 1


def _as_text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:  # a multi-byte character cut by the sniff window
            return head[: exc.start].decode("utf-8")
        return None
