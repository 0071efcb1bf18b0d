"""``scan --store`` and ``triage list/show/decide`` end to end on real SQLite stores and the session's tiny
models: store hits that say so, ``--rescan``, and decisions that later scans of the same content carry
(a false positive no longer fails the gate, a confirmed medium finding does) while other content does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelaudit.cli import main
from modelaudit.store import DEFAULT_STORE_ENV

STATIC = ("--stages", "static")
MEDIUM_RULE = "static.custom-code.trust-remote-code"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={DEFAULT_STORE_ENV: None})
    return result.exit_code, result.stdout, result.stderr


def scan_json(target: Path, store: str, *extra: str) -> tuple[int, dict]:
    code, out, err = run("scan", str(target), *STATIC, "--store", store, "--format", "json", *extra)
    assert code in (0, 1), err
    return code, json.loads(out)


def listing(store: str, *extra: str) -> list[dict]:
    code, out, err = run("triage", "list", "--store", store, "--format", "json", *extra)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture()
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


@pytest.fixture(scope="module")
def medium_model(clean_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean model with a harmless modeling file mapped in ``auto_map``: its worst finding is the medium
    "needs trust_remote_code", so it passes the default gate (fail-on high) as ``suspicious``."""
    folder = tmp_path_factory.mktemp("medium") / "model"
    shutil.copytree(clean_model, folder)
    (folder / "modeling_plain.py").write_text('"""A plain model class."""\n\n\nclass PlainModel:\n    pass\n')
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_plain.PlainModel"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_a_second_scan_is_answered_from_the_store_and_says_so(clean_model: Path, store: str) -> None:
    code, first = scan_json(clean_model, store)
    assert code == 0 and first["scan"]["stored_scan"] is None
    code, out, err = run("scan", str(clean_model), *STATIC, "--store", store)
    assert code == 0
    assert "answered from the scan store (scan 1, made " in " ".join(out.replace("│", " ").split())  # the report
    assert "answered from the scan store" in err and "--rescan" in err
    code, second = scan_json(clean_model, store)
    assert second["scan"]["stored_scan"] == 1 and second["scan"]["stored_at"].endswith("Z")
    assert (code, second["verdict"], second["findings"]) == (0, first["verdict"], first["findings"])
    code, again = scan_json(clean_model, store, "--rescan")
    assert code == 0 and again["scan"]["stored_scan"] is None and again["verdict"] == "pass"
    assert again["scan"]["started_at"] >= first["scan"]["started_at"]
    assert [row["id"] for row in listing(store)] == [1]  # replaced in place, never duplicated


def test_other_settings_are_another_key(clean_model: Path, store: str) -> None:
    scan_json(clean_model, store)
    code, stricter = scan_json(clean_model, store, "--fail-on", "low")
    assert code == 1 and stricter["scan"]["stored_scan"] is None  # a different policy: scanned, stored anew
    assert len(listing(store)) == 2


def test_rescan_needs_a_store(clean_model: Path) -> None:
    code, _, err = run("scan", str(clean_model), *STATIC, "--rescan")
    assert code == 2 and "--rescan applies only with --store" in err


def test_a_false_positive_decision_turns_later_scans_of_the_same_content_into_a_pass(
        tampered_model: Path, store: str, tmp_path: Path) -> None:
    code, report = scan_json(tampered_model, store)
    assert (code, report["verdict"]) == (1, "unsafe-files")
    [row] = listing(store, "--verdict", "unsafe-files")
    assert (row["verdict"], row["verdict_now"], row["decisions"]) == ("unsafe-files", "unsafe-files", {})
    code, out, err = run("triage", "decide", str(row["id"]), "--status", "false-positive", "--by", "alice",
                         "--note", "our own red-team copy, kept offline", "--store", store)
    assert code == 0, err
    assert f"false-positive on {len(report['findings'])} finding(s) of stored scan {row['id']} by alice" in out

    code, decided = scan_json(tampered_model, store)
    assert (code, decided["verdict"], decided["gate"]["exit_code"]) == (0, "pass", 0)
    assert decided["scan"]["stored_scan"] == row["id"]
    decisions = [f["decision"] for f in decided["findings"]]
    assert {d["status"] for d in decisions} == {"false-positive"} and len(decisions) == len(report["findings"])
    assert {(d["note"], d["decided_by"]) for d in decisions} == {("our own red-team copy, kept offline", "alice")}

    sarif_path = tmp_path / "decided.sarif"
    code, _, err = run("scan", str(tampered_model), *STATIC, "--store", store, "--rescan", "--format", "sarif",
                       "-o", str(sarif_path))
    assert code == 0, err  # a new scan of the same content carries the decision too
    properties = json.loads(sarif_path.read_text())["runs"][0]["properties"]
    assert properties["exitCode"] == 0 and "gate passes" in properties["gate"]

    [row] = listing(store, "--verdict", "unsafe-files")  # listed under the verdict it was stored with
    assert (row["verdict"], row["verdict_now"], row["exit_code_now"]) == ("unsafe-files", "pass", 0)
    assert row["decisions"] == {"false-positive": len(report["findings"])} and row["strongest"] is None
    code, shown, _ = run("triage", "show", str(row["id"]), "--store", store, "--format", "json")
    assert code == 0 and json.loads(shown)["verdict"] == "pass"


