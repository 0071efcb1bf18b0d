"""Benchmark: fleet throughput of the three paths (local executor, Ray executor, answered from the store) and
the Ray overhead per task.

Each path runs the same models through ``fleet_scan`` into a fresh SQLite store (the store-hit path re-runs
the local path's store). Models per minute are over the fleet's wall time, which includes the driver keying
each model (resolve and hash) and storing each report. Ray runs on a local instance started by the bench and
timed apart (``ray_init_s``); two Ray runs:

* ``ray-sequential``: the instance's CPUs all go to one task at a time (``cpus_per_scan`` = CPUs), so each
  scan gets the threads a local scan gets; its wall time minus the local wall time, per task, is the **Ray
  overhead per task** (scheduling, worker start and imports, moving the job and the report).
* ``ray-parallel``: one CPU per task, as many tasks at once as CPUs (the throughput a small machine gets).

The verdicts of every path are compared (the issue: the three paths agree).

    .venv/bin/python benchmarks/bench_fleet.py --zoo /tmp/zoo-tiny --stages static,weights,triggers,probes \\
        --budget quick --smollm2 ~/.cache/modelaudit/smollm2 --out benchmarks/results/fleet

``--zoo`` is built (tiny spec, CPU) when it holds no ``zoo.json``; ``--smollm2`` adds one SmolLM2-135M model
scanned with ``--smollm2-stages`` (default static,weights; ``modelaudit fetch-smollm2`` puts it there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from modelaudit.fleet.driver import FleetResult, fleet_scan, summarize  # noqa: E402
from modelaudit.fleet.executors import Executor, LocalExecutor  # noqa: E402
from modelaudit.fleet.manifest import FleetTarget  # noqa: E402
from modelaudit.stages import ScanConfig  # noqa: E402
from modelaudit.store import open_store  # noqa: E402

SECONDS_PER_MINUTE = 60.0


def zoo_targets(zoo: Path) -> list[FleetTarget]:
    """Every model of a built zoo (its base too), each with the zoo's base as claimed base."""
    from modelaudit.zoo import build_zoo

    manifest = zoo / "zoo.json"
    if not manifest.is_file():
        build_zoo("tiny", zoo, device="cpu")
    data = json.loads(manifest.read_text(encoding="utf-8"))
    base = str(data["base"])
    return [FleetTarget(base, base=base)] + [FleetTarget(str(m["path"]), base=base) for m in data["models"]]


def run_path(targets: list[FleetTarget], config: ScanConfig, executor: Executor, store: Path) -> dict[str, Any]:
    """One fleet run; wall time, models per minute, per-model seconds and verdicts."""
    with open_store(str(store)) as opened:
        results, summary = summarize(fleet_scan(targets, config=config, executor=executor, store=opened))
    return {"models": summary.models, "wall_s": round(summary.seconds, 2),
            "models_per_min": round(summary.models * SECONDS_PER_MINUTE / summary.seconds, 1),
            "hits": summary.hits, "scanned": summary.scanned, "failed": summary.failed,
            "per_model_s": {_name(r): round(r.seconds, 2) for r in results},
            "verdicts": {_name(r): r.report.verdict.value for r in results}}


def _name(result: FleetResult) -> str:
    return Path(result.target.target).name


def ray_path(targets: list[FleetTarget], config: ScanConfig, store: Path, *, cpus: int,
             cpus_per_scan: float) -> dict[str, Any]:
    """A fleet run on a local Ray instance started (and timed) here, then shut down."""
    import logging

    import ray

    from modelaudit.fleet.ray_executor import LOCAL_OBJECT_STORE_BYTES, RayExecutor

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    init_s = time.perf_counter() - start
    try:
        out = run_path(targets, config, RayExecutor(cpus_per_scan=cpus_per_scan), store)
    finally:
        ray.shutdown()
    out["ray_init_s"] = round(init_s, 2)
    out["models_per_min_with_init"] = round(out["models"] * SECONDS_PER_MINUTE / (out["wall_s"] + init_s), 1)
    return out


def bench(targets: list[FleetTarget], config: ScanConfig, work: Path, cpus: int) -> dict[str, Any]:
    """The four runs over one set of models, the Ray overhead per task and whether the verdicts agree."""
    local = run_path(targets, config, LocalExecutor(), work / "local.sqlite")
    hits = run_path(targets, config, LocalExecutor(), work / "local.sqlite")
    sequential = ray_path(targets, config, work / "ray-seq.sqlite", cpus=cpus, cpus_per_scan=cpus)
    parallel = ray_path(targets, config, work / "ray-par.sqlite", cpus=cpus, cpus_per_scan=1)
    n = len(targets)
    overhead = (sequential["wall_s"] - local["wall_s"]) / n
    paths = {"local": local, "store-hit": hits, "ray-sequential": sequential, "ray-parallel": parallel}
    return {"stages": list(config.stages), "budget": config.budget, "models": n, "paths": paths,
            "ray_overhead_per_task_s": round(overhead, 2),
            "verdicts_agree": all(p["verdicts"] == local["verdicts"] for p in paths.values())}


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Fleet throughput ({doc['machine']})", "",
             f"Command: `{doc['command']}`", ""]
    for name, suite in doc["suites"].items():
        lines += [f"## {name}: {suite['models']} model(s), stages {','.join(suite['stages'])}, budget "
                  f"{suite['budget']}", "",
                  "| path | wall s | models/min | Ray init s | models/min incl. init | from store | scanned |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for path, r in suite["paths"].items():
            lines.append(f"| {path} | {r['wall_s']} | {r['models_per_min']} | {r.get('ray_init_s', '')} | "
                         f"{r.get('models_per_min_with_init', '')} | {r['hits']} | {r['scanned']} |")
        lines += ["", f"Ray overhead per task (ray-sequential wall minus local wall, per task): "
                      f"**{suite['ray_overhead_per_task_s']} s**. Verdicts of all paths agree: "
                      f"**{suite['verdicts_agree']}**.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True, help="A built tiny zoo (built there if absent).")
    parser.add_argument("--stages", default="static,weights,triggers,probes")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray instance.")
    parser.add_argument("--smollm2", type=Path, help="A SmolLM2-135M folder to bench as one more suite.")
    parser.add_argument("--smollm2-stages", default="static,weights")
    parser.add_argument("--out", type=Path, help="Write OUT.json and OUT.md.")
    args = parser.parse_args()
    suites: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        config = ScanConfig(stages=tuple(args.stages.split(",")), budget=args.budget, device="cpu")
        (Path(tmp) / "zoo").mkdir()
        suites["tiny zoo"] = bench(zoo_targets(args.zoo.expanduser()), config, Path(tmp) / "zoo", args.cpus)
        print(json.dumps(suites["tiny zoo"], indent=2), flush=True)
        if args.smollm2:
            (Path(tmp) / "smollm2").mkdir()
            config = ScanConfig(stages=tuple(args.smollm2_stages.split(",")), budget=args.budget, device="cpu")
            suites["SmolLM2-135M"] = bench([FleetTarget(str(args.smollm2.expanduser()))], config,
                                           Path(tmp) / "smollm2", args.cpus)
            print(json.dumps(suites["SmolLM2-135M"], indent=2), flush=True)
    doc = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
           "command": "benchmarks/bench_fleet.py " + " ".join(sys.argv[1:]), "suites": suites}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(to_markdown(doc), encoding="utf-8")
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
