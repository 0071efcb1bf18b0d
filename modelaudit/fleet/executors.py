"""Executors run fleet scans and hand back reports as they finish; they never write to the scan store.

The contract is small on purpose: an executor takes ``ScanJob``s and yields one ``JobResult`` per job, in
the order the scans finish (streaming, so a thousand-model fleet shows results as they come). A scan that
raises, or a worker that dies, is still a result: an ``incomplete`` report naming the problem (fail closed,
never dropped). The embedded ``LocalExecutor`` is the default; ``ray_executor.RayExecutor`` runs the same
jobs as Ray tasks.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from modelaudit import __version__
from modelaudit.api import scan, scan_info
from modelaudit.errors import ModelAuditError
from modelaudit.findings import Report, ScanError, StageCoverage, TargetInfo
from modelaudit.policy import apply_policy
from modelaudit.progress import LOGGER
from modelaudit.registry import Evidence, stages_with_evidence
from modelaudit.stages import ScanConfig
from modelaudit.target import looks_like_hub_id

FLEET_STAGE = "fleet"
"""The ``stage`` of the error recorded on a report whose scan could not run or finish."""
CUDA_ENV = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class ScanJob:
    """One scan for an executor: what ``api.scan`` gets, plus the driver's handle for it."""

    index: int
    """The driver's number for this job (results come back in another order)."""
    target: str
    base: str | None
    revision: str | None
    config: ScanConfig
    """Without a progress reporter: jobs travel to other processes, and one line per model is shown instead."""


@dataclass
class JobResult:
    """What an executor hands back for one job."""

    job: ScanJob
    report: Report
    """The scan's report, or an ``incomplete`` one naming why the scan did not finish."""
    seconds: float
    """Wall time of the scan where it ran (0 when it never started)."""
    failure: str | None = None
    """Why there is no real report (the scan raised, the worker died); None for a finished scan."""


class Executor(Protocol):
    """Runs scan jobs somewhere and yields their results as they finish, one per job, none dropped."""

    def run(self, jobs: Iterable[ScanJob]) -> Iterator[JobResult]:
        """Start every job and yield each result as it finishes."""


def portable(config: ScanConfig) -> ScanConfig:
    """The config without its progress reporter (a terminal display neither pickles nor means anything in
    another process)."""
    return dataclasses.replace(config, progress=None)


def failed_report(job: ScanJob, reason: str) -> Report:
    """An ``incomplete`` report for a scan that did not finish: every requested stage failed with ``reason``,
    so the policy fails it closed (exit 3) like any other unfinished scan."""
    kind = "hub" if looks_like_hub_id(job.target) and not os.path.exists(job.target) else "unresolved"
    info = scan_info(job.config)
    report = Report(target=TargetInfo(spec=job.target, kind=kind, local_path="",
                                      repo_id=job.target if kind == "hub" else None,
                                      requested_revision=job.revision),
                    tool_version=__version__, scan=info)
    report.errors.append(ScanError(stage=FLEET_STAGE, check=FLEET_STAGE, message=reason))
    for stage in info.stages:
        report.coverage[stage] = StageCoverage(status="failed", notes=[reason])
    return apply_policy(report, job.config.policy)


def run_job(job: ScanJob) -> JobResult:
    """Scan one job here and now; whatever it raises becomes an incomplete report (never a lost model)."""
    start = time.perf_counter()
    try:
        report = scan(job.target, revision=job.revision, base=job.base, config=job.config)
    except Exception as exc:  # a scan that raised is a result too: fail closed, named
        what = str(exc) if isinstance(exc, ModelAuditError) else f"{type(exc).__name__}: {exc}"
        reason = f"the scan did not finish: {what}"
        return JobResult(job, failed_report(job, reason), time.perf_counter() - start, failure=reason)
    return JobResult(job, report, time.perf_counter() - start)


def may_use_gpu(config: ScanConfig) -> bool:
    """Whether a scan would put a model on a GPU if one were there: not asked for cpu, and a stage it runs
    loads the model (the behaviour stages; the file checks and the streaming weight diff do not)."""
    return config.device != "cpu" and bool(set(config.stages) & stages_with_evidence(Evidence.BEHAVIOUR))


def needs_gpu(config: ScanConfig, gpus: int) -> bool:
    """Whether a scan should hold a GPU where ``gpus`` are available: it asked for cuda, or for auto where
    there is one, and it loads the model."""
    return may_use_gpu(config) and (config.device == "cuda" or gpus > 0)


class LocalExecutor:
    """The embedded default: scans on this machine, one at a time in this process (CPU).

    Where several CUDA GPUs are visible and the scans load models on them, one worker process per GPU
    (``CUDA_VISIBLE_DEVICES`` set to it) takes the next scan as it frees up. That path is not exercised by
    the test suite (no machine with several GPUs runs it); it is the standard library's process pool and
    nothing more.
    """

    def __init__(self, *, gpus: int | None = None) -> None:
        self.gpus = gpus
        """Visible CUDA GPUs; None: counted when the first job needs to know."""

    def run(self, jobs: Iterable[ScanJob]) -> Iterator[JobResult]:
        """Scan each job as it is drawn (so the driver keys the next target only when a scan is done)."""
        stream = iter(jobs)
        for job in stream:
            if may_use_gpu(job.config) and self._gpus() > 1:
                yield from _per_gpu(itertools.chain([job], stream), self._gpus())
                return
            yield run_job(dataclasses.replace(job, config=portable(job.config)))

    def _gpus(self) -> int:
        if self.gpus is None:
            import torch

            self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return self.gpus


def _pin_gpu(gpu: int) -> None:
    """Worker initialiser: this process sees one GPU only."""
    os.environ[CUDA_ENV] = str(gpu)


def _per_gpu(jobs: Iterator[ScanJob], gpus: int) -> Iterator[JobResult]:
    """One worker process per GPU; each takes the next job when its scan finishes. A worker that dies takes
    only its own scan with it: that job becomes an incomplete report and the GPU gets a fresh worker."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # CUDA state must not be forked

    def worker(gpu: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=context, initializer=_pin_gpu, initargs=(gpu,))

    def submit(gpu: int) -> None:
        job = next(jobs, None)
        if job is not None:
            job = dataclasses.replace(job, config=portable(job.config))
            running[pools[gpu].submit(run_job, job)] = (gpu, job)

    pools = [worker(g) for g in range(gpus)]
    running: dict[Future[JobResult], tuple[int, ScanJob]] = {}
    try:
        for gpu in range(gpus):
            submit(gpu)
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                gpu, job = running.pop(future)
                try:
                    yield future.result()
                except Exception as exc:  # the worker process died (BrokenProcessPool) or could not pickle
                    reason = f"the scan's worker on GPU {gpu} died: {exc or type(exc).__name__}"
                    LOGGER.warning("%s: %s", job.target, reason)
                    yield JobResult(job, failed_report(job, reason), 0.0, failure=reason)
                    pools[gpu].shutdown(wait=False)
                    pools[gpu] = worker(gpu)
                submit(gpu)
    finally:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
