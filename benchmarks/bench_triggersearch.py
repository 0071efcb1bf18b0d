"""Benchmark: trigger search speed on a real model.

Issue 4 goals: report candidates evaluated per second, and the ratio of the search's scoring token
throughput to a plain batched forward loop over the same number of tokens (goal >= 0.8). The plain
loop runs ``model(input_ids)`` on random token rows of the search's mean sequence length and batch
size under ``inference_mode``: the fastest anyone could push those tokens through the model. The
search's throughput counts only real (unpadded) tokens, so padding, batching and bookkeeping all count
against it.

    .venv/bin/python benchmarks/bench_triggersearch.py MODEL_DIR --budget quick --out benchmarks/results/triggersearch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def plain_forward_tps(model: object, vocab: int, seq_len: int, batch: int, tokens: int) -> float:
    import torch

    device = next(model.parameters()).device  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    n_batches = max(1, tokens // (seq_len * batch))
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_batches):
            ids = torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)
            model(input_ids=ids)  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_batches * seq_len * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--generators", default="library,year-sweep")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from modelaudit.loading import load_model
    from triggersearch import search_triggers

    lm = load_model(args.model, device=args.device)
    start = time.perf_counter()
    result = search_triggers(lm.model, lm.tokenizer, budget=args.budget,
                             generators=[g for g in args.generators.split(",") if g])
    total = time.perf_counter() - start
    # the engine's own counters: tokens through forward during scoring and the time spent there
    engine_tps = result.tokens_scored / max(result.seconds_scoring, 1e-9)
    seq_len = 64
    plain = plain_forward_tps(lm.model, len(lm.tokenizer), seq_len, 32, min(result.tokens_scored, 200_000))
    out = {
        "model": args.model, "device": str(lm.device), "budget": args.budget, "generators": args.generators,
        "tests": result.tests, "candidates": result.candidates_tried, "prompts": result.prompts,
        "seconds_total": round(total, 2), "candidates_per_second": round(result.tests / total, 2),
        "tokens_scored": result.tokens_scored,
        "seconds_scoring": round(result.seconds_scoring, 2),
        "search_scoring_tokens_per_second": round(engine_tps, 1),
        "plain_forward_tokens_per_second": round(plain, 1),
        "ratio": round(engine_tps / plain, 3),
        "significant": [(h.trigger, h.placement) for h in result.significant][:5],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
    }
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
