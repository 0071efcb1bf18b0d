"""Engines for the store's databases, set up so that every write is one transaction that cannot half-happen.

SQLite: WAL journal (readers never block the writer, and a process killed mid-write leaves the last
committed state), a busy timeout instead of an immediate "database is locked", and writes that take the
write lock at BEGIN (``BEGIN IMMEDIATE``), so a read-then-write (look the key up, then insert or replace) is
atomic against other processes. Python's sqlite3 would otherwise begin transactions itself, lazily, at the
first write; SQLAlchemy's documented recipe hands BEGIN to us instead. PostgreSQL: a bounded connect
timeout, so an unreachable server is named in seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

BUSY_TIMEOUT_S = 30.0
"""How long a SQLite writer waits for another process's write to finish before giving up."""
CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take."""
_BEGIN_MODE = "modelaudit_sqlite_begin"
"""Execution option naming the SQLite BEGIN mode of a connection's next transaction."""


def create_store_engine(url: str) -> Engine:
    """An engine for ``url``; nothing is connected yet.

    Raises:
        sqlalchemy.exc.ArgumentError: ``url`` is not an SQLAlchemy URL.
        sqlalchemy.exc.NoSuchModuleError: no dialect of that name.
        ImportError: the dialect's driver is not installed (psycopg for ``postgresql+psycopg``).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        return create_engine(parsed, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, pool_pre_ping=True)
    return create_engine(parsed, pool_pre_ping=True)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per connection: we emit BEGIN ourselves; busy timeout; WAL journal; foreign keys enforced."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get(_BEGIN_MODE, 'DEFERRED')}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction that holds the write lock from its start (SQLite) and commits on
    leaving the block, or rolls back on an exception."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{_BEGIN_MODE: "IMMEDIATE"})
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one read transaction (a consistent snapshot of the rows it reads)."""
    with engine.connect() as conn, conn.begin():
        yield conn
