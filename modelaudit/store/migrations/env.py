"""Alembic's environment for the store: migrations run on the connection ``modelaudit.store.migrate`` opened
(in its transaction, with its lock), never on a URL read from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from modelaudit.store.migrate import CONNECTION_ATTRIBUTE, VERSION_TABLE

connection = context.config.attributes[CONNECTION_ATTRIBUTE]
if not isinstance(connection, Connection):
    raise TypeError("the store's migrations run on a connection passed in config.attributes")
context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
