"""Built-in writers: importing this module registers them (the ``modelaudit`` entry point names it)."""

from reports import console, json_writer, sarif

__all__ = ["console", "json_writer", "sarif"]
