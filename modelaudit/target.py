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
import stat
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelaudit.errors import TargetNotFoundError, TargetUnreadableError, UsageError
from modelaudit.findings import FileEntry, TargetInfo

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
"""A hub commit id: sha1 (40 hex), or sha256 (64 hex) for repositories that use it."""
_REF_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
"""One segment of a branch or tag name (``main``, ``v1.0``, ``refs/pr/1``): never ``.``, ``..`` or empty."""
_CACHE_REPO = re.compile(r"^(?:models|datasets|spaces)--")
_HASH_CHUNK = 8 * 1024 * 1024
_SNIFF_BYTES = 65536
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

LINK_OUTSIDE = "link-outside"
"""Content type of a symbolic link that leaves the target folder: never opened, read, hashed or sniffed."""
LINK_DANGLING = "link-dangling"
"""Content type of a symbolic link whose target does not exist."""
LINK_LOOP = "link-loop"
"""Content type of a symbolic link that loops (or nests too deep to resolve)."""
UNREAD_LINK_TYPES = frozenset({LINK_OUTSIDE, LINK_DANGLING, LINK_LOOP})
"""Inventory entries no check may open: the static checks see them only through ``StaticContext.unread``."""

GIB = 1024 ** 3


@dataclass(frozen=True)
class ReadLimits:
    """How much the inventory reads to hash the target; a file past a limit is listed but not hashed.

    Hashing is the one place the tool reads every byte, so without a bound a sparse file of a few TB
    (``truncate``) keeps a CI gate busy for hours. A file over a limit gets no digest (``sha256`` None,
    ``unread`` naming the limit) and the ``static.files.not-hashed`` finding; raise the limits through
    ``ScanConfig.read_limits`` for models with larger files.
    """

    max_hash_bytes_per_file: int = 64 * GIB
    """Largest file hashed in full (larger than any single shard or GGUF file in common use)."""
    max_hash_bytes_total: int = 512 * GIB
    """Bytes hashed across the whole target; files past it (in path order) are listed unhashed."""


DEFAULT_READ_LIMITS = ReadLimits()


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
                   offline: bool | None = None, limits: ReadLimits = DEFAULT_READ_LIMITS) -> ResolvedTarget:
    """Resolve TARGET to local files and inventory them.

    Raises:
        TargetNotFoundError: no such path, or a hub id that is not cached while offline.
        TargetUnreadableError: the path exists but holds nothing readable, or a hub cache ref does not
            name a snapshot by its commit sha.
        UsageError: ``revision`` given for a local path, or a revision that is neither a commit sha nor
            a branch or tag name.
    """
    path = Path(spec).expanduser()
    if path.exists() or path.is_symlink():
        if revision is not None:
            raise UsageError(f"--revision applies to hub ids only, but {spec!r} is a local path")
        if path.is_dir():
            root, rels, kind = path.resolve(), None, "folder"
        elif path.is_file() or path.is_symlink():
            # the folder holding the file is the root, so a file that links out of it is judged like any other
            root, rels, kind = path.absolute().parent.resolve(), [path.name], "file"
        else:
            raise TargetUnreadableError(f"{spec}: not a regular file or folder")
        info = TargetInfo(spec=spec, kind=kind, local_path=str(root if kind == "folder" else root / path.name))
    elif looks_like_hub_id(spec):
        root = _download_snapshot(spec, revision=revision, cache_dir=cache_dir, offline=offline)
        rels, kind = None, "hub"
        info = TargetInfo(spec=spec, kind=kind, local_path=str(root), repo_id=spec,
                          requested_revision=revision or "main", resolved_revision=root.name)
    else:
        raise TargetNotFoundError(f"{spec}: no such file or folder, and not a hub id of the form org/name")
    info.files = inventory(root, rels, limits=limits)
    if not info.files:
        raise TargetUnreadableError(f"{spec}: the folder contains no files")
    return ResolvedTarget(info=info, root=root)


def _hub_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)


