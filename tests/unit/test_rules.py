"""The rule catalogue: derived from the registered checks and stages, explained by data/rules.json, shown by
``modelaudit rules``."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelaudit.cli import main
from modelaudit.errors import UsageError
from modelaudit.findings import Severity
from modelaudit.registry import load_plugins
from modelaudit.rulebook import catalogue, catalogue_text, declared_rules, lookup

REPO = Path(__file__).resolve().parents[2]
SOURCE_PACKAGES = ("modelaudit", "probes", "triggersearch")
SEVERITIES = {s.value for s in Severity}


def test_every_emitted_rule_has_an_entry_and_every_entry_a_rule() -> None:
    declared = set(declared_rules())
    assert len(declared) > 100  # the built-in checks and stages, not an empty registry
    text = set(catalogue_text())
    assert declared - text == set(), "rules the code can emit but the catalogue does not explain"
    assert text - declared == set(), "catalogue entries for rules no check or stage declares"


def test_every_entry_says_severity_why_and_fix() -> None:
    for rule_id, info in catalogue().items():
        assert info.severities, rule_id
        assert list(info.severities) == sorted(info.severities, reverse=True), f"{rule_id}: list worst first"
        assert len(info.why) > 20 and len(info.fix) > 10, rule_id
        assert info.summary and info.stage in {"static", "weights", "triggers", "probes"}, rule_id


def _string_constants() -> dict[str, dict[str, str]]:
    """Module -> its module-level string names that hold a rule id (modules the plugin loader imported)."""
    load_plugins()
    rules = set(declared_rules())
    out = {}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in SOURCE_PACKAGES and module is not None:
            out[name] = {k: v for k, v in vars(module).items() if isinstance(v, str) and v in rules}
    return out


def _code_severities() -> dict[str, set[str]]:
    """Rule id -> severities a call in the source passes together with that (one) rule id, read with ``ast``."""
    rules = set(declared_rules())
    names = _string_constants()
    found: dict[str, set[str]] = {}
    for package in SOURCE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            consts = names.get(module, {})
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call):
                    continue
                args = [*node.args, *(k.value for k in node.keywords)]
                ids, sevs = set(), set()
                for arg in args:
                    for n in ast.walk(arg):
                        if isinstance(n, ast.Constant) and n.value in rules:
                            ids.add(n.value)
                        elif isinstance(n, ast.Name) and n.id in consts:
                            ids.add(consts[n.id])
                        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) \
                                and n.value.id == "Severity" and n.attr.lower() in SEVERITIES:
                            sevs.add(n.attr.lower())
                if len(ids) == 1 and sevs:
                    found.setdefault(ids.pop(), set()).update(sevs)
    return found


def test_catalogue_severities_cover_what_the_code_emits() -> None:
    """Where a call names one rule and literal severities, the catalogue lists each of them."""
    in_code = _code_severities()
    assert len(in_code) > 40  # the scan of the source found the findings, so the comparison means something
    cat = catalogue()
    wrong = {rule: sorted(sevs - {s.value for s in cat[rule].severities}) for rule, sevs in in_code.items()
             if sevs - {s.value for s in cat[rule].severities}}
    assert wrong == {}


def test_rules_lists_every_rule_with_severity_and_stage() -> None:
    result = CliRunner().invoke(main, ["rules"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[1:] if line.strip()}
    for rule_id, info in catalogue().items():
        assert lines[rule_id][1:3] == [info.severity_text, info.stage]
    assert lines["static.pickle.engine-finding"][1] == "critical/medium"  # several severities are shown


def test_rules_json_is_the_catalogue() -> None:
    result = CliRunner().invoke(main, ["rules", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["id"] for r in data] == sorted(declared_rules())
    first = data[0]
    assert set(first) >= {"id", "severity", "stage", "summary", "why", "fix", "suppress"}


def test_rules_explains_one_rule() -> None:
    result = CliRunner().invoke(main, ["rules", "triggers.backdoor-trigger"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("triggers.backdoor-trigger\n")
    for expected in ("Severity: high", "Stage: triggers", "Why it matters:", "How to fix:",
                     'allow_rules = ["triggers.backdoor-trigger"]'):
        assert expected in out
    as_json = json.loads(CliRunner().invoke(main, ["rules", "static.pickle.dangerous-call", "--format", "json"]).output)
    assert as_json["severity"] == ["critical"] and as_json["stage"] == "static" and as_json["source"] == "static.pickle"


def test_unknown_rule_is_a_usage_error_naming_the_nearest() -> None:
    result = CliRunner().invoke(main, ["rules", "static.pickle.dangerous-cal"])
    assert result.exit_code == 2
    assert "unknown rule 'static.pickle.dangerous-cal'" in result.output
    assert "static.pickle.dangerous-call" in result.output
    with pytest.raises(UsageError, match="rules` lists them all"):
        lookup("zzzz-nothing-like-it")
