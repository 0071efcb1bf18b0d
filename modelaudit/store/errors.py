"""The store's own error: a database that was opened fine but failed during an operation."""

from __future__ import annotations

from modelaudit.errors import ModelAuditError


class StoreError(ModelAuditError, RuntimeError):
    """Reading or writing the scan store failed after it was opened (connection lost, disk full, locked for
    longer than the busy timeout). The message names the store (password masked) and the problem; the
    command exits as incomplete, because the result could not be kept or read."""
