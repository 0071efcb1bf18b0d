"""The command line end to end: exit codes, one-line errors, atomic output, hub ids through a built cache."""

from __future__ import annotations

import importlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelaudit.cli import main
from tests.unit.test_target import SHA_MAIN, make_hub_cache

def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_clean_model_passes_with_json_report(clean_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, _, err = _run("scan", str(clean_model), "--stages", "static", "--format", "json", "--output", str(out))
    data = json.loads(out.read_text())
    assert code == 0, err
    assert data["verdict"] == "pass"
    assert {"schema_version", "verdict", "findings", "errors", "coverage", "target"} <= set(data)
    assert all(f["severity"] in {"info", "low"} for f in data["findings"])
    assert {f["path"] for f in data["target"]["files"]} >= {"model.safetensors", "config.json", "tokenizer.json"}


def test_tampered_model_is_unsafe_and_exits_1(tampered_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, _, _ = _run("scan", str(tampered_model), "--format", "json", "--output", str(out))
    data = json.loads(out.read_text())
    assert code == 1
    assert data["verdict"] == "unsafe-files"
    rules = {(f["rule_id"].rsplit(".", 1)[0], f["location"]["path"]) for f in data["findings"]
             if f["severity"] in {"high", "critical"}}
    assert ("static.pickle", "training_args.bin") in rules
    assert ("static.custom-code", "modeling_tampered.py") in rules
    # Behavioural stages refuse to load a model whose files execute code.
    assert "not loaded" in " ".join(data["coverage"]["triggers"]["notes"] + data["coverage"]["probes"]["notes"]) \
        or data["coverage"]["triggers"]["status"] == "skipped"


def test_missing_target_one_line_exit_3_no_output(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, stdout, err = _run("scan", str(tmp_path / "absent"), "--format", "json", "--output", str(out))
    assert code == 3
    assert err.strip().count("\n") == 0 and "absent" in err and "no such file or folder" in err
    assert "Traceback" not in err + stdout
    assert not out.exists()


def test_unknown_format_is_usage_error_and_writes_nothing(clean_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.xml"
    code, _, err = _run("scan", str(clean_model), "--format", "xml", "--output", str(out))
    assert code == 2 and "'xml' is not one of 'console'" in err  # a click.Choice: completion and the known values
    assert not out.exists()
    code, _, err = _run("scan", str(clean_model), "--stages", "static,vibes")
    assert code == 2 and "unknown stage" in err


def test_hub_id_offline_cache(tmp_path: Path) -> None:
    make_hub_cache(tmp_path)
    out = tmp_path / "r.json"
    code, _, err = _run("scan", "acme/tiny", "--cache-dir", str(tmp_path), "--offline", "--stages", "static",
                        "--format", "json", "-o", str(out))
    assert code in (0, 1), err  # resolution is the point; the bare cached repo cannot run the model stages
    assert json.loads(out.read_text())["target"]["resolved_revision"] == SHA_MAIN
    code, _, err = _run("scan", "acme/tiny", "--cache-dir", str(tmp_path), "--offline", "--format", "json",
                        "-o", str(out))
    assert code == 3 and json.loads(out.read_text())["verdict"] == "incomplete", err  # model stages failed: closed
    code, _, err = _run("scan", "acme/absent", "--cache-dir", str(tmp_path), "--offline")
    assert code == 3 and "acme/absent@main" in err


def test_truncated_safetensors_is_named_in_a_finding(clean_model: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "trunc"
    shutil.copytree(clean_model, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    out = tmp_path / "r.json"
    code, _, _ = _run("scan", str(folder), "--stages", "static", "--format", "json", "-o", str(out))
    findings = json.loads(out.read_text())["findings"]
    assert code == 1
    assert any(f["location"]["path"] == "model.safetensors" and f["rule_id"].startswith("static.safetensors")
               and f["severity"] in {"high", "critical"} for f in findings)


def test_report_command_rerenders_json_as_sarif(clean_model: Path, tmp_path: Path) -> None:
    js = tmp_path / "r.json"
    _run("scan", str(clean_model), "--stages", "static", "--format", "json", "-o", str(js))
    sarif = tmp_path / "r.sarif"
    code, _, err = _run("report", str(js), "--format", "sarif", "-o", str(sarif))
    assert code == 0, err
    assert json.loads(sarif.read_text())["version"] == "2.1.0"
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    code, _, err = _run("report", str(bad))
    assert code == 3 and "not a modelaudit JSON report" in err


def test_console_output_shows_verdict(tampered_model: Path) -> None:
    code, stdout, _ = _run("scan", str(tampered_model), "--stages", "static")
    assert code == 1
    assert "unsafe-files" in stdout and "static.pickle" in stdout


@pytest.mark.parametrize("fmt", ["sarif", "html", "junit", "markdown", "json"])
def test_a_file_name_that_is_not_utf8_is_reported_not_a_crash(clean_model: Path, tmp_path: Path, fmt: str) -> None:
    """Issue 17 item 13: a non-UTF-8 file name crashed the SARIF, HTML and Markdown writers."""
    import os
    import shutil

    folder = tmp_path / "odd"
    shutil.copytree(clean_model, folder)
    with open(os.path.join(os.fsencode(folder), b"we\xffird.bin"), "wb") as fh:
        fh.write(b"not a model file")
    out = tmp_path / f"r.{fmt}"
    code, stdout, err = _run("scan", str(folder), "--stages", "static", "--format", fmt, "-o", str(out))
    assert code in (0, 1) and "Traceback" not in stdout + err, err
    text = out.read_text(encoding="utf-8")  # valid UTF-8 however odd the name
    if fmt == "junit":
        ET.fromstring(text)  # well-formed XML
    else:
        assert "we%FFird.bin" in text if fmt == "sarif" else "ird.bin" in text


def test_an_unwritable_output_path_is_a_usage_error(clean_model: Path) -> None:
    """Issue 17 item 14: ``-o /proc/nope/r.json`` printed a traceback and exited 1."""
    code, stdout, err = _run("scan", str(clean_model), "--stages", "static", "-o", "/proc/nope/r.json")
    assert code == 2 and "/proc/nope/r.json: cannot write the output file" in err
    assert "Traceback" not in stdout + err


def test_an_unexpected_error_is_one_line_and_fails_closed(monkeypatch: pytest.MonkeyPatch, clean_model: Path) -> None:
    """A bug inside a command must neither pass a gate (exit 0/1) nor print a traceback at the user."""
    scan_cli = importlib.import_module("modelaudit.cli.scan")  # the package's `scan` attribute is the command

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(scan_cli, "run_scan", broken)
    code, stdout, err = _run("scan", str(clean_model), "--stages", "static")
    assert code == 3 and "unexpected TypeError: a bug" in err and "Traceback" not in stdout + err
