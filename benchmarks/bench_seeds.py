"""Benchmark: the tiny-zoo detection bench over several fixture seeds, with mean and range.

One seed's bench says how the scan did on one set of tiny weights; another CPU, library version or
thread schedule trains other weights from the same recipe (issue 18). Building the zoo at several seeds
(``build_zoo(..., seed=s)`` shifts every seed of the spec; seed 0 is the shipped zoo) and scanning each
blind gives the spread a reader should expect: TPR, FPR, planted-trigger recall (exact and partial),
working-trigger rate and AUROC as mean, min and max, beside each seed's rows.

    .venv/bin/python benchmarks/bench_seeds.py --seeds 0 1 2 --work /tmp/zoo-seeds \
        --out benchmarks/results/bench-tiny-zoo-seeds

Each seed's zoo and scan reports stay under ``--work``; with ``--resume`` a seed whose zoo was built is
not rebuilt and its finished scans are kept, so an interrupted run goes on. The summary is rewritten
after every seed, so a run cut short still leaves the seeds it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import mean
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

METRICS = ("tpr", "fpr", "exact_recall", "partial_recall", "working_trigger_rate", "behaviour_named_rate", "effective_tpr",
           "auroc")
"""``BenchResult`` fields summarised over seeds."""


def bench_seed(seed: int, work: Path, *, stages: str, budget: str, resume: bool) -> dict[str, Any]:
    """Build the tiny zoo at ``seed`` on the CPU (unless resuming a built one) and bench it."""
    from modelaudit.bench import run_bench
    from modelaudit.zoo import build_zoo

    zoo_dir = work / f"seed-{seed}" / "zoo"
    start = time.perf_counter()
    if not (resume and (zoo_dir / "zoo.json").is_file()):
        build_zoo("tiny", zoo_dir, device="cpu", seed=seed)
    built = time.perf_counter() - start
    result = run_bench(zoo_dir, stages=stages, budget=budget, progress=True,
                       reports_dir=work / f"seed-{seed}" / "reports", resume=resume)
    return {"seed": seed, "build_seconds": round(built, 1), **result.to_dict()}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean, min and max of each metric over the seeds (None where no seed measured it)."""
    out: dict[str, dict[str, float | None]] = {}
    for key in METRICS:
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        out[key] = ({"mean": round(mean(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}
                    if values else {"mean": None, "min": None, "max": None})
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    seeds = [r["seed"] for r in doc["runs"]]
    lines = [f"# modelaudit bench: tiny zoo over {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             f"Stages {doc['stages']}; budget {doc['budget']}; {doc['machine']}; CPU-trained zoos.", "",
             "| metric | mean | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|---|" + "---|" * len(seeds)]
    for key, agg in doc["summary"].items():
        per_seed = " | ".join(f(r.get(key)) for r in doc["runs"])
        lines.append(f"| {key} | {f(agg['mean'])} | {f(agg['min'])} | {f(agg['max'])} | {per_seed} |")
    lines += ["", "| seed | model | attack success / false | verdict | score | planted | found (top 3) | match |",
              "|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        for m in r["models"]:
            rates = "-" if m["attack_success"] is None else f"{m['attack_success']:.2f} / {f(m['false_trigger'])}"
            found = ", ".join(f"`{t}`" for t in m["found_triggers"][:3]).replace("|", "\\|") or "-"
            planted = f"`{m['planted_trigger']}`".replace("|", "\\|") if m["planted_trigger"] else "-"
            lines.append(f"| {r['seed']} | {m['name']} | {rates} | {m['verdict']} | {m['score']:.1f} | {planted} | "
                         f"{found} | {m['planted_found']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, required=True, help="Folder for each seed's zoo and scan reports.")
    ap.add_argument("--out", default="benchmarks/results/bench-tiny-zoo-seeds",
                    help="Write OUT.json and OUT.md (rewritten after every seed).")
    ap.add_argument("--stages", default="static,weights,triggers,probes")
    ap.add_argument("--budget", default="standard")
    ap.add_argument("--resume", action="store_true", help="Keep built zoos and finished scans under --work.")
    args = ap.parse_args()

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        runs.append(bench_seed(seed, args.work, stages=args.stages, budget=args.budget, resume=args.resume))
        doc = {"stages": args.stages, "budget": args.budget, "seeds": [r["seed"] for r in runs],
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
               "summary": summarise(runs), "runs": runs}
        Path(f"{args.out}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        Path(f"{args.out}.md").write_text(to_markdown(doc), encoding="utf-8")
        print(to_markdown(doc))


if __name__ == "__main__":
    main()
