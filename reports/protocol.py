"""What a report writer is, as a type: the call ``Report.render`` makes and every writer accepts."""

from __future__ import annotations

from typing import Protocol

from modelaudit.findings import Report


class Writer(Protocol):
    """Renders a report as the text of one format; it decides nothing about the model.

    ``rules`` maps rule ids to the descriptions registered plugins declare. It is gathered once by the
    caller (``modelaudit.registry.rule_descriptions``), so writers stay pure functions of their arguments and
    never walk the plugin registries; a writer that shows no descriptions still accepts it.
    """

    def __call__(self, report: Report, *, rules: dict[str, str]) -> str: ...
