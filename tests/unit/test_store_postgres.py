"""The scan store's contract on a real PostgreSQL server (psycopg driver), started by this module.

The server is a throwaway: ``initdb`` into a temporary folder, listening only on a Unix socket in that folder
(no TCP port to collide with anything), fsync off, stopped and deleted at the end. ``initdb`` refuses to run
as root, so as root the server runs as the ``postgres`` system user. Without the binaries the module is
skipped, except under CI (``CI`` set), where that is a failure: CI installs them (``.ci/run``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelaudit.errors import UsageError
from modelaudit.store import open_store
from tests.unit.test_store import StoreContract, static_reports  # noqa: F401 - the contract's report fixture

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
"""Where Debian's postgresql packages put the server binaries (one folder per major version)."""
SERVER_USER = "postgres"
"""The system user the server runs as when the tests run as root."""
START_TIMEOUT_S = 60


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the server must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run installs PostgreSQL, so this must not happen)")
    pytest.skip(reason)


def _server_binaries() -> Path | None:
    """The newest installed version's bin folder with initdb, pg_ctl and postgres; None if none is."""
    folders = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), key=lambda p: _version(p.parent.name), reverse=True)
    for folder in folders:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    """A port number for the socket file's name (``.s.PGSQL.<port>``); nothing listens on TCP."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    socket_dir: Path
    port: int
    _databases = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SERVER_USER}@/{database}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        """A new empty database's URL (cheaper than a new server per test)."""
        import psycopg

        name = f"store_test_{next(self._databases)}"
        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=SERVER_USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _server_binaries()
    if bindir is None:
        _unavailable(f"no PostgreSQL server binaries in {PG_BIN_GLOB} (apt-get install postgresql)")
        raise AssertionError("unreachable")
    try:
        import psycopg  # noqa: F401 - the driver the store's postgresql+psycopg URLs use
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="modelaudit-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres system user
        if shutil.which("runuser") is None:
            _unavailable("running as root without runuser: cannot start PostgreSQL as another user")
        run_as = ["runuser", "-u", SERVER_USER, "--"]
        for path in (base, sockets):
            shutil.chown(path, SERVER_USER)
    port = _free_port()
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", SERVER_USER, "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=START_TIMEOUT_S)
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                        "-t", str(START_TIMEOUT_S), "-o",
                        f"-k {sockets} -p {port} -c listen_addresses='' -c fsync=off -c synchronous_commit=off",
                        "start"], check=True, capture_output=True, timeout=START_TIMEOUT_S + 10)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
        stderr = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc}\n{stderr.decode(errors='replace')}\n{log}")
    try:
        yield PostgresServer(socket_dir=sockets, port=port)
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=START_TIMEOUT_S, check=False)
        shutil.rmtree(base, ignore_errors=True)


class TestPostgresStore(StoreContract):
    @pytest.fixture()
    def store_url(self, postgres_server: PostgresServer) -> str:
        return postgres_server.new_database()


def test_an_unreachable_server_is_a_usage_error_with_the_password_masked(postgres_server: PostgresServer) -> None:
    url = f"postgresql+psycopg://alice:s3cret-pw@/nodb?host={postgres_server.socket_dir}&port={_free_port()}"
    with pytest.raises(UsageError) as caught:
        open_store(url)
    message = str(caught.value)
    assert message.startswith("scan store postgresql+psycopg://alice:***@/nodb") and "cannot open it" in message
    assert "s3cret-pw" not in message and "\n" not in message


def test_a_missing_database_on_a_running_server_is_named(postgres_server: PostgresServer) -> None:
    with pytest.raises(UsageError, match=r"scan store .*/absent_db.*cannot open it \(.*absent_db"):
        open_store(postgres_server.url("absent_db"))
