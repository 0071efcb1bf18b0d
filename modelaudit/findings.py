"""The typed report: what every stage produces and every writer renders.

Plain dataclasses with an explicit JSON round-trip, because the JSON is a contract that CI gates and
later stages rely on; field names here are stable.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import html
import json
from dataclasses import dataclass, field
from typing import Any

from modelaudit import registry
from modelaudit.errors import UsageError

SCHEMA_VERSION = "1.0"


class Severity(str, enum.Enum):
    """How bad a finding is if true; ordered so that ``>=`` compares badness."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_ORDER.index(self)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank >= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank > other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank <= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank


_SEVERITY_ORDER = [Severity.INFO, Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]


class Verdict(str, enum.Enum):
    """The one-word answer to "may this model be deployed?"."""

    PASS = "pass"
    SUSPICIOUS = "suspicious"
    BACKDOORED = "backdoored"
    UNSAFE_FILES = "unsafe-files"
    INCOMPLETE = "incomplete"


@dataclass
class Location:
    """Where a finding points; every field optional because evidence can be file-, tensor- or prompt-level."""

    path: str | None = None
    """File path relative to the model root (POSIX separators)."""
    member: str | None = None
    """Member inside a container: zip entry, tensor name, config key, pickle position."""
    line: int | None = None
    """1-based line in a text file, when known."""

    def __str__(self) -> str:
        text = self.path or ""
        if self.member:
            text = f"{text}:{self.member}" if text else self.member
        if self.line:
            text = f"{text}:{self.line}"
        return text


@dataclass
class Finding:
    """One piece of evidence against the model, with how sure we are."""

    rule_id: str
    """Stable dotted id, first component the stage (``static.pickle.dangerous-call``)."""
    severity: Severity
    """How bad it is if true."""
    message: str
    """One human sentence."""
    confidence: float = 1.0
    """Probability-like confidence in [0, 1] that the finding is real."""
    location: Location = field(default_factory=Location)
    """Where it is."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """Machine-readable facts that back the message (JSON-serialisable)."""
    key: str | None = None
    """What was found, named the same on every run of the same model (no measured number: no p-value, rate
    or rank), e.g. ``hostility`` for a group of triggers; None when the location alone names it. Writers
    use it where a name must not change between runs (JUnit test names, so CI history lines up)."""

    decision: TriageDecision | None = None
    """A security team's triage decision that covers this finding (``modelaudit triage decide``), carried to
    every later scan of the same model content; None when nobody decided."""

    @property
    def stage(self) -> str:
        return self.rule_id.split(".", 1)[0]

    @property
    def identity(self) -> str:
        """What a triage decision covers: rule, location and key, hashed. Measured numbers and evidence text
        are left out, so a later scan of the same model (other budget or seed) finds the same identities."""
        material = json.dumps([self.rule_id, str(self.location), self.key], ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    @property
    def suppressed(self) -> bool:
        """True when a decision took this finding out of the gate (false positive or accepted risk)."""
        return self.decision is not None and self.decision.suppresses


TRIAGE_STATUSES = ("confirmed", "false-positive", "accepted-risk")
"""What a triage decision can say; the last two suppress the findings they cover, the first makes them always
fail the gate."""
SUPPRESSING_STATUSES = ("false-positive", "accepted-risk")


@dataclass
class TriageDecision:
    """A person's decision about findings of one model content digest (``modelaudit triage decide``)."""

    status: str
    """One of ``TRIAGE_STATUSES``."""
    note: str
    """The justification, as the person wrote it (SARIF ``suppressions[].justification``)."""
    decided_by: str
    """Who recorded it (the user name of the process that ran ``triage decide``, or ``--by``)."""
    decided_at: str
    """When, UTC ISO 8601 with a ``Z``."""
    decision_id: int | None = None
    """The decision's id in the scan store."""

    @property
    def suppresses(self) -> bool:
        return self.status in SUPPRESSING_STATUSES


@dataclass
class ScanError:
    """A check or stage that broke; it lowers coverage and can make the verdict ``incomplete``."""

    stage: str
    """Stage name: ``static``, ``load``, ``weights``, ``triggers``, ``probes``."""
    check: str
    """Registered name of the check that failed, or the stage name."""
    message: str
    """One line naming the file (if any) and the problem."""
    path: str | None = None
    """File involved, relative to the model root."""


NOT_APPLICABLE = "not-applicable"
"""Coverage status of a selected stage that has nothing to do for this target (stated, not a failure)."""
DONE_STATUSES = ("ran", NOT_APPLICABLE)
"""Statuses with which a required stage counts as done; any other makes the verdict ``incomplete``."""


