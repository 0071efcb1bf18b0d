"""The versioned JSON report: the contract CI gates and later tooling read."""

from __future__ import annotations

import json

from modelaudit.findings import Report
from modelaudit.registry import writers


@writers.register("json", description="Versioned JSON report (the stable contract)", extension=".json")
def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"
