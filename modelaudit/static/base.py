"""The contract every static check follows, and the runner that isolates their failures.

A check is a function ``(ctx) -> Iterable[Finding]`` registered with ``@static_check``. It may raise:
the runner turns the exception into a ``ScanError`` and marks coverage partial, so one broken check
never hides the findings of the others (and the verdict fails closed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from modelaudit.findings import FileEntry, Finding, ScanError, StageCoverage
from modelaudit.registry import load_plugins, static_checks
from modelaudit.target import UNREAD_LINK_TYPES

CheckFn = Callable[["StaticContext"], Iterable[Finding]]
MAX_JSON_BYTES = 64 * 1024 * 1024
WEIGHT_TYPES = frozenset({"safetensors", "pickle", "pytorch-zip", "gguf", "numpy"})
"""Sniffed content types of model weights the tool reads; a target without one is no model it can vouch for."""


@dataclass
class StaticContext:
    """Read-only view of the target's files shared by all static checks."""

    root: Path
    files: list[FileEntry]
    base_tokenizer_dir: Path | None = None
    unread: list[FileEntry] = field(default_factory=list)
    """Links the inventory refused to follow (out of the target, dangling, looping): moved out of ``files``
    so that no check opens them; only the files check reports them."""
    _json_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.unread = [*self.unread, *(f for f in self.files if f.content_type in UNREAD_LINK_TYPES)]
        self.files = [f for f in self.files if f.content_type not in UNREAD_LINK_TYPES]

    def path(self, rel: str) -> Path:
        return self.root / rel

    def by_type(self, *content_types: str) -> list[FileEntry]:
        return [f for f in self.files if f.content_type in content_types]

    def find(self, name: str) -> FileEntry | None:
        """The file called ``name`` at the root of the model folder, if present."""
        return next((f for f in self.files if f.path == name), None)

    def read_json(self, rel: str) -> Any:
        """Parse a JSON file once; raises ValueError naming the file when it is not valid JSON."""
        if rel not in self._json_cache:
            path = self.path(rel)
            if path.stat().st_size > MAX_JSON_BYTES:
                raise ValueError(f"{rel}: JSON file larger than {MAX_JSON_BYTES} bytes")
            try:
                self._json_cache[rel] = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise ValueError(f"{rel}: not valid JSON: {exc}") from None
        return self._json_cache[rel]

    @cached_property
    def config(self) -> dict[str, Any] | None:
        """config.json if present and a JSON object; None otherwise (the config check reports why)."""
        if self.find("config.json") is None:
            return None
        try:
            data = self.read_json("config.json")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def static_check(name: str, *, rules: dict[str, str], description: str = "") -> Callable[[CheckFn], CheckFn]:
    """Register a static check under a stable dotted name, declaring the rule ids it can emit."""
    return static_checks.register(name, rules=rules, description=description)


@dataclass
class StaticResult:
    findings: list[Finding]
    errors: list[ScanError]
    coverage: StageCoverage
    seconds: float


def run_static_checks(ctx: StaticContext, *, only: Iterable[str] | None = None) -> StaticResult:
    """Run every registered static check (or those named), isolating failures."""
    load_plugins()
    wanted = set(only) if only is not None else None
    findings: list[Finding] = []
    errors: list[ScanError] = []
    coverage = StageCoverage(status="ran", required=True)
    start = time.perf_counter()
    for plugin in static_checks:
        if wanted is not None and plugin.name not in wanted:
            continue
        try:
            findings.extend(plugin.obj(ctx))
        except Exception as exc:  # isolate: record, lower coverage, keep going
            errors.append(ScanError(stage="static", check=plugin.name, message=f"{type(exc).__name__}: {exc}"))
            coverage.checks_failed.append(plugin.name)
        else:
            coverage.checks_run.append(plugin.name)
    if coverage.checks_failed:
        coverage.status = "partial"
    return StaticResult(findings=findings, errors=errors, coverage=coverage, seconds=time.perf_counter() - start)