@dataclass
class StageCoverage:
    """Whether one stage ran and what it could not check."""

    status: str
    """``ran``, ``partial``, ``skipped``, ``failed``, or ``not-applicable`` (e.g. the weight diff without a base)."""
    required: bool = False
    """If true and the stage did not fully run, the verdict is ``incomplete``."""
    checks_run: list[str] = field(default_factory=list)
    """Names of checks that completed."""
    checks_failed: list[str] = field(default_factory=list)
    """Names of checks that raised."""
    notes: list[str] = field(default_factory=list)
    """What was not checked and why."""


@dataclass
class FileEntry:
    """One file of the target, hashed and sniffed by its bytes."""

    path: str
    """Relative POSIX path inside the model root."""
    size: int
    """Size in bytes."""
    sha256: str | None
    """Hex digest of the whole file; None when it was not hashed (``unread`` says why)."""
    content_type: str
    """Type sniffed from bytes: safetensors, pickle, pytorch-zip, zip, gguf, json, text, numpy, ...; or, for a
    symbolic link that is never opened, ``link-outside``, ``link-dangling`` or ``link-loop``."""
    unread: str | None = None
    """Why the file was not read or not hashed in full (a link out of the target, a read limit); None if hashed."""


@dataclass
class TargetInfo:
    """What was scanned, pinned precisely enough to reproduce the scan."""

    spec: str
    """The TARGET argument as given."""
    kind: str
    """``hub``, ``folder`` or ``file``."""
    local_path: str
    """Absolute path of the model root (the snapshot folder for hub ids)."""
    repo_id: str | None = None
    """Hub repo id, for hub targets."""
    requested_revision: str | None = None
    """Revision as asked (branch, tag or sha)."""
    resolved_revision: str | None = None
    """Commit sha the revision resolved to; what the report is about."""
    files: list[FileEntry] = field(default_factory=list)
    """Inventory with hashes."""


@dataclass
class Gate:
    """What the policy made of this report, so every writer shows the same outcome as the exit code.

    Writers compute nothing: a JUnit failure, a SARIF "execution not successful" or a Markdown "gate fails"
    line must agree with the verdict and with what ``modelaudit scan`` exits with, so they read it here.
    """

    fail_on: Severity = Severity.HIGH
    """Findings at or above this severity fail the gate (``--fail-on``)."""
    required_stages: list[str] = field(default_factory=list)
    """Stages that had to finish; one that did not makes the verdict ``incomplete``."""
    exit_code: int | None = None
    """What ``modelaudit scan`` exits with (0 pass, 1 findings, 3 incomplete); None before the policy ran."""

    def blocks(self, finding: Finding) -> bool:
        """True when this finding alone fails the gate: at or above ``fail_on``, or high enough to make the
        verdict ``backdoored`` or ``unsafe-files``. A finding a triage decision suppressed never blocks; one
        it confirmed always does."""
        if finding.decision is not None:
            return not finding.decision.suppresses
        return finding.severity >= self.fail_on or finding.severity >= Severity.HIGH

    @property
    def fails(self) -> bool:
        return self.exit_code not in (None, 0)

    def describe(self) -> str:
        """The gate's outcome in words, shown by every writer next to the verdict."""
        if self.exit_code is None:
            return "gate not evaluated"
        why = _GATE_EXITS.get(self.exit_code, "")
        state = "passes" if self.exit_code == 0 else "fails"
        return f"gate {state}: exit {self.exit_code}{why}; fail-on {self.fail_on.value}"


_GATE_EXITS = {0: "", 1: ", a finding fails the gate", 3: ", a required stage did not finish"}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


