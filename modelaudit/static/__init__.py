"""Supply-chain checks on files only: nothing here imports, unpickles or executes what it reads."""

from modelaudit.static.base import StaticContext, run_static_checks, static_check

__all__ = ["StaticContext", "run_static_checks", "static_check"]
