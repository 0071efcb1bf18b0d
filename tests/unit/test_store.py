"""The scan store's contract (``modelaudit.store``), on a real SQLite file here and on a real PostgreSQL server
in ``test_store_postgres.py`` (the same ``StoreContract`` tests, another ``store_url``).

Reports are real: static scans of the session's tiny clean and tampered models.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelaudit.api import scan
from modelaudit.errors import UsageError
from modelaudit.findings import Finding, Location, Report, Severity
from modelaudit.fleet.digest import content_digest, scan_settings, settings_fingerprint
from modelaudit.fleet.records import ScanKey
from modelaudit.stages import ScanConfig
from modelaudit.store import ScanStore, StoreError, open_store

STATIC = ScanConfig(stages=("static",))


@pytest.fixture(scope="session")
def static_reports(clean_model: Path, tampered_model: Path) -> dict[str, Report]:
    """Static-only reports of the clean (pass) and tampered (unsafe-files) tiny models, made once."""
    return {"clean": scan(clean_model, config=STATIC), "tampered": scan(tampered_model, config=STATIC)}


def key_of(report: Report, *, settings: str | None = None, tool_version: str | None = None) -> ScanKey:
    digest = content_digest(report.target.files)
    assert digest is not None
    return ScanKey(digest=digest, settings=settings or settings_fingerprint(scan_settings(STATIC)),
                   tool_version=tool_version or report.tool_version)


def fresh(report: Report) -> Report:
    """A copy a test may change without touching the session's report."""
    return copy.deepcopy(report)