def check_revision(revision: str) -> None:
    """A revision must be a commit sha or a branch/tag name; a path (``../../etc``) is refused.

    Raises:
        UsageError: anything else, named.
    """
    if _COMMIT_SHA.match(revision) or all(_REF_SEGMENT.match(part) for part in revision.split("/")):
        return
    raise UsageError(f"revision {revision!r} is neither a commit sha nor a branch or tag name")


def _download_snapshot(repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike[str] | None,
                       offline: bool | None) -> Path:
    """Fetch (or find in the cache) a hub snapshot; its folder name is the resolved commit sha."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.file_download import repo_folder_name

    if revision is not None:
        check_revision(revision)
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
    storage = Path(cache if cache is not None else constants.HF_HUB_CACHE) / repo_folder_name(
        repo_id=repo_id, repo_type="model")
    return _checked_snapshot(Path(folder), storage / "snapshots", f"{repo_id}@{revision or 'main'}")


def _checked_snapshot(folder: Path, snapshots: Path, label: str) -> Path:
    """The snapshot folder the hub library returned, if it is ``snapshots/<commit sha>`` and a real folder.

    In the cache a branch name resolves through ``refs/<branch>``, a file whose text the library joins to
    ``snapshots/`` unchecked: a ref holding ``../../../../etc`` would point the scan anywhere.

    Raises:
        TargetUnreadableError: the folder is not named by a commit sha directly in ``snapshots/``, or is a link.
    """
    try:
        ref = folder.relative_to(snapshots).as_posix()
    except ValueError:
        ref = folder.as_posix()
    if not (_COMMIT_SHA.match(ref) and folder.parent == snapshots):
        raise TargetUnreadableError(
            f"{label}: the cache's ref resolves to {ref[:200]!r}, not a commit sha naming a snapshot folder "
            "(a tampered refs/ file); refusing to scan it")
    if folder.is_symlink() or not folder.is_dir():
        raise TargetUnreadableError(f"{label}: snapshot {ref} in the cache is not a real folder")
    return folder


def symlink_escape(root: Path, rel: str) -> str | None:
    """Where a link under ``root`` leads when that is outside the target, else None.

    The one decision on links: the inventory marks such entries ``link-outside`` and nothing reads them.
    Only the path is resolved (``readlink``), the target is never opened. Hub snapshots link every file
    into the repo's ``blobs/`` folder, which is therefore inside the target too.

    Raises:
        OSError, RuntimeError: the link loops (the caller names it).
    """
    path = root / rel
    if not any(p.is_symlink() for p in [path, *path.parents] if root in p.parents or p == path):
        return None
    resolved = path.resolve()
    if any(resolved == area or area in resolved.parents for area in map(Path.resolve, _allowed_areas(root))):
        return None
    return str(resolved)


def _allowed_areas(root: Path) -> list[Path]:
    """The target folder, plus the repo's ``blobs/`` for a hub cache snapshot (``models--x--y/snapshots/<sha>``)."""
    areas = [root]
    snapshots = root.parent
    if snapshots.name == "snapshots" and _CACHE_REPO.match(snapshots.parent.name) and _COMMIT_SHA.match(root.name):
        areas.append(snapshots.parent / "blobs")
    return areas


def inventory(root: Path, rels: list[str] | None = None, *,
              limits: ReadLimits = DEFAULT_READ_LIMITS) -> list[FileEntry]:
    """Hash and sniff every file under ``root`` (or just ``rels``), two files at a time.

    Links that leave the target, dangle or loop are listed with their own content type and never
    opened. Which files are hashed is decided up front in path order, so the per-file and total limits
    give the same inventory on every run. sha256 in OpenSSL releases the GIL on large buffers, so two
    threads keep both cores busy.
    """
    if rels is None:
        rels = _walk(root)
    plans = [plan for plan in map(lambda rel: _plan(root, rel), rels) if plan is not None]
    budget = limits.max_hash_bytes_total
    for plan in plans:
        if plan.content_type is not None:
            continue
        if plan.size > limits.max_hash_bytes_per_file:
            plan.unread = (f"not hashed: {plan.size} bytes exceed the per-file hash limit "
                           f"(max_hash_bytes_per_file = {limits.max_hash_bytes_per_file})")
        elif plan.size > budget:
            plan.unread = (f"not hashed: the total hash limit (max_hash_bytes_total = "
                           f"{limits.max_hash_bytes_total}) was spent on earlier files")
        else:
            budget -= plan.size
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda plan: _entry(root, plan), plans))


