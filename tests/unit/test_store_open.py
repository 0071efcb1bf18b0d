"""Opening the scan store: which database (argument, ``$MODELAUDIT_STORE``, the default SQLite file), named
errors for stores that cannot be opened, SQLite's crash safety (a writer killed mid-write), migrations shipped
in the wheel, and a scan without ``--store`` that never loads SQLAlchemy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from modelaudit.errors import UsageError
from modelaudit.findings import Report
from modelaudit.store import DEFAULT_STORE_ENV, default_store_path, open_store, store_url
from modelaudit.store.engine import BUSY_TIMEOUT_S
from modelaudit.store.migrate import HEAD_REVISION, VERSION_TABLE, alembic_config
from tests.unit.test_store import key_of, static_reports  # noqa: F401 - the report fixture

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("modelaudit", "probes", "triggersearch", "reports")


@pytest.fixture()
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user cache folder of the test's own (platformdirs follows XDG_CACHE_HOME on Linux), no store set."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(DEFAULT_STORE_ENV, raising=False)
    return tmp_path / "cache"


def test_the_store_is_the_argument_else_the_environment_else_the_default_file(
        cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = cache_home / "modelaudit" / "store.sqlite"
    assert default_store_path() == default
    assert store_url(None) == store_url("default") == f"sqlite:///{default}"
    assert default.parent.is_dir()  # the folder is made for it
    with open_store() as store:
        assert store.url == f"sqlite:///{default}" and default.is_file()
    monkeypatch.setenv(DEFAULT_STORE_ENV, "postgresql+psycopg://team@db/scans")
    assert store_url(None) == "postgresql+psycopg://team@db/scans"
    assert store_url("sqlite:///elsewhere.sqlite") == "sqlite:///elsewhere.sqlite"  # the argument wins
    monkeypatch.chdir(tmp_path)
    assert store_url("fleet.sqlite") == f"sqlite:///{tmp_path / 'fleet.sqlite'}"  # a plain path is a SQLite file


@pytest.mark.parametrize(("url", "expected"), [
    ("nosuchdialect://x", "cannot use this URL (Can't load plugin"),
    ("postgresql+psycopg://alice:pa55word@127.0.0.1:1/scans", "cannot open it (connection"),
    ("mysql+mysqldb://alice:pa55word@localhost/scans", "database driver is not installed"),
    ("{tmp}/no/such/folder/store.sqlite", "cannot open it (unable to open database file)"),
    ("{tmp}/not-a-database.sqlite", "cannot open it (file is not a database)"),
])
def test_a_store_that_cannot_be_opened_is_a_named_usage_error(tmp_path: Path, url: str, expected: str) -> None:
    (tmp_path / "not-a-database.sqlite").write_bytes(b"these are not the bytes of a SQLite database\n" * 100)
    with pytest.raises(UsageError) as caught:
        open_store(url.format(tmp=tmp_path))
    message = str(caught.value)
    assert message.startswith("scan store ") and expected in message and "\n" not in message
    assert "pa55word" not in message
    assert (tmp_path / "not-a-database.sqlite").read_bytes().startswith(b"these are not")  # left as it was


def test_a_store_made_by_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    open_store(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(UsageError, match="schema revision 9999 is newer than this modelaudit knows"):
        open_store(str(path))


def test_the_fast_path_head_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD_REVISION]


def test_sqlite_runs_in_wal_mode_and_a_writer_waits_for_another(tmp_path: Path,
                                                               static_reports: dict[str, Report]) -> None:
    """Another process's open write transaction delays a put (busy timeout), it does not fail it."""
    path = tmp_path / "store.sqlite"
    report = static_reports["clean"]
    with open_store(str(path)) as store:
        with sqlite3.connect(path, isolation_level=None, check_same_thread=False) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            other.execute("BEGIN IMMEDIATE")
            hold_s = 1.0
            releaser = threading.Timer(hold_s, lambda: other.execute("COMMIT"))
            start = time.perf_counter()
            releaser.start()
            stored = store.put(report, key_of(report), {}, "clean")
            waited = time.perf_counter() - start
            releaser.join()
        assert hold_s * 0.9 <= waited < BUSY_TIMEOUT_S
        assert store.lookup(key_of(report)) is not None and stored.id == 1