class StoreContract:
    """Tests every store backend passes; a subclass provides the ``store_url`` fixture (an empty database)."""

    @pytest.fixture()
    def store(self, store_url: str) -> Iterator[ScanStore]:
        with open_store(store_url) as opened:
            yield opened

    def test_migrations_make_the_schema_on_an_empty_database_and_are_idempotent(self, store_url: str) -> None:
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext
        from sqlalchemy import create_engine, inspect

        from modelaudit.store.migrate import HEAD_REVISION, VERSION_TABLE, stored_revisions
        from modelaudit.store.schema import metadata

        engine = create_engine(store_url)
        try:
            assert not inspect(engine).get_table_names()  # truly empty before the first open
            with open_store(store_url) as first:
                first_url = first.url
            with open_store(store_url), open_store(store_url):  # at head: nothing to do, no error
                pass
            assert stored_revisions(engine) == {HEAD_REVISION}
            assert {"scans", "decisions", VERSION_TABLE} <= set(inspect(engine).get_table_names())
            with engine.connect() as conn:  # the migrated schema is the one the queries are written against
                context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
                assert compare_metadata(context, metadata) == []
        finally:
            engine.dispose()
        assert first_url.split("://")[0] == store_url.split("://")[0]  # named for messages (as its own URL)

    def test_put_then_lookup_gives_the_report_back(self, store: ScanStore, static_reports: dict[str, Report]) -> None:
        report = static_reports["tampered"]
        key = key_of(report)
        settings = scan_settings(STATIC)
        stored = store.put(report, key, settings, "models/tampered")
        found = store.lookup(key)
        assert found is not None and found.id == stored.id and found.key == key
        assert found.report is not None and found.report.to_dict() == report.to_dict()
        assert (found.verdict, found.exit_code, found.target) == ("unsafe-files", 1, "models/tampered")
        assert found.settings == settings
        assert found.strongest is not None and found.strongest.startswith("static.") and "(critical)" in found.strongest
        assert found.stored_at.endswith("Z") and found.stored_at == stored.stored_at

    def test_a_lookup_under_other_settings_or_another_version_misses(self, store: ScanStore,
                                                                     static_reports: dict[str, Report]) -> None:
        report = static_reports["clean"]
        store.put(report, key_of(report), {}, "clean")
        assert store.lookup(key_of(report, settings="0" * 32)) is None
        assert store.lookup(key_of(report, tool_version="99.0")) is None
        assert store.lookup(ScanKey(digest="sha256:" + "0" * 64, settings=key_of(report).settings,
                                    tool_version=report.tool_version)) is None

    def test_a_second_put_with_the_same_key_replaces_in_place(self, store: ScanStore,
                                                             static_reports: dict[str, Report]) -> None:
        first, second = fresh(static_reports["clean"]), fresh(static_reports["clean"])
        second.timings["total"] = 123.0
        key = key_of(first)
        a = store.put(first, key, {"run": 1}, "clean")
        b = store.put(second, key, {"run": 2}, "clean-again")
        assert a.id == b.id
        assert [s.id for s in store.list()] == [a.id]
        found = store.lookup(key)
        assert found is not None and found.report is not None
        assert found.report.timings["total"] == 123.0 and found.target == "clean-again" and found.settings == {"run": 2}

    def test_models_without_a_digest_get_a_row_per_scan_and_are_never_looked_up(
            self, store: ScanStore, static_reports: dict[str, Report]) -> None:
        report = static_reports["clean"]
        unhashed = ScanKey(digest=None, settings="s" * 32, tool_version="0")  # type: ignore[arg-type]
        ids = {store.put(report, unhashed, {}, "unhashed").id for _ in range(3)}
        assert len(ids) == 3 and len(store.list()) == 3
        assert store.lookup(unhashed) is None

    def test_get_and_list_latest_first_with_a_verdict_filter(self, store: ScanStore,
                                                             static_reports: dict[str, Report]) -> None:
        clean = store.put(static_reports["clean"], key_of(static_reports["clean"]), {}, "clean")
        tampered = store.put(static_reports["tampered"], key_of(static_reports["tampered"]), {}, "tampered")
        listed = store.list()
        assert [s.id for s in listed] == [tampered.id, clean.id]
        assert all(s.report is None for s in listed) and listed[0].strongest == tampered.strongest
        assert [s.id for s in store.list(["unsafe-files", "backdoored"])] == [tampered.id]
        assert store.list(["backdoored"]) == []
        got = store.get(clean.id)
        assert got.report is not None and got.report.verdict.value == "pass"
        with pytest.raises(UsageError, match=f"no stored scan {tampered.id + 100}"):
            store.get(tampered.id + 100)

    def test_decisions_cover_findings_of_the_digest_and_outlive_a_replaced_report(
            self, store: ScanStore, static_reports: dict[str, Report]) -> None:
        report = static_reports["tampered"]
        key = key_of(report)
        stored = store.put(report, key, {}, "tampered")
        pickle_ids = [f.identity for f in report.findings if f.rule_id.startswith("static.pickle")]
        one = store.decide(stored.id, "false-positive", "  lab copy  ", "alice", pickle_ids)
        every = store.decide(stored.id, "confirmed", "really bad", "bob")
        assert (one.status, one.note, one.decided_by, one.digest) == ("false-positive", "lab copy", "alice", key.digest)
        assert one.identities == sorted(pickle_ids) and one.decided_at.endswith("Z")
        assert every.identities == sorted({f.identity for f in report.findings})
        store.put(fresh(report), key, {}, "tampered")  # a rescan replaces the report, the decisions stay
        assert [d.id for d in store.decisions_for(key.digest)] == [one.id, every.id]
        assert store.decisions_for("sha256:" + "1" * 64) == []
        assert store.decided_digests() == {key.digest}

    @pytest.mark.parametrize(("status", "note", "by", "identities", "message"), [
        ("maybe", "x", "a", None, "unknown triage status"),
        ("confirmed", "   ", "a", None, "needs a note"),
        ("confirmed", "x", " ", None, "name of who"),
        ("confirmed", "x", "a", ["not-an-identity"], "no finding with identity not-an-identity"),
        ("confirmed", "x", "a", [], "at least one finding"),
    ])
    def test_a_bad_decision_is_a_usage_error(self, store: ScanStore, static_reports: dict[str, Report], status: str,
                                            note: str, by: str, identities: list[str] | None, message: str) -> None:
        stored = store.put(static_reports["tampered"], key_of(static_reports["tampered"]), {}, "tampered")
        with pytest.raises(UsageError, match=message):
            store.decide(stored.id, status, note, by, identities)
        with pytest.raises(UsageError, match="no stored scan"):
            store.decide(stored.id + 1, "confirmed", "x", "a")
        assert store.decided_digests() == set()

    def test_a_report_with_any_text_a_model_can_carry_round_trips(self, store: ScanStore,
                                                                   static_reports: dict[str, Report]) -> None:
        """NUL, a lone surrogate (an undecodable file name), emoji and RTL text: PostgreSQL's json types
        reject the first two, so the store must keep them as text."""
        report = fresh(static_reports["clean"])
        odd = "nul\x00 surrogate\udc80 emoji\U0001F600 rtl\u202e end"
        report.findings.append(Finding(rule_id="static.files.odd", severity=Severity.LOW, message=odd,
                                       location=Location(path=f"weird-\udcff-{odd}.bin"), evidence={"text": odd}))
        key = key_of(report)
        store.put(report, key, {"note": odd}, odd)
        found = store.lookup(key)
        assert found is not None and found.report is not None
        assert found.report.to_dict() == report.to_dict() and found.settings == {"note": odd}
        assert found.target == r"nul\x00 surrogate\udc80 emoji😀 rtl‮ end"  # a listing's text column
        stored_id = found.id
        decision = store.decide(stored_id, "accepted-risk", odd, odd)
        assert store.decisions_for(key.digest)[0] == decision and r"\udc80" in decision.note

    def test_a_damaged_stored_report_is_a_named_error(self, store: ScanStore, store_url: str,
                                                      static_reports: dict[str, Report]) -> None:
        from sqlalchemy import create_engine, text

        stored = store.put(static_reports["clean"], key_of(static_reports["clean"]), {}, "clean")
        engine = create_engine(store_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE scans SET report = :r WHERE id = :i"), {"r": '{"verdict": "pass"}', "i": stored.id})
        engine.dispose()
        with pytest.raises(StoreError, match=f"stored scan {stored.id}: its report cannot be read"):
            store.get(stored.id)
        assert [s.id for s in store.list()] == [stored.id]  # listings do not read reports


class TestSQLiteStore(StoreContract):
    @pytest.fixture()
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
