"""What a fleet scan scans: targets from a manifest file or from a Hugging Face cache.

A manifest is YAML (a list, or a mapping with a ``targets`` list; each item a target or a mapping with
``target``, ``base``, ``revision``, ``policy``) or plain text with one target per line. A relative path in
a manifest (target, base or policy) is read from the manifest's folder when it exists there, so a manifest
kept beside its models works from any working directory; any other text is kept as given (a hub id, or a
path relative to the working directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelaudit.errors import TargetNotFoundError, TargetUnreadableError, UsageError
from modelaudit.policy import Policy
from modelaudit.progress import LOGGER

YAML_SUFFIXES = (".yaml", ".yml", ".json")
"""Manifest files read as YAML (JSON is YAML); any other file is one target per line."""
ITEM_KEYS = ("target", "base", "revision", "policy")
"""The keys a manifest item may have."""
COMMENT = "#"
"""A line of a plain-text manifest that starts with this (after spaces) is a comment."""
MAIN_REF = "main"


@dataclass(frozen=True)
class FleetTarget:
    """One model of a fleet and how to scan it."""

    target: str
    """A hub id, a local model folder or one model file (as ``modelaudit scan`` takes it)."""
    base: str | None = None
    """The claimed base model for the weight comparison; None: the fleet's ``--base`` default."""
    revision: str | None = None
    """Hub revision (branch, tag or commit sha)."""
    policy: str | None = None
    """Path of a ``modelaudit.toml`` whose policy this model is judged by; None: the fleet's policy."""

    def read_policy(self) -> Policy | None:
        """This target's own policy, or None when it has none.

        Raises:
            UsageError: the policy file cannot be read or has unknown keys.
        """
        return None if self.policy is None else Policy.from_toml(self.policy)


@dataclass
class CacheTargets:
    """What a Hugging Face cache holds: the models to scan, and the repositories that cannot be scanned."""

    targets: list[FleetTarget] = field(default_factory=list)
    """One per model repository, pinned to the commit its ``main`` ref names."""
    problems: list[str] = field(default_factory=list)
    """Repositories the hub library found corrupted (no snapshots, a bad ref), one line each: they are not
    audited, so a fleet run reports them and does not pass."""


def read_manifest(path: str | Path) -> list[FleetTarget]:
    """The targets a manifest lists, in its order.

    Raises:
        TargetNotFoundError: no such manifest file.
        TargetUnreadableError: the file cannot be read.
        UsageError: invalid YAML, an item that is neither a target nor a mapping, unknown keys (named with
            the item number), an unreadable policy file, the same item listed twice, or no target at all.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetNotFoundError(f"{path}: no such manifest file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetUnreadableError(f"{path}: cannot read the manifest ({exc})") from None
    items = _yaml_items(text, path) if file.suffix.lower() in YAML_SUFFIXES else _text_items(text)
    folder = file.parent
    targets = [_target(item, n, path, folder) for n, item in enumerate(items, start=1)]
    if not targets:
        raise UsageError(f"{path}: the manifest lists no target")
    seen: dict[FleetTarget, int] = {}
    for n, t in enumerate(targets, start=1):
        if t in seen:
            raise UsageError(f"{path}: item {n} repeats item {seen[t]} ({t.target})")
        seen[t] = n
    return targets


def _yaml_items(text: str, path: str | Path) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if isinstance(data, dict):
        unknown = sorted(set(map(str, data)) - {"targets"})
        if unknown:
            raise UsageError(f"{path}: unknown top-level key(s) {', '.join(unknown)} (a manifest mapping has "
                             "only 'targets')")
        data = data.get("targets")
    if data is None:
        return []
    if not isinstance(data, list):
        raise UsageError(f"{path}: a manifest is a list of targets, or a mapping with a 'targets' list")
    return data


def _text_items(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(COMMENT)]


def _target(item: Any, n: int, path: str | Path, folder: Path) -> FleetTarget:
    """One manifest item as a FleetTarget; ``n`` (1-based) names it in errors."""
    where = f"{path}: item {n}"
    if isinstance(item, str):
        item = {"target": item}
    if not isinstance(item, dict):
        raise UsageError(f"{where}: expected a target or a mapping with 'target', got {type(item).__name__}")
    unknown = sorted(set(map(str, item)) - set(ITEM_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(ITEM_KEYS)})")
    values: dict[str, str | None] = {}
    for key in ITEM_KEYS:
        value = item.get(key)
        if value is not None and not isinstance(value, (str, int, float)):
            raise UsageError(f"{where}: '{key}' must be text, got {type(value).__name__}")
        values[key] = None if value is None else str(value).strip() or None
    spec = values["target"]
    if spec is None:
        raise UsageError(f"{where}: no 'target'")
    target = FleetTarget(target=_beside(spec, folder) or spec, base=_beside(values["base"], folder),
                         revision=values["revision"], policy=_beside(values["policy"], folder))
    try:
        target.read_policy()  # a bad policy file is found before any scan runs
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    return target


def _beside(value: str | None, folder: Path) -> str | None:
    """A relative path that exists in the manifest's folder, as that path; anything else unchanged."""
    if value is None or Path(value).expanduser().is_absolute():
        return value
    candidate = folder / value
    return str(candidate) if candidate.exists() else value


def targets_from_cache(cache_dir: str | Path) -> CacheTargets:
    """Every model repository of a Hugging Face cache (``huggingface_hub.scan_cache_dir``), each pinned to the
    commit its ``main`` ref names (else the newest revision a ref names, else the newest snapshot).

    Datasets and spaces in the cache are not models and are left out.

    Raises:
        TargetNotFoundError: the cache folder does not exist.
        TargetUnreadableError: the path is not a folder or cannot be read.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        raise TargetNotFoundError(f"{cache_dir}: no Hugging Face cache folder there") from None
    except (OSError, ValueError) as exc:
        raise TargetUnreadableError(f"{cache_dir}: cannot read the Hugging Face cache ({exc})") from None
    found = CacheTargets()
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        if not repo.revisions:
            found.problems.append(f"{repo.repo_id}: no snapshot in the cache")
            continue
        newest = sorted(repo.revisions, key=lambda r: (MAIN_REF in r.refs, bool(r.refs), r.last_modified))[-1]
        found.targets.append(FleetTarget(target=repo.repo_id, revision=newest.commit_hash))
    for warning in info.warnings:
        found.problems.append(f"corrupted cache entry, not scanned: {' '.join(str(warning).split())}")
    for problem in found.problems:
        LOGGER.warning("%s", problem)
    return found
