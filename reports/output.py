"""Render a report by format name and write it atomically (a failed scan never leaves partial output)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from modelaudit.findings import Report
from modelaudit.registry import rule_descriptions

__all__ = ["render", "rule_descriptions", "write_atomic"]


def render(report: Report, fmt: str) -> str:
    """Text of ``report`` in format ``fmt`` (``Report.render``: the CLI and the Python API share it).

    Raises:
        UsageError: no writer is registered under ``fmt``.
    """
    return report.render(fmt)


def _default_mode() -> int:
    """Mode a plain ``open(path, "w")`` would give: ``mkstemp`` makes 0600 files, too strict for a CI artifact."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part.

    Writes a temp file in the same folder (so ``os.replace`` is a rename on one file system), fsyncs
    it, then replaces the target. On any error the temp file is removed and an existing target is
    left untouched. The new file keeps an existing target's permissions, else the umask default.

    Raises:
        OSError: the folder cannot be written or ``path`` is a directory.
        TypeError: ``text`` is not a string.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = _default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # backslashreplace: a file name that is not UTF-8 reaches the report as surrogate escapes; it is
        # written as \udcXX text (the file stays valid UTF-8 and the name stays recognisable), never a crash
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort, since some platforms cannot open a directory."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
