"""Zoo seeds: another fixture seed shifts every seed of a spec, and the seed bench summarises over seeds."""

from __future__ import annotations

import copy

import pytest

from modelaudit.zoo import load_spec, with_seed


def test_with_seed_shifts_every_seed_and_zero_is_the_spec_itself() -> None:
    spec = {"base": {"kind": "tiny", "seed": 3}, "defaults": {"seed": 0, "steps": 5},
            "models": [{"name": "a"}, {"name": "b", "seed": 7}]}
    before = copy.deepcopy(spec)
    shifted = with_seed(spec, 2)
    assert shifted["base"]["seed"] == 5 and shifted["defaults"] == {"seed": 2, "steps": 5}
    assert shifted["models"] == [{"name": "a"}, {"name": "b", "seed": 9}]  # "a" takes the defaults' seed
    assert spec == before  # the caller's spec is not changed
    assert with_seed(spec, 0) == {**spec, "defaults": {"seed": 0, "steps": 5}}


def test_with_seed_leaves_a_base_that_is_not_trained_alone() -> None:
    shipped = load_spec("smollm2")
    assert with_seed(shipped, 1)["base"] == shipped["base"]  # a downloaded base has no seed to shift
    assert with_seed(load_spec("tiny"), 1)["base"]["seed"] == load_spec("tiny")["base"]["seed"] + 1


def test_seed_bench_reports_mean_and_range() -> None:
    from benchmarks.bench_seeds import summarise, to_markdown

    runs = [{"seed": s, "tpr": t, "fpr": 0.0, "exact_recall": 1 / 3, "partial_recall": 0.5,
             "working_trigger_rate": t, "effective_tpr": None, "auroc": a, "models": []}
            for s, t, a in ((0, 2 / 3, 0.83), (1, 1.0, 1.0), (2, 1.0, 1.0))]
    summary = summarise(runs)
    assert summary["tpr"] == {"mean": 0.889, "min": 0.667, "max": 1.0}
    assert summary["fpr"] == {"mean": 0.0, "min": 0.0, "max": 0.0}
    assert summary["effective_tpr"] == {"mean": None, "min": None, "max": None}  # no seed measured it
    md = to_markdown({"runs": runs, "summary": summary, "stages": "triggers", "budget": "quick", "machine": "x"})
    assert "| tpr | 0.89 | 0.67 | 1.00 | 0.67 | 1.00 | 1.00 |" in md and "3 seeds (0, 1, 2)" in md


def test_the_suite_runs_with_the_torch_thread_count_it_was_asked_for() -> None:
    """``MODELAUDIT_TEST_TORCH_THREADS=1 make test`` must really run single-threaded, or the check that the
    detection tests hold under another thread schedule checks nothing."""
    import os

    import torch

    from tests.conftest import TORCH_THREADS_ENV

    wanted = os.environ.get(TORCH_THREADS_ENV) or os.environ.get("OMP_NUM_THREADS")
    if not wanted:
        pytest.skip(f"no thread count asked for ({TORCH_THREADS_ENV} or OMP_NUM_THREADS)")
    assert torch.get_num_threads() == int(wanted)