def test_a_decision_does_not_carry_to_other_content(tampered_model: Path, store: str, tmp_path: Path) -> None:
    scan_json(tampered_model, store)
    code, _, err = run("triage", "decide", "1", "--status", "accepted-risk", "--note", "known", "--store", store)
    assert code == 0, err
    changed = tmp_path / "tampered-copy"
    shutil.copytree(tampered_model, changed)
    (changed / "README.md").write_text("one more file: another content digest\n")
    code, other = scan_json(changed, store)
    assert (code, other["verdict"], other["scan"]["stored_scan"]) == (1, "unsafe-files", None)
    assert all("decision" not in f for f in other["findings"])
    same_bytes = tmp_path / "tampered-same-bytes"  # another folder, the same content: the decision applies
    shutil.copytree(tampered_model, same_bytes)
    code, same = scan_json(same_bytes, store)
    assert (code, same["verdict"], same["scan"]["stored_scan"]) == (0, "pass", 1)


def test_a_confirmed_medium_finding_fails_the_gate(medium_model: Path, store: str) -> None:
    code, report = scan_json(medium_model, store)
    assert (code, report["verdict"]) == (0, "suspicious")
    assert max(f["severity"] for f in report["findings"] if f["rule_id"] == MEDIUM_RULE) == "medium"
    code, out, err = run("triage", "decide", "1", "--status", "confirmed", "--rule", MEDIUM_RULE, "--note",
                         "we never load remote code", "--store", store)
    assert code == 0 and "confirmed on 1 finding(s)" in out, err
    code, decided = scan_json(medium_model, store)
    assert (code, decided["gate"]["exit_code"]) == (1, 1)
    statuses = {f["rule_id"]: f.get("decision", {}).get("status") for f in decided["findings"]}
    assert statuses.pop(MEDIUM_RULE) == "confirmed" and set(statuses.values()) == {None}


def test_triage_list_table_and_show_formats(clean_model: Path, tampered_model: Path, store: str,
                                           tmp_path: Path) -> None:
    scan_json(clean_model, store)
    scan_json(tampered_model, store)
    code, out, err = run("triage", "list", "--store", store)
    assert code == 0, err
    assert all(word in out for word in ("stored scans (2)", "strongest evidence", "unsafe-files", "pass",
                                        str(tampered_model), "static.", "decisions"))
    assert [r["id"] for r in listing(store, "--verdict", "pass,backdoored")] == [1]
    for fmt, marker in (("markdown", "unsafe-files"), ("sarif", '"version": "2.1.0"'), ("junit", "<testsuite"),
                        ("html", "<html")):
        path = tmp_path / f"show.{fmt}"
        code, _, err = run("triage", "show", "2", "--store", store, "--format", fmt, "-o", str(path))
        assert code == 0 and marker in path.read_text(), err
    code, out, _ = run("triage", "show", "2", "--store", store)
    assert code == 0 and "unsafe-files" in out


@pytest.mark.parametrize(("args", "message"), [
    (("triage", "show", "7"), "no stored scan 7"),
    (("triage", "decide", "1", "--status", "confirmed", "--note", "x", "--rule", "static.nothing"),
     "has no finding of rule static.nothing"),
    (("triage", "decide", "1", "--status", "confirmed", "--note", "  "), "needs a note"),
    (("triage", "decide", "1", "--status", "maybe", "--note", "x"), "'maybe' is not one of"),
    (("triage", "decide", "1", "--status", "confirmed"), "Missing option '--note'"),
    (("triage", "list", "--verdict", "pass,bogus"), "unknown verdict bogus"),
])
def test_triage_usage_errors_exit_2_with_one_line(tampered_model: Path, store: str, args: tuple[str, ...],
                                                  message: str) -> None:
    scan_json(tampered_model, store)
    code, out, err = run(*args, "--store", store)
    assert code == 2 and message in err and "Traceback" not in out + err


def test_triage_uses_the_default_store_and_the_os_user(tampered_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("USER", "carol")  # what getpass reads first
    scan_json(tampered_model, "default")
    assert (tmp_path / "cache" / "modelaudit" / "store.sqlite").is_file()
    result = CliRunner().invoke(main, ["triage", "decide", "1", "--status", "accepted-risk", "--note", "ok"],
                                env={DEFAULT_STORE_ENV: None})
    assert result.exit_code == 0 and "by carol" in result.stdout, result.stderr
