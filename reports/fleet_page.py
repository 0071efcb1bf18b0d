"""The fleet page: one self-contained HTML file listing every stored model for a security team's triage.

One row per stored scan: target, revision, the verdict as stored and as it stands with the team's decisions,
the strongest evidence, the decisions (status, note, who, when), when it was stored, and a relative link to
its own HTML report. A small inline script sorts by a clicked column and filters by text and verdict; with
scripts off the page is the same table, worst verdict first, and the controls stay hidden. The page loads
nothing: CSS and script are inline, and its Content-Security-Policy allows only that script (by hash).

Like every writer it decides nothing: the verdict with decisions is the one the caller's report carries
(``modelaudit.fleet.decisions.apply_decisions`` ran before), the strongest evidence the one the store
recorded. Model text reaches the page only through Jinja2 autoescaping.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from markupsafe import Markup

from modelaudit.findings import SUPPRESSING_STATUSES, Verdict
from modelaudit.fleet.records import Decision, StoredScan
from reports.html import template_environment
from reports.order import ordered_findings
from reports.output import render, write_atomic
from reports.triage import status_words

DEFAULT_TITLE = "modelaudit fleet"
REPORTS_SUFFIX = "-reports"
"""``fleet.html``'s reports go into ``fleet-reports/`` beside it, one ``<scan id>.html`` each."""
VERDICT_ORDER: tuple[str, ...] = (Verdict.BACKDOORED.value, Verdict.UNSAFE_FILES.value, Verdict.INCOMPLETE.value,
                                  Verdict.SUSPICIOUS.value, Verdict.PASS.value)
"""Worst first: the page's order without scripts, and the order the verdict column sorts in. Incomplete sits
above suspicious because a scan that could not vouch for a model must be looked at (fail closed)."""
REVISION_SHOWN = 12
"""Characters of a commit sha shown in the table; the whole sha is in the cell's title."""
NO_FINDINGS = "no findings"
SCRIPT = importlib.resources.files("reports").joinpath("templates/fleet.js").read_text(encoding="utf-8")
"""The page's one script (sorting and filtering), inlined as it is."""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
"""The Content-Security-Policy source that lets this script, and no other, run."""


@dataclass
class DecisionView:
    """One decision as a row shows it."""

    status: str
    """As stored: ``confirmed``, ``false-positive``, ``accepted-risk``."""
    words: str
    """The status in words (``false positive``)."""
    suppresses: bool
    note: str
    decided_by: str
    decided_at: str
    covers: int
    """How many findings it covers."""


@dataclass
class ModelRow:
    """One stored model on the fleet page."""

    id: int
    target: str
    revision: str
    stored_verdict: str
    verdict: str
    """The verdict with the decisions applied (the caller's report), else the stored one."""
    report_loaded: bool
    """True when the report was loaded, so ``verdict`` is its verdict with the decisions applied."""
    strongest: str
    stored_at: str
    link: str | None
    decisions: list[DecisionView] = field(default_factory=list)

    @property
    def verdict_rank(self) -> int:
        """Sort key: 0 for the worst verdict; unknown verdicts (a newer tool's) sort first, to be looked at."""
        return VERDICT_ORDER.index(self.verdict) if self.verdict in VERDICT_ORDER else -1


def _relative(link: str) -> str:
    """A report link, checked to stay beside the page: no scheme, host or absolute path (the page must work
    when the folder is copied elsewhere, and a link must never lead off the machine).

    Raises:
        ValueError: the link is not a relative reference.
    """
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith(("/", "\\")):
        raise ValueError(f"report link {link!r} is not relative to the page")
    return link


def _strongest(scan: StoredScan) -> str:
    """What the store recorded as the strongest evidence; else the report's worst finding; else none."""
    if scan.strongest:
        return scan.strongest
    if scan.report is not None and scan.report.findings:
        worst = ordered_findings(scan.report.findings)[0]
        return f"{worst.rule_id}: {worst.message}"
    return NO_FINDINGS


