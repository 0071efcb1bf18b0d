"""The versioned JSON report: the contract CI gates and later tooling read."""

from __future__ import annotations

import json

from modelaudit.findings import Report
from modelaudit.registry import writers


@writers.register("json", description="Versioned JSON report (the stable contract)", extension=".json")
def render_json(report: Report, *, rules: dict[str, str]) -> str:
    """``Report.to_dict`` as indented JSON in field order; ``Report.from_dict`` reads it back unchanged.

    ``rules`` is part of the writer contract but unused: the JSON carries rule ids only, and
    descriptions belong to the tool version, not to the report.
    """
    del rules
    return json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"