@dataclass
class ScanEstimate:
    """The cost model's estimate of a scan (``modelaudit.cost``), made when its model stages began, beside what
    the stages then took."""

    budget: str
    """The budget estimated (the one the stages ran at)."""
    stages: dict[str, float] = field(default_factory=dict)
    """Estimated seconds per model stage."""
    spent_seconds: float = 0.0
    """Seconds already spent when the estimate was made (resolving, the file checks, loading, measuring)."""
    total_seconds: float = 0.0
    """Estimated seconds of the whole scan: ``spent_seconds`` plus every estimated stage."""
    actual: dict[str, float] = field(default_factory=dict)
    """Seconds each estimated stage took."""
    actual_total_seconds: float | None = None
    """Seconds the whole scan took."""
    throughput: dict[str, float] = field(default_factory=dict)
    """This device's measured speed on the model (tokens per second of each kind of pass)."""
    measure_seconds: float = 0.0
    """Seconds the throughput measurement took (part of ``spent_seconds``)."""
    work: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per stage: its declared work in machine-independent units (tokens, passes, fixed seconds)."""
    time_limit: float | None = None
    """``--time-limit`` in seconds, when given."""
    requested_budget: str | None = None
    """The budget asked for, when ``--fit`` narrowed it to ``budget`` to fit the time limit; else None."""

    def describe(self) -> str:
        """A short phrase for a report header: estimate beside actual."""
        text = f"estimated {self.total_seconds:.0f} s"
        if self.actual_total_seconds is not None:
            text += f", took {self.actual_total_seconds:.0f} s"
        if self.requested_budget is not None:
            text += f" (budget narrowed from {self.requested_budget} to fit --time-limit {self.time_limit:g} s)"
        return text


@dataclass
class ScanInfo:
    """How the scan was run, so a report says when and with what settings it was made (provenance).

    Written by ``api.scan`` before any stage runs; every writer shows it in its header.
    """

    started_at: str
    """Start time in UTC, ISO 8601 with a ``Z`` (``2026-12-07T12:08:22Z``)."""
    stages: list[str] = field(default_factory=list)
    """Stages the scan was asked to run, in the order they run."""
    budget: str = "standard"
    """Behaviour-stage budget: quick, standard or deep."""
    seed: int = 0
    """Seed of every sampled choice (control insertions, random directions)."""
    device: str = "auto"
    """Device asked for: auto, cpu or cuda."""
    device_used: str | None = None
    """Device the model was loaded on (``cpu``, ``cuda:0``); None when no stage loaded the model."""
    stored_scan: int | None = None
    """When the scan store answered instead of a new scan (same content digest, settings and tool version):
    the id of the stored scan; None for a report made by this run."""
    stored_at: str | None = None
    """When that stored scan was made (UTC, ISO 8601), with ``stored_scan``."""
    estimate: ScanEstimate | None = None
    """The cost model's estimate beside the actual times; None when no model stage ran (or the report predates it)."""
    peak_memory_bytes: int | None = None
    """Peak resident memory of the scanning process by the end of the scan, in bytes (``modelaudit.memory``:
    the kernel's high-water mark, so it includes what the process held before); None where not reported."""
    peak_gpu_memory_bytes: int | None = None
    """Peak GPU memory torch allocated in the process, in bytes; None when no stage used a GPU."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanInfo:
        """From a report's ``scan`` object; keys this version does not know are ignored (newer reports)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        est = values.get("estimate")
        if isinstance(est, dict):
            est_known = {f.name for f in dataclasses.fields(ScanEstimate)}
            values["estimate"] = ScanEstimate(**{k: v for k, v in est.items() if k in est_known})
        return cls(**values)

    def describe(self) -> str:
        """One line for a report header."""
        device = self.device if self.device_used in (None, self.device) else f"{self.device} ({self.device_used})"
        line = (f"started {self.started_at} · stages {', '.join(self.stages) or 'none'} · budget {self.budget}"
                f" · seed {self.seed} · device {device}")
        if self.peak_memory_bytes is not None:
            line += f" · peak memory {_mib(self.peak_memory_bytes)}"
            if self.peak_gpu_memory_bytes is not None:
                line += f" (GPU {_mib(self.peak_gpu_memory_bytes)})"
        if self.stored_scan is not None:
            line += f" · answered from the scan store (scan {self.stored_scan}, made {self.stored_at})"
        if self.estimate is not None:
            line += f" · {self.estimate.describe()}"
        return line


