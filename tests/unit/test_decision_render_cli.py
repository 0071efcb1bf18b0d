"""``modelaudit triage html`` (``modelaudit/cli/triage_html.py``) on a real SQLite scan store: static scans of the
session's clean and tampered models stored, a decision recorded, the page and each report written beside it.

The command is invoked directly (the ``triage`` group adds it as ``html``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelaudit.cli.triage_html import triage_html
from modelaudit.findings import Report, Verdict
from modelaudit.fleet.digest import content_digest, scan_settings, settings_fingerprint
from modelaudit.fleet.records import ScanKey
from modelaudit.stages import ScanConfig
from modelaudit.store import DEFAULT_STORE_ENV, open_store

NOTE = "vendored test fixture, never loaded"


@pytest.fixture(scope="module")
def scanned(clean_model: Path, tampered_model: Path) -> dict[str, tuple[Path, Report]]:
    from modelaudit.api import scan

    config = ScanConfig(stages=("static",))
    return {name: (path, scan(str(path), config=config))
            for name, path in (("clean", clean_model), ("tampered", tampered_model))}


def _store_url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_triage_html_writes_the_page_and_each_report_with_decisions(
        scanned: dict[str, tuple[Path, Report]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _store_url(tmp_path / "store.sqlite")
    settings = scan_settings(ScanConfig(stages=("static",)))
    store = open_store(url)
    try:
        ids = {}
        for name, (path, report) in scanned.items():
            digest = content_digest(report.target.files)
            assert digest is not None
            key = ScanKey(digest, settings_fingerprint(settings), report.tool_version)
            ids[name] = store.put(report, key, settings, str(path)).id
        store.decide(ids["tampered"], "false-positive", NOTE, "alice")  # every finding of that scan
    finally:
        store.close()
    assert scanned["tampered"][1].verdict is Verdict.UNSAFE_FILES

    monkeypatch.setenv(DEFAULT_STORE_ENV, url)
    page = tmp_path / "out" / "fleet.html"
    result = CliRunner().invoke(triage_html, ["-o", str(page)])
    assert result.exit_code == 0, result.output

    text = page.read_text(encoding="utf-8")
    rows = {int(i): v for v, i in re.findall(r'<tr data-verdict="([^"]*)" id="scan-(\d+)"', text)}
    assert rows == {ids["clean"]: "pass", ids["tampered"]: "pass"}  # the tampered one: pass with the decision
    assert "was unsafe-files" in text and NOTE in text and "by alice at" in text
    links = re.findall(r'<a href="([^"]+)">report</a>', text)
    assert sorted(links) == sorted(f"fleet-reports/{i}.html" for i in ids.values())
    tampered_html = (page.parent / "fleet-reports" / f"{ids['tampered']}.html").read_text(encoding="utf-8")
    assert f"suppressed: false positive — {NOTE}" in tampered_html and 'class="banner v-pass"' in tampered_html


def test_triage_html_names_an_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    result = CliRunner().invoke(triage_html, ["-o", str(blocker / "fleet.html"),
                                              "--store", _store_url(tmp_path / "empty.sqlite")])
    assert result.exit_code == 2, result.output
    assert "cannot write the fleet page" in result.stderr and "Traceback" not in result.output
