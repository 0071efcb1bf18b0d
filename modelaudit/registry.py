"""Decorator registries for plugins: static checks, report writers, and later stages' generators.

Built-ins and third-party plugins take the same path: a module listed under the ``modelaudit``
entry-point group is imported, and its decorators register what it defines (as ``llm`` does with
``DEFAULT_PLUGINS``). ``BUILTIN_PLUGINS`` keeps a source checkout that was never pip-installed working.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "modelaudit"

BUILTIN_PLUGINS = (
    "modelaudit.static.inventory",
    "modelaudit.static.pickles",
    "modelaudit.static.safetensors_integrity",
    "modelaudit.static.custom_code",
    "modelaudit.static.chat_template",
    "modelaudit.static.config_card",
    "reports.writers",
    "triggersearch.generators",
    "triggersearch.behaviours",
    "modelaudit.stage_rules",
)


@dataclass
class Plugin(Generic[T]):
    """A registered object with the metadata that reports and SARIF need."""

    name: str
    """Stable dotted name, e.g. ``static.pickle``."""
    obj: T
    """The function or class."""
    description: str = ""
    """One line for help texts and SARIF rule metadata."""
    rules: dict[str, str] = field(default_factory=dict)
    """Rule ids this plugin can emit, with a short description each."""
    options: dict[str, Any] = field(default_factory=dict)
    """Free-form extra metadata (e.g. a writer's file extension)."""


class Registry(Generic[T]):
    """Name -> plugin map with a registering decorator; duplicate names are a programming error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Plugin[T]] = {}

    def register(self, name: str, *, description: str = "", rules: dict[str, str] | None = None,
                 **options: Any) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing.obj is not obj:
                if getattr(existing.obj, "__qualname__", None) != getattr(obj, "__qualname__", object()):
                    raise ValueError(f"{self.kind} {name!r} is already registered")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._items[name] = Plugin(name=name, obj=obj, description=description or (doc[0] if doc else ""),
                                       rules=dict(rules or {}), options=options)
            return obj

        return decorator

    def get(self, name: str) -> Plugin[T]:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def __iter__(self) -> Iterator[Plugin[T]]:
        load_plugins()
        return iter([self._items[k] for k in sorted(self._items)])

    def __len__(self) -> int:
        load_plugins()
        return len(self._items)


_loaded = False


def load_plugins() -> None:
    """Import built-in and entry-point plugin modules once; a broken third-party plugin only warns."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_PLUGINS:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in BUILTIN_PLUGINS:
            continue
        try:
            ep.load()
        except Exception as exc:  # a third-party plugin must not break scans
            warnings.warn(f"modelaudit plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


static_checks: Registry[Callable[..., Any]] = Registry("static check")
writers: Registry[Callable[..., Any]] = Registry("report writer")
trigger_generators: Registry[Callable[..., Any]] = Registry("trigger generator")
behaviour_detectors: Registry[Callable[..., Any]] = Registry("behaviour detector")
stages: Registry[str] = Registry("scan stage")
"""Model stages by name; the object is the dotted path of the stage function, the rules its findings' ids."""
