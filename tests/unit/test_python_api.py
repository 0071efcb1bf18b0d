"""The Python API (issue 20, item 9): ``from modelaudit import scan`` answers as the CLI does, and the
report renders itself in every CLI format and in a notebook."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from modelaudit.errors import UsageError
from modelaudit.findings import Finding, Location, Report, Severity, TargetInfo, Verdict
from modelaudit.registry import stage_names
from reports.output import render

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def pickle_file(tmp_path: Path) -> Path:
    """A benign pickle of plain data (serialising runs nothing)."""
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps({"step": 3, "lr": [0.1, 0.01]}, protocol=4))
    return path


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_modelaudit_is_light_and_scan_loads_on_first_use() -> None:
    code = ("import sys, modelaudit; before = 'modelaudit.api' in sys.modules; "
            "from modelaudit import scan, ScanConfig, Report; import modelaudit.api as api; "
            "print(before, scan is api.scan, ScanConfig is api.ScanConfig, 'scan' in dir(modelaudit))")
    assert _run(code) == "False True True True"


def test_an_unknown_name_is_an_attribute_error() -> None:
    import modelaudit

    with pytest.raises(AttributeError, match="no_such_name"):
        modelaudit.no_such_name  # noqa: B018


def test_the_default_stages_are_the_cli_default() -> None:
    from modelaudit import ScanConfig
    from modelaudit.cli.scan import parse_stages

    assert ScanConfig().stages == parse_stages(None) == stage_names()
    assert "triggers" in ScanConfig().stages


def test_a_default_scan_runs_every_stage_and_never_passes_on_files_alone(pickle_file: Path) -> None:
    """Before, the library default was static only: a model nobody had run came back ``pass``. Now the
    behaviour stages run too; on a lone pickle they cannot load a model, so the scan is incomplete."""
    from modelaudit import ScanConfig, scan

    assert scan(pickle_file, config=ScanConfig(stages=("static",))).verdict is Verdict.PASS
    report = scan(pickle_file)
    assert set(report.coverage) == set(stage_names())
    assert report.coverage["triggers"].status == "failed"
    assert report.verdict is Verdict.INCOMPLETE


@pytest.fixture()
def report(pickle_file: Path) -> Report:
    from modelaudit import ScanConfig, scan

    out = scan(pickle_file, config=ScanConfig(stages=("static",)))
    out.findings.append(Finding("static.test.hostile", Severity.MEDIUM,
                                'message with </iframe><script>alert("x")</script> in it',
                                location=Location(path="state.pkl")))
    return out


def test_report_renders_the_cli_formats(report: Report) -> None:
    for fmt in ("json", "sarif", "html", "markdown", "junit", "console"):
        assert report.render(fmt) == render(report, fmt)
    assert report.to_json() == render(report, "json")
    assert json.loads(report.to_json())["verdict"] == report.verdict.value
    assert Report.from_dict(json.loads(report.to_json())).to_dict() == report.to_dict()
    sarif = json.loads(report.to_sarif())
    assert sarif["version"] == "2.1.0"
    assert "static.test.hostile" in {r["ruleId"] for r in sarif["runs"][0]["results"]}
    assert report.to_html().lstrip().lower().startswith("<!doctype html")


def test_an_unknown_format_is_a_usage_error(report: Report) -> None:
    with pytest.raises(UsageError, match="unknown format 'pdf'"):
        report.render("pdf")


def test_the_notebook_view_is_the_html_report_in_a_sandboxed_frame(report: Report) -> None:
    """The page's styles stay inside the frame, and model text cannot close the frame or run script."""
    view = report._repr_html_()
    assert view.startswith("<iframe srcdoc=\"") and view.endswith("</iframe>")
    assert " sandbox " in view
    assert view.count("<") == 2 and "<script" not in view  # only the frame's own tags are markup
    import html

    srcdoc = view[len('<iframe srcdoc="'):view.index('" sandbox')]
    assert html.unescape(srcdoc) == report.to_html()


def test_a_report_built_by_hand_renders_too() -> None:
    """A report that no scan produced (built in code, or read back from a saved JSON) renders too."""
    bare = Report(target=TargetInfo(spec="x", kind="file", local_path="/x"), tool_version="0")
    assert json.loads(bare.to_json())["target"]["spec"] == "x"
