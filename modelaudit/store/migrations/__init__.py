"""Alembic migrations of the scan store, run to head by ``modelaudit.store.migrate`` when a store is opened.

A new schema change is a new file in ``versions/`` (``alembic -c <ini with script_location = this folder>
revision``); never edit a released one: stores made by earlier versions are upgraded through each file.
"""
