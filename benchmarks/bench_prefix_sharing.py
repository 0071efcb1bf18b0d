"""Benchmark: the trigger search's scoring with shared beginnings run once per batch (``modelaudit.prefixshare``)
against every row run whole, on the same model, insertions and prompts.

Three ways: ``plain`` (every row whole), ``opening`` (each batch's common opening once: the chat template's start,
a prompt's suffix insertions not batched together) and ``grouped`` (what the search does: on a CPU a prompt's
suffix insertions make batches of their own and share the whole prompt, ``engine.PROMPT_GROUP_MIN``). Each round
scores the same insertions (library triggers and years) at every placement on the held-out prompts, once each way,
in turn so that a change of load on a shared machine falls on all; the table gives the median seconds per way, the
speed-ups over plain, and the largest difference of any divergence from plain.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_prefix_sharing.py --model ~/.cache/modelaudit/smollm2 \
        --out benchmarks/results/prefix-sharing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--insertions", type=int, default=48, help="library triggers and years scored per round")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from modelaudit.chat import PLACEMENTS
    from modelaudit.loading import load_model
    from modelaudit.prompts import benign_prompts
    from triggersearch import engine as engine_module
    from triggersearch.engine import Engine
    from triggersearch.generators import LIBRARY, YEAR_PHRASINGS

    lm = load_model(args.model.expanduser(), device="cpu")
    texts = (list(LIBRARY) + [YEAR_PHRASINGS[0].format(year=y) for y in range(1990, 2041)])[: args.insertions]
    tests = [(t, p) for t in texts for p in PLACEMENTS]
    prompts = [p.prompt for p in benign_prompts("heldout")][: args.prompts]
    engines = {}
    ways = ("grouped", "opening", "plain")
    grouping = engine_module.PROMPT_GROUP_MIN
    for way in ways:
        engines[way] = Engine(lm.model, lm.tokenizer, prompts)
        engines[way].baseline(PLACEMENTS[0])  # baselines and the first-batch check outside the timing
        engines[way].baseline("system")
        if way == "plain":
            engines[way]._sharing.enabled = False
    engines["grouped"].score_many(tests[:4], range(len(prompts)))
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    scores = {}
    for _ in range(args.rounds):
        for way, engine in engines.items():
            engine_module.PROMPT_GROUP_MIN = grouping if way == "grouped" else sys.maxsize
            start = time.perf_counter()
            scores[way] = engine.score_many(tests, range(len(prompts)))
            seconds[way].append(time.perf_counter() - start)
    engine_module.PROMPT_GROUP_MIN = grouping
    diff = max(abs(a - b) for way in ("grouped", "opening")
               for (ka, _), (kb, _) in zip(scores[way], scores["plain"]) for a, b in zip(ka, kb))
    firsts_same = all(fa == fb for way in ("grouped", "opening")
                      for (_, fa), (_, fb) in zip(scores[way], scores["plain"]))
    median = {way: statistics.median(seconds[way]) for way in ways}
    row = {"model": str(args.model), "rows": len(tests) * len(prompts), "rounds": args.rounds,
           "threads": torch.get_num_threads(), "shared_enabled": engines["grouped"]._sharing.enabled,
           **{f"{way}_s": round(median[way], 2) for way in ways},
           "speedup_opening": round(median["plain"] / median["opening"], 2),
           "speedup_grouped": round(median["plain"] / median["grouped"], 2),
           "max_divergence_difference": diff, "first_tokens_same": firsts_same,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load": os.getloadavg()[0],
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(row, indent=1))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(row, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(
            "# Scoring with shared beginnings run once per batch\n\n"
            "`benchmarks/bench_prefix_sharing.py`: the trigger search's scoring (`Engine.score_many`) of the same "
            "insertions at every placement on held-out prompts, each way timed in turn: plain (every row whole), "
            "opening (each batch's common opening once) and grouped (also a prompt's suffix insertions batched "
            "together, sharing the whole prompt: what the search does on a CPU).\n\n"
            "| model | rows | threads | plain s | opening s | grouped s | speed-up opening | speed-up grouped | "
            "largest divergence difference | first tokens same | load |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {Path(row['model']).name} | {row['rows']} | {row['threads']} | {row['plain_s']} | {row['opening_s']} | "
            f"{row['grouped_s']} | {row['speedup_opening']}x | {row['speedup_grouped']}x | "
            f"{row['max_divergence_difference']:.1e} | {row['first_tokens_same']} | "
            f"{row['load']:.1f} |\n\nMeasured {row['date']} on {row['machine']}.\n")


if __name__ == "__main__":
    main()