WRITER = """
import json, sys
from modelaudit.findings import Report
from modelaudit.fleet.records import ScanKey
from modelaudit.store import open_store

report = Report.from_dict(json.loads(open(sys.argv[2], encoding="utf-8").read()))
report.sections["padding"] = {"text": "x" * int(sys.argv[3])}  # big rows: the kill lands inside a write
store = open_store(sys.argv[1])
for i in range(1_000_000):
    slot = i % 7  # later rounds replace rows in place, so kills hit updates as well as inserts
    key = ScanKey(digest=f"sha256:{slot:064x}", settings="s" * 32, tool_version="t")
    store.put(report, key, {"slot": slot, "round": i}, f"model-{slot}")
    print(i, flush=True)
"""
PADDING = 1_000_000


def test_a_writer_killed_mid_write_leaves_a_consistent_store(tmp_path: Path,
                                                            static_reports: dict[str, Report]) -> None:
    path = tmp_path / "store.sqlite"
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(static_reports["tampered"].to_dict()), encoding="utf-8")
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    for kill_after in (3, 9):  # kill twice: the second writer starts on the file the first left
        writer = subprocess.Popen([sys.executable, str(script), str(path), str(saved), str(PADDING)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        written = 0
        for _ in writer.stdout:
            written += 1
            if written == kill_after:
                break
        assert written == kill_after, writer.stderr.read() if writer.stderr else ""
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        assert writer.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT id, digest, target, settings, verdict, report FROM scans").fetchall()
    assert 3 <= len(rows) <= 7 and len({r[1] for r in rows}) == len(rows)
    for _id, digest, target, settings, verdict, text in rows:
        slot = int(digest.removeprefix("sha256:"), 16)
        assert target == f"model-{slot}" and json.loads(settings)["slot"] == slot
        report = Report.from_dict(json.loads(text))  # every stored report is whole
        assert report.verdict.value == verdict == "unsafe-files"
        assert len(report.sections["padding"]["text"]) == PADDING
    with open_store(str(path)) as store:  # reopens (WAL recovered) and takes writes again
        report = static_reports["clean"]
        store.put(report, key_of(report), {}, "after the kills")
        assert len(store.list()) == len(rows) + 1


def test_the_migrations_ship_in_the_wheel_and_run_from_an_installed_copy(tmp_path: Path) -> None:
    src, dist, installed = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_wheel(sys.argv[1]))", str(dist)],
                           cwd=src, capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = dist / build.stdout.strip().splitlines()[-1]
    shipped = set(zipfile.ZipFile(wheel).namelist())
    migrations = ROOT / "modelaudit" / "store" / "migrations"
    in_tree = {p.relative_to(ROOT).as_posix() for p in migrations.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {"modelaudit/store/migrations/env.py", "modelaudit/store/migrations/script.py.mako"} <= in_tree
    assert in_tree <= shipped
    zipfile.ZipFile(wheel).extractall(installed)
    probe = ("import sys; from modelaudit.store import open_store; from modelaudit.store.migrate import "
             "migrations_folder; s = open_store(sys.argv[1]); print(migrations_folder()); print(s.list())")
    ran = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "store.sqlite")], cwd=tmp_path,
                         env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.splitlines() == [str(installed / "modelaudit" / "store" / "migrations"), "[]"]
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        assert db.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [(HEAD_REVISION,)]


def test_a_scan_without_a_store_loads_no_database_library(clean_model: Path, cache_home: Path) -> None:
    code = ("import sys; from modelaudit.cli import main\n"
            f"sys.argv = ['modelaudit', 'scan', {str(clean_model)!r}, '--stages', 'static', '--format', 'json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('sqlalchemy', 'alembic', 'modelaudit.store.scanstore', 'modelaudit.store')"
            " if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False,
                         env={**_env_without_store(), "XDG_CACHE_HOME": str(cache_home)})
    assert out.stderr.strip().splitlines()[-1] == "['modelaudit.store']", out.stderr  # the light package only
    assert json.loads(out.stdout)["verdict"] == "pass"
    assert not cache_home.exists()  # no default store file was made either


def _env_without_store() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != DEFAULT_STORE_ENV}