def _row(scan: StoredScan, decisions: Sequence[Decision], link: str | None) -> ModelRow:
    latest_first = sorted(decisions, key=lambda d: (d.decided_at, d.id), reverse=True)
    return ModelRow(
        id=scan.id, target=scan.target, revision=scan.revision or "", stored_verdict=scan.verdict,
        verdict=scan.report.verdict.value if scan.report is not None else scan.verdict,
        report_loaded=scan.report is not None, strongest=_strongest(scan), stored_at=scan.stored_at,
        link=None if link is None else _relative(link),
        decisions=[DecisionView(status=d.status, words=status_words(d.status),
                                suppresses=d.status in SUPPRESSING_STATUSES, note=d.note, decided_by=d.decided_by,
                                decided_at=d.decided_at, covers=len(d.identities)) for d in latest_first])


def render_fleet_page(scans: Sequence[StoredScan], decisions: Mapping[str, Sequence[Decision]],
                      report_links: Mapping[int, str], *, title: str = DEFAULT_TITLE) -> str:
    """The fleet page for ``scans``; ``decisions`` by content digest, ``report_links`` by scan id (relative
    URLs; a scan without one is listed without a link).

    A scan whose ``report`` is loaded shows that report's verdict as the verdict with decisions, so the caller
    applies the decisions to it first; without a report the stored verdict is repeated and marked so.

    Raises:
        ValueError: a report link is not relative to the page.
    """
    rows = [_row(s, decisions.get(s.key.digest, ()) if s.key.digest else (), report_links.get(s.id)) for s in scans]
    rows.sort(key=lambda r: (r.verdict_rank, r.target, r.id))
    by_verdict = Counter(r.verdict for r in rows)
    known = [v for v in VERDICT_ORDER if by_verdict.get(v)]
    context = {
        "title": title,
        "rows": rows,
        "summary": [(v, by_verdict[v]) for v in known + sorted(set(by_verdict) - set(VERDICT_ORDER))],
        "verdicts": VERDICT_ORDER,
        "decided_models": sum(1 for r in rows if r.decisions),
        "revision_shown": REVISION_SHOWN,
        "script": Markup(SCRIPT),  # noqa: S704 - the package's own file, allowed by its hash in the page's CSP
        "script_hash": SCRIPT_HASH,
        "no_findings": NO_FINDINGS,
    }
    return template_environment().get_template("fleet.html.j2").render(**context)


@dataclass
class FleetSite:
    """What ``write_fleet_site`` wrote."""

    page: Path
    """The fleet page."""
    reports: dict[int, Path] = field(default_factory=dict)
    """Each stored scan's HTML report, by scan id."""


def reports_folder(page: Path) -> Path:
    """Where the reports of the page ``page`` go: ``<stem>-reports/`` beside it."""
    return page.with_name(page.stem + REPORTS_SUFFIX)


def write_fleet_site(scans: Sequence[StoredScan], decisions: Mapping[str, Sequence[Decision]], page: Path, *,
                     title: str = DEFAULT_TITLE) -> FleetSite:
    """Write each scan's report (those whose ``report`` is loaded) as ``<stem>-reports/<id>.html``, then the
    fleet page linking to them, every file atomically. The reports are rendered as they are: the caller
    applied the decisions (``modelaudit.fleet.decisions.apply_decisions``) first.

    Raises:
        OSError: a file or the reports folder cannot be written.
    """
    folder = reports_folder(page)
    site = FleetSite(page=page)
    links: dict[int, str] = {}
    for scan in scans:
        if scan.report is None:
            continue
        name = f"{scan.id}.html"
        site.reports[scan.id] = write_atomic(folder / name, render(scan.report, "html"))
        links[scan.id] = f"{quote(folder.name)}/{name}"
    write_atomic(page, render_fleet_page(scans, decisions, links, title=title))
    return site
