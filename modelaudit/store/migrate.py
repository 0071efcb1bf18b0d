"""Run the store's Alembic migrations to head when a store is opened, from the package's own folder.

The Alembic configuration is built here in code (no ini file to ship or find): its ``script_location`` is
the ``migrations`` folder inside this package, so an installed wheel migrates exactly as a checkout does.
A store already at ``HEAD_REVISION`` costs one query and no Alembic import (a store hit must answer in well
under a second); an upgrade runs in one transaction holding the write lock (SQLite) or an advisory lock
(PostgreSQL), so two processes opening a new store at once do not both create its tables.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, MetaData, String, Table, select, text
from sqlalchemy.engine import Engine

from modelaudit.errors import UsageError
from modelaudit.store.engine import read_transaction, write_transaction

if TYPE_CHECKING:
    from alembic.config import Config

HEAD_REVISION = "0001"
"""The newest file in ``migrations/versions`` (a test checks it against Alembic's own head): a store at this
revision needs no migration, so Alembic is imported only when one is needed."""
VERSION_TABLE = "modelaudit_alembic_version"
"""Alembic's version table, named for this tool so a shared PostgreSQL database's own one is left alone."""
CONNECTION_ATTRIBUTE = "connection"
"""``Config.attributes`` key under which ``env.py`` finds the connection to migrate."""
MIGRATIONS_PACKAGE = "modelaudit.store.migrations"
POSTGRES_MIGRATION_LOCK = 0x6D6F64656C617564
"""Advisory lock key (``modelaud`` in ASCII) held while a PostgreSQL store is upgraded."""

_version_table = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), primary_key=True))
"""Alembic's version table, read without Alembic (the fast path)."""


def migrations_folder() -> Path:
    """The folder holding ``env.py`` and ``versions/`` (inside the installed package)."""
    return Path(str(files(MIGRATIONS_PACKAGE)))


def alembic_config() -> Config:
    """Alembic's configuration for the store, built in code."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_folder()).replace("%", "%%"))
    return cfg


def stored_revisions(engine: Engine) -> set[str]:
    """The schema revisions the database records (empty for a database the store never used)."""
    with read_transaction(engine) as conn:
        if not engine.dialect.has_table(conn, VERSION_TABLE):
            return set()
        return set(conn.execute(select(_version_table.c.version_num)).scalars())


def upgrade_to_head(engine: Engine, *, label: str) -> None:
    """Bring the database's schema to head (creating it in an empty database); nothing when it is there.

    Raises:
        UsageError: the database is at a revision this version does not know (a newer modelaudit made it).
        sqlalchemy.exc.SQLAlchemyError: the database cannot be read or written.
    """
    if stored_revisions(engine) == {HEAD_REVISION}:
        return
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    cfg = alembic_config()
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    newer = stored_revisions(engine) - known
    if newer:
        raise UsageError(f"scan store {label}: its schema revision {', '.join(sorted(newer))} is newer than this "
                         "modelaudit knows; upgrade modelaudit to use it")
    try:
        with write_transaction(engine) as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK})
            cfg.attributes[CONNECTION_ATTRIBUTE] = conn
            command.upgrade(cfg, "head")
    except CommandError as exc:
        raise UsageError(f"scan store {label}: migrating its schema failed ({exc})") from None
