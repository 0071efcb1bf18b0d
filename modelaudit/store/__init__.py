"""The scan store: every report kept under its model's content digest, scan settings and tool version, and
the triage decisions people made about them. SQLite file in the user cache folder by default; any SQLAlchemy
URL (PostgreSQL for a team) when asked.

Why the names resolve lazily: ``modelaudit scan`` imports this package to offer ``--store``, and a scan
without a store must not pay for SQLAlchemy and Alembic; ``open_store`` loads them on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelaudit.lazy import lazy_attributes
from modelaudit.store.errors import StoreError
from modelaudit.store.location import DEFAULT_STORE_ENV, DEFAULT_STORE_WORD, default_store_path, store_url

if TYPE_CHECKING:
    from modelaudit.store.scanstore import ScanStore, open_store

_LAZY = {
    "ScanStore": "modelaudit.store.scanstore",
    "open_store": "modelaudit.store.scanstore",
}
"""Public name -> the module that defines it (it imports SQLAlchemy and Alembic)."""

__all__ = ["DEFAULT_STORE_ENV", "DEFAULT_STORE_WORD", "StoreError", "default_store_path", "store_url", *_LAZY]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
