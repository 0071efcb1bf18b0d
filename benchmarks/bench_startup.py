"""Benchmark: wall time of a static-only scan of one pickle file, in a fresh process each run (issue 20).

A CI gate pays the start-up on every file it checks, so this measures the whole command as a user runs
it, ``modelaudit scan FILE --stages static --format json``, and lists which imports cost the most
(``python -X importtime``). Target: at most 0.5 s wall on 2 cores.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_startup.py --out benchmarks/results/startup
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_S = 0.5
"""Issue 20's goal for one static-only scan of one file, start-up included."""

TOP = 12
"""How many of the slowest imports the result lists."""


def make_pickle(folder: Path) -> Path:
    """A small benign checkpoint-like pickle (plain data, no calls beyond OrderedDict)."""
    state = OrderedDict((f"layer{i}.bias", [0.0] * 16) for i in range(8))
    path = folder / "checkpoint.pkl"
    path.write_bytes(pickle.dumps({"state_dict": state, "epoch": 3}, protocol=4))
    return path


def make_folder(folder: Path) -> Path:
    """A model folder: config.json (the config/card check reads transformers' name tables) and a pickle."""
    model = folder / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                   "hidden_size": 64, "num_hidden_layers": 2}))
    make_pickle(model).rename(model / "pytorch_model.bin")
    return model


CASES = {"pickle_file": make_pickle, "model_folder": make_folder}
"""What is scanned: one pickle file (the issue's case) and a folder with config.json beside the pickle."""


def scan_env() -> dict[str, str]:
    """The environment of each run, with bytecode caches allowed.

    An installed package has its ``.pyc`` files (pip compiles them at install). Where the shell sets
    ``PYTHONDONTWRITEBYTECODE`` (some containers do), every run would recompile the project's sources
    (~0.09 s here), which no installed copy pays; so the warm-up run writes the caches.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def scan_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "modelaudit.cli", "scan", str(path), "--stages", "static", "--format", "json"]


def time_runs(path: Path, repeats: int) -> list[float]:
    """Wall seconds of each run; a run whose JSON does not parse is an error (the benchmark measured nothing)."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(scan_command(path), capture_output=True, text=True, check=False, env=scan_env())
        runs.append(time.perf_counter() - start)
        if out.returncode not in (0, 1):
            raise SystemExit(f"scan failed (exit {out.returncode}): {out.stderr[-2000:]}")
        json.loads(out.stdout)
    return runs


def slowest_imports(path: Path) -> dict[str, Any]:
    """The imports with the largest cumulative time (top-level ones) and self time (any depth), in seconds."""
    out = subprocess.run([sys.executable, "-X", "importtime", *scan_command(path)[1:]],
                         capture_output=True, text=True, check=False, env=scan_env())
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        rows.append((name.rstrip(), int(self_us), int(cumulative_us)))
    top_level = sorted((r for r in rows if not r[0].startswith("  ")), key=lambda r: -r[2])[:TOP]
    by_self = sorted(rows, key=lambda r: -r[1])[:TOP]
    return {"cumulative_top_level": [(n.strip(), c / 1e6) for n, _, c in top_level],
            "self": [(n.strip(), s / 1e6) for n, s, _ in by_self],
            "heavy_loaded": sorted({n.strip().split(".")[0] for n, _, _ in rows}
                                   & {"torch", "transformers", "scipy", "sklearn", "numpy", "huggingface_hub"})}


def measure(make: Callable[[Path], Path], repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = make(Path(tmp))
        time_runs(path, 1)  # warm the page cache and .pyc files: later runs measure start-up, not disk
        runs = time_runs(path, repeats)
        imports = slowest_imports(path)
    return {"seconds": runs, "median_s": statistics.median(runs), "best_s": min(runs),
            "meets_target": statistics.median(runs) <= TARGET_S, **imports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    result = {"benchmark": "startup", "command": "modelaudit scan TARGET --stages static --format json",
              "target_s": TARGET_S, "cpu_count": os.cpu_count(), "bytecode_caches": "written by the warm-up run",
              "cases": {name: measure(make, args.repeats) for name, make in CASES.items()},
              "load_average_after": os.getloadavg()[0]}  # other work on the machine inflates every figure
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(f"{args.out}.json").write_text(text + "\n", encoding="utf-8")
        Path(f"{args.out}.md").write_text(to_markdown(result, args.repeats), encoding="utf-8")


def to_markdown(result: dict[str, Any], repeats: int) -> str:
    lines = [f"# Static-only scan start-up, fresh process per run ({result['cpu_count']} cores, "
             f"load average {result['load_average_after']:.1f} at the end; bytecode caches "
             f"{result['bytecode_caches']}, as an installed package has them)", ""]
    for name, case in result["cases"].items():
        lines += [f"## {name}", "",
                  f"median {case['median_s']:.3f} s, best {case['best_s']:.3f} s over {repeats} runs "
                  f"(target {TARGET_S} s); heavy libraries imported: {', '.join(case['heavy_loaded']) or 'none'}",
                  "", "| import (top level) | cumulative s |", "|---|---|"]
        lines += [f"| {n} | {s:.3f} |" for n, s in case["cumulative_top_level"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
