"""Public names of a package resolved on first use (PEP 562 module ``__getattr__``/``__dir__``).

Why: importing any submodule runs its package's ``__init__`` first, and the plugin registry imports
submodules of ``modelaudit`` and ``triggersearch`` on the way to every scan, static-only ones included.
A package that re-exported its public names eagerly would load the orchestrator, the search or torch for
all of them, so both packages name their public objects here and import each on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str], namespace: dict[str, Any]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each public name to its module; a resolved
    name is stored in ``namespace`` (the package's globals) so later lookups skip the hook."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
