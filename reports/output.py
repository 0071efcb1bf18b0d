"""Render a report by format name and write it atomically (a failed scan never leaves partial output)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from modelaudit.errors import UsageError
from modelaudit.findings import Report
from modelaudit.registry import writers


def render(report: Report, fmt: str) -> str:
    """Text of ``report`` in format ``fmt``.

    Raises:
        UsageError: no writer is registered under ``fmt``.
    """
    if fmt not in writers.names():
        raise UsageError(f"unknown format {fmt!r} (known: {', '.join(writers.names())})")
    return writers.get(fmt).obj(report)


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write via a temp file in the same folder and ``os.replace``; the temp file is removed on any error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