@dataclass
class Report:
    """Everything one scan found; writers render it, they compute nothing."""

    target: TargetInfo
    """What was scanned."""
    tool_version: str
    """modelaudit version that produced the report."""
    findings: list[Finding] = field(default_factory=list)
    """All findings, any order (writers sort)."""
    errors: list[ScanError] = field(default_factory=list)
    """Checks and stages that broke."""
    coverage: dict[str, StageCoverage] = field(default_factory=dict)
    """Per-stage coverage, keyed by stage name."""
    verdict: Verdict = Verdict.INCOMPLETE
    """Final answer; ``incomplete`` until the verdict step runs."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage."""
    schema_version: str = SCHEMA_VERSION
    """Version of this JSON schema."""
    tool: str = "modelaudit"
    """Producer name."""
    gate: Gate = field(default_factory=Gate)
    """The policy's outcome (fail-on level, required stages, exit code), set with the verdict."""
    sections: dict[str, Any] = field(default_factory=dict)
    """Stage-specific top-level sections (``triggers``, ``probes``, ``weightdiff``), JSON-ready."""
    scan: ScanInfo | None = None
    """When and how the scan ran (start time, stages, budget, seed, device); None in reports made before it
    was recorded."""

    def max_severity(self) -> Severity | None:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "tool": self.tool,
            "tool_version": self.tool_version,
            "verdict": self.verdict.value,
            "target": dataclasses.asdict(self.target),
            "findings": [_finding_to_dict(f) for f in self.findings],
            "errors": [dataclasses.asdict(e) for e in self.errors],
            "coverage": {k: dataclasses.asdict(v) for k, v in self.coverage.items()},
            "timings": dict(self.timings),
            "gate": {"fail_on": self.gate.fail_on.value, "required_stages": list(self.gate.required_stages),
                     "exit_code": self.gate.exit_code},
        }
        if self.scan is not None:
            data["scan"] = dataclasses.asdict(self.scan)
        for name, value in self.sections.items():
            if name in data or name in _CORE_KEYS:
                raise ValueError(f"section {name!r} would overwrite a core report field")
            data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        target_data = dict(data["target"])
        target_data["files"] = [FileEntry(**f) for f in target_data.get("files", [])]
        gate = data.get("gate") or {}
        scan = data.get("scan")
        return cls(
            schema_version=data["schema_version"],
            tool=data.get("tool", "modelaudit"),
            tool_version=data["tool_version"],
            verdict=Verdict(data["verdict"]),
            target=TargetInfo(**target_data),
            findings=[_finding_from_dict(f) for f in data.get("findings", [])],
            errors=[ScanError(**e) for e in data.get("errors", [])],
            coverage={k: StageCoverage(**v) for k, v in data.get("coverage", {}).items()},
            timings=dict(data.get("timings", {})),
            gate=Gate(fail_on=Severity(gate.get("fail_on", Severity.HIGH.value)),
                      required_stages=list(gate.get("required_stages", [])), exit_code=gate.get("exit_code")),
            sections={k: v for k, v in data.items() if k not in _CORE_KEYS},
            scan=ScanInfo.from_dict(scan) if isinstance(scan, dict) else None,
        )

    # --- rendering (the Python API's view of the CLI's output formats) ---------------------------------
    # Through the writer registry (writers are plugins loaded by entry point), so this module never
    # imports ``reports`` and a plugin's format is as available here as on the command line.

    _NOTEBOOK_FRAME_HEIGHT_PX = 720
    """Height of the notebook frame around the HTML report (about one screen; the page scrolls in it)."""

    def render(self, fmt: str) -> str:
        """This report as the text of one output format: ``console``, ``json``, ``sarif``, ``html``,
        ``markdown``, ``junit`` or a plugin writer's name (what ``--format`` accepts).

        Raises:
            UsageError: no writer is registered under ``fmt``.
        """
        known = registry.writers.names()
        if fmt not in known:
            raise UsageError(f"unknown format {fmt!r} (known: {', '.join(known)})")
        text: str = registry.writers.get(fmt).obj(self, rules=registry.rule_descriptions())
        return text

    def to_json(self) -> str:
        """The JSON report (the stable contract of ``--format json``)."""
        return self.render("json")

    def to_sarif(self) -> str:
        """SARIF 2.1.0, for code-scanning uploads."""
        return self.render("sarif")

    def to_html(self) -> str:
        """The self-contained HTML page (inline CSS and plots, no network request)."""
        return self.render("html")

    def _repr_html_(self) -> str:
        """The HTML report in a notebook cell, framed: the page's own styles (``body``, tables) would
        otherwise restyle the whole notebook. ``sandbox`` lets the frame run nothing (the page has no
        script; model text in it is escaped already)."""
        page = html.escape(self.to_html(), quote=True)
        return (f'<iframe srcdoc="{page}" sandbox style="width: 100%; height: {self._NOTEBOOK_FRAME_HEIGHT_PX}px; '
                f'border: 1px solid #ccc"></iframe>')


_CORE_KEYS = frozenset({"schema_version", "tool", "tool_version", "verdict", "target", "findings", "errors",
                        "coverage", "timings", "gate", "scan"})
"""Top-level JSON keys of the report itself; no stage section may take one of these names."""


def _finding_to_dict(finding: Finding) -> dict[str, Any]:
    return {
        "rule_id": finding.rule_id,
        "severity": finding.severity.value,
        "confidence": finding.confidence,
        "message": finding.message,
        "location": dataclasses.asdict(finding.location),
        "evidence": finding.evidence,
        "key": finding.key,
        **({"decision": dataclasses.asdict(finding.decision)} if finding.decision is not None else {}),
    }


def _finding_from_dict(data: dict[str, Any]) -> Finding:
    return Finding(
        rule_id=data["rule_id"],
        severity=Severity(data["severity"]),
        confidence=float(data.get("confidence", 1.0)),
        message=data["message"],
        location=Location(**data.get("location", {})),
        evidence=dict(data.get("evidence", {})),
        key=data.get("key"),
        decision=TriageDecision(**data["decision"]) if isinstance(data.get("decision"), dict) else None,
    )
