"""``modelaudit triage html -o FILE``: one page listing every stored model, and each model's report beside it.

Reads the scan store, carries the team's decisions onto every stored report (the same way a later scan of
the same content gets them), and writes ``FILE`` with its reports in ``<FILE stem>-reports/<scan id>.html``.
The page itself is a writer's job (``reports.fleet_page``); this command only gathers the records.
"""

from __future__ import annotations

from pathlib import Path

import click

from modelaudit.cli.edge import ModelAuditCommand, info
from modelaudit.errors import UsageError
from modelaudit.fleet.records import Decision, StoredScan
from modelaudit.store import DEFAULT_STORE_ENV, ScanStore, open_store
from modelaudit.store.views import decided_report
from reports.fleet_page import DEFAULT_TITLE, reports_folder, write_fleet_site


def stored_with_decisions(store: ScanStore) -> tuple[list[StoredScan], dict[str, list[Decision]]]:
    """Every stored scan with its report loaded and the decisions about its content applied
    (``store.views.decided_report``), and those decisions by content digest (shown beside each model).

    A scan of a model whose files could not all be hashed has no digest: no decision can cover it, so its
    report is shown as stored.
    """
    scans: list[StoredScan] = []
    decisions: dict[str, list[Decision]] = {}
    for listed in store.list():
        scan = store.get(listed.id)
        scan.strongest = scan.strongest or listed.strongest
        scan.report = decided_report(store, scan)
        if scan.key.digest and scan.key.digest not in decisions:
            decisions[scan.key.digest] = store.decisions_for(scan.key.digest)
        scans.append(scan)
    return scans, decisions


@click.command(name="html", cls=ModelAuditCommand)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The fleet page to write; each model's report goes into <stem>-reports/ beside it.")
@click.option("--store", "store_url", envvar=DEFAULT_STORE_ENV, default=None, metavar="URL",
              help=f"Scan store: any SQLAlchemy URL (default: ${DEFAULT_STORE_ENV}, else a SQLite file in the "
                   "user cache folder).")
@click.option("--title", default=DEFAULT_TITLE, show_default=True, help="The page's title.")
def triage_html(output: Path, store_url: str | None, title: str) -> None:
    """Write one self-contained HTML page listing every stored model: verdict as stored and with the team's
    decisions, strongest evidence, decision, and a link to its report. Sortable and filterable in a browser;
    it loads nothing from the network."""
    store = open_store(store_url)
    try:
        scans, decisions = stored_with_decisions(store)
    finally:
        store.close()
    try:
        site = write_fleet_site(scans, decisions, output, title=title)
    except OSError as exc:
        raise UsageError(f"{exc.filename or output}: cannot write the fleet page ({exc.strerror or exc})") from None
    info(f"wrote {site.page} ({len(scans)} stored models; their reports in {reports_folder(output)})")
