"""The fleet driver: many targets through one executor and one scan store, results as they finish.

For each target the driver computes the store key (the model's content digest and the scan settings); a
stored answer is yielded at once (unless ``rescan``), the others go to the executor. The driver alone
writes the store: each finished report is stored the moment it arrives, so a run that is interrupted
loses only the scans in flight, and running the same fleet again (resume) answers every stored model from
the store without scanning or storing it twice.

A target whose scan did not finish (it raised, its worker died) is still a result: an ``incomplete``
report naming why, stored under the target's key so the model has one row. That row does not answer a
later run: a resume scans such a model again and the new report replaces it in place. A target that cannot
even be resolved (not found, unreadable) has no content to key a row by: it is yielded as a failed result
and counted in the exit code, and not stored.

Imports no Ray and no SQLAlchemy: the executor and the open store are passed in.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelaudit import __version__
from modelaudit.errors import ModelAuditError
from modelaudit.findings import Report
from modelaudit.fleet.cached import from_store, key_for, store_report
from modelaudit.fleet.digest import settings_fingerprint
from modelaudit.fleet.executors import FLEET_STAGE, Executor, JobResult, ScanJob, failed_report
from modelaudit.fleet.manifest import FleetTarget
from modelaudit.fleet.records import ScanKey
from modelaudit.policy import exit_code
from modelaudit.stages import ScanConfig

if TYPE_CHECKING:
    from modelaudit.store.scanstore import ScanStore

STORE = "store"
"""``FleetResult.source`` of a model answered from the scan store."""
SCANNED = "scanned"
"""``FleetResult.source`` of a model scanned by this run."""
FAILED = "failed"
"""``FleetResult.source`` of a model whose scan did not finish (its report is ``incomplete``)."""


@dataclass
class FleetResult:
    """One model of a fleet, done."""

    target: FleetTarget
    report: Report
    """The report (from the store, or this run's), with the content's triage decisions applied."""
    source: str
    """``store``, ``scanned`` or ``failed``."""
    seconds: float
    """Scan time where it ran, or the time to answer from the store."""
    exit_code: int
    """What a ``modelaudit scan`` of this model alone exits with under its policy."""
    failure: str | None = None
    """Why the scan did not finish (``failed`` only)."""


@dataclass
class FleetSummary:
    """Counts of a fleet run, for its summary line and exit code."""

    verdicts: collections.Counter[str] = field(default_factory=collections.Counter)
    """Models per verdict."""
    hits: int = 0
    """Answered from the store."""
    scanned: int = 0
    """Scanned by this run."""
    failed: int = 0
    """Scans that did not finish."""
    seconds: float = 0.0
    """Wall time of the run."""
    exit_codes: list[int] = field(default_factory=list)
    """Each model's exit code (the command exits with the worst: ``cli.edge.worst_exit``)."""

    def add(self, result: FleetResult) -> None:
        self.verdicts[result.report.verdict.value] += 1
        self.hits += result.source == STORE
        self.scanned += result.source == SCANNED
        self.failed += result.source == FAILED
        self.exit_codes.append(result.exit_code)

    @property
    def models(self) -> int:
        return self.hits + self.scanned + self.failed

    def describe(self) -> str:
        """One line: how many models, their verdicts, where the answers came from, how long it took."""
        verdicts = ", ".join(f"{n} {v}" for v, n in sorted(self.verdicts.items())) or "none"
        return (f"{self.models} model(s): {verdicts} · {self.hits} from the store, {self.scanned} scanned, "
                f"{self.failed} did not finish · {self.seconds:.1f} s")


@dataclass
class _Planned:
    """What the driver remembers about a submitted job until its result comes back."""

    target: FleetTarget
    key: ScanKey | None
    settings: dict[str, Any]


def fleet_scan(targets: Iterable[FleetTarget], *, config: ScanConfig, executor: Executor, store: ScanStore,
               rescan: bool = False) -> Iterator[FleetResult]:
    """Scan every target (or answer it from ``store``) and yield one result per target as each is done.

    ``config`` applies to every target; a target's own ``policy`` replaces the config's. Answers from the
    store come first where they are found; scans come back in the order they finish.

    Raises:
        StoreError: the store failed while being read or written (the run stops: results could not be kept).
        UsageError: the executor cannot run (Ray missing or unreachable).
    """
    ready: collections.deque[FleetResult] = collections.deque()
    planned: dict[int, _Planned] = {}

    def jobs() -> Iterator[ScanJob]:
        """Key each target; answers and unresolvable targets go to ``ready``, the rest to the executor."""
        for index, target in enumerate(targets):
            cfg = _config_for(target, config)
            start = time.perf_counter()
            try:
                key, settings = key_for(target.target, revision=target.revision, base=target.base, config=cfg)
            except ModelAuditError as exc:  # not found, unreadable, a bad revision: this model only
                job = ScanJob(index, target.target, target.base, target.revision, cfg)
                reason = f"the target could not be resolved: {exc}"
                ready.append(_failed(target, failed_report(job, reason), reason, time.perf_counter() - start, cfg))
                continue
            answer = None if key is None or rescan else from_store(store, key)
            if answer is not None and not _did_not_finish(answer):
                ready.append(FleetResult(target, answer, STORE, time.perf_counter() - start,
                                         _exit(answer, cfg)))
                continue
            planned[index] = _Planned(target, key, settings)
            yield ScanJob(index, target.target, target.base, target.revision, cfg)

    for result in executor.run(jobs()):
        while ready:
            yield ready.popleft()
        yield _kept(store, result, planned.pop(result.job.index))
    while ready:
        yield ready.popleft()


def summarize(results: Iterable[FleetResult]) -> tuple[list[FleetResult], FleetSummary]:
    """Run a fleet to the end: every result, and the summary (its wall time included)."""
    start = time.perf_counter()
    summary, done = FleetSummary(), []
    for result in results:
        summary.add(result)
        done.append(result)
    summary.seconds = time.perf_counter() - start
    return done, summary


def _config_for(target: FleetTarget, config: ScanConfig) -> ScanConfig:
    policy = target.read_policy()
    return config if policy is None else dataclasses.replace(config, policy=policy)


def _kept(store: ScanStore, result: JobResult, plan: _Planned) -> FleetResult:
    """Store a finished job's report (the driver is the store's only writer) and make its fleet result."""
    cfg = result.job.config
    if result.failure is None:
        report = store_report(store, result.report, plan.settings, plan.target.target)
        return FleetResult(plan.target, report, SCANNED, result.seconds, _exit(report, cfg))
    # under the target's key, so the model has one row, which the next run replaces with a finished scan;
    # a model without a digest gets a row of its own, as its finished scans do
    key = plan.key or ScanKey(digest=None, settings=settings_fingerprint(plan.settings),
                              tool_version=__version__)
    store.put(result.report, key, plan.settings, plan.target.target)
    return _failed(plan.target, result.report, result.failure, result.seconds, cfg)


def _failed(target: FleetTarget, report: Report, reason: str, seconds: float, config: ScanConfig) -> FleetResult:
    return FleetResult(target, report, FAILED, seconds, _exit(report, config), failure=reason)


def _did_not_finish(report: Report) -> bool:
    """A stored report of a scan that never finished (not a scan that finished incomplete): run it again."""
    return any(e.stage == FLEET_STAGE for e in report.errors)


def _exit(report: Report, config: ScanConfig) -> int:
    return report.gate.exit_code if report.gate.exit_code is not None else exit_code(report, config.policy)
