"""Built-in writers: importing this module registers them (the ``modelaudit`` entry point names it).

Each writer is registered with ``modelaudit.registry.writers.register(name, description=...,
extension=...)`` and is a ``reports.protocol.Writer``: ``(report: Report, *, rules: dict[str, str]) -> str``,
where ``rules`` maps rule ids to the short descriptions that registered plugins declare. Writers render
only: sorting and grouping for display is fine, deciding anything about the model is not. Writers that
sort findings use ``reports.order``, so the formats agree on which come first (JSON keeps report order).
"""

from reports import console, html, json_writer, junit, markdown, sarif

__all__ = ["console", "html", "json_writer", "junit", "markdown", "sarif"]