def _walk(root: Path) -> list[str]:
    """Every file and link under ``root`` (links to folders included, their contents not followed), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable_folder, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d != ".git"]
        links = [d for d in dirnames if (here / d).is_symlink()]
        for name in [*filenames, *links]:
            found.append((here / name).relative_to(root).as_posix())
    return sorted(found)


def _unreadable_folder(exc: OSError) -> None:
    raise TargetUnreadableError(f"{exc.filename}: cannot list folder: {exc.strerror or exc}")


@dataclass
class _Plan:
    """What the inventory will do with one path: skip it as a bad link, or read it (hashing up to a limit)."""

    rel: str
    size: int = 0
    content_type: str | None = None
    """Set for links that are never opened."""
    unread: str | None = None
    """Why the file is not (fully) read; None when it is hashed."""


def _plan(root: Path, rel: str) -> _Plan | None:
    """None for a link to a folder inside the target: the files in it are listed where they really are."""
    path = root / rel
    try:
        escape = symlink_escape(root, rel)
    except (OSError, RuntimeError):  # a loop: ELOOP, or RuntimeError from resolve() on older Pythons
        return _Plan(rel, content_type=LINK_LOOP, unread="symbolic link loops; not followed")
    if escape is not None:
        return _Plan(rel, content_type=LINK_OUTSIDE,
                     unread=f"symbolic link to {escape}, outside the target folder; not read")
    try:
        st = path.stat()
    except FileNotFoundError:
        return _Plan(rel, content_type=LINK_DANGLING,
                     unread=f"symbolic link to {os.readlink(path)}, which does not exist")
    except OSError as exc:
        if path.is_symlink():
            return _Plan(rel, content_type=LINK_LOOP, unread=f"symbolic link cannot be followed: {exc.strerror}")
        raise TargetUnreadableError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode) and path.is_symlink():
        return None
    if not stat.S_ISREG(st.st_mode):
        raise TargetUnreadableError(f"{path}: not a regular file")
    return _Plan(rel, size=st.st_size)


def _entry(root: Path, plan: _Plan) -> FileEntry:
    if plan.content_type is not None:
        return FileEntry(path=plan.rel, size=0, sha256=None, content_type=plan.content_type, unread=plan.unread)
    path = root / plan.rel
    unread, digest = plan.unread, None
    try:
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(_HASH_CHUNK if unread is None else _SNIFF_BYTES)
            if unread is None:
                digest, size, grew = _hash(fh, head, plan.size)
                if grew:
                    unread = "not hashed: the file grew while it was read"
    except OSError as exc:
        raise TargetUnreadableError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    return FileEntry(path=plan.rel, size=size, sha256=digest if unread is None else None,
                     content_type=sniff(path, head[:_SNIFF_BYTES], size), unread=unread)


def _hash(fh: BinaryIO, head: bytes, planned: int) -> tuple[str, int, bool]:
    """sha256 of ``head`` and the rest of ``fh``, reading at most the ``planned`` size the limits allowed.

    Returns the digest, the bytes hashed, and whether the file holds more than planned (it grew).
    """
    digest = hashlib.sha256()
    buf, done = head, 0
    while buf:
        digest.update(buf)
        done += len(buf)
        if done >= planned:
            return digest.hexdigest(), done, bool(fh.read(1))
        buf = fh.read(min(_HASH_CHUNK, planned - done))
    return digest.hexdigest(), done, False


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
