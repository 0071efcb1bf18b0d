"""The cost model: declared work matches what the stages do, and --time-limit / --fit act on the estimate."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelaudit.cli import main
from modelaudit.cost import (CostInput, Plan, StageEstimate, StageWork, count_work, cost_input, fit_budget,
                             measure_throughput, over_limit_message, plan)
from modelaudit.findings import Report
from modelaudit.stages import BUDGETS

# The declared work of the search and what its forward calls count differ where the count depends on what the
# search finds (survivors of screening, confirmed hits); on the tiny model at the quick budget they agree to:
TOKEN_TOLERANCE = 0.25
"""Forward tokens (and the attention pairs): screening survivors and confirmed hits are assumptions."""
GENERATED_TOLERANCE = 0.15
"""Generated tokens: fixed by the budget except behaviour confirmation."""
ROW_TOLERANCE = 0.10
"""Rows scored or answered."""


@pytest.fixture(scope="module")
def loaded(clean_model: Path) -> Any:
    from modelaudit.loading import load_model

    return load_model(clean_model, device="cpu")


@pytest.fixture(scope="module")
def tiny_input(loaded: Any) -> CostInput:
    return cost_input(loaded.model, loaded.tokenizer)


def _close(declared: float, counted: float, tolerance: float) -> bool:
    return abs(declared - counted) <= tolerance * counted


def test_declared_work_is_deterministic_and_grows_with_the_budget(tiny_input: CostInput) -> None:
    from probes.stage import probes_work
    from triggersearch.budgets import BUDGETS as SIZES
    from triggersearch.codeprobe import code_probe_prompts, first_half
    from triggersearch.cost import CODE_YEARS_GOING_ON, triggers_work

    works = {b: triggers_work(b, tiny_input) for b in BUDGETS}
    assert works == {b: triggers_work(b, tiny_input) for b in BUDGETS}  # the same model and budget: the same work
    quick, standard, deep = (works[b] for b in BUDGETS)
    assert quick.forward_tokens < standard.forward_tokens < deep.forward_tokens
    assert quick.backward_passes == 0 < standard.backward_passes < deep.backward_passes  # quick has no GCG
    # the code probe's rows come from the budget: controls and the untriggered request on every request, the
    # years on the first half and the assumed share of them on the rest
    b = SIZES["quick"]
    n, years = len(code_probe_prompts(b.code_prompts)), b.code_years[1] - b.code_years[0] + 1
    first = first_half(n)
    rows = round((b.code_controls + 1) * n + years * first + CODE_YEARS_GOING_ON * years * (n - first)) * \
        len(b.code_placements)
    assert works["quick"].parts["code probe"] == rows * b.code_tokens
    assert probes_work("quick", tiny_input).forward_tokens < probes_work("deep", tiny_input).forward_tokens
    off = triggers_work("quick", CostInput(**{**tiny_input.__dict__, "options": {"triggers.code_probe": False}}))
    assert "code probe" not in off.parts and off.generated_tokens < quick.generated_tokens


def test_declared_work_matches_what_the_search_does(loaded: Any, tiny_input: CostInput) -> None:
    from triggersearch.cost import triggers_work
    from triggersearch.search import search_triggers

    declared = triggers_work("quick", tiny_input)
    with count_work(loaded.model) as counter:
        search_triggers(loaded.model, loaded.tokenizer, budget="quick")
    counted = counter.work
    assert counted.generated_tokens > 0 and counted.decode_steps > 0 and counted.backward_passes == 0
    assert _close(declared.generated_tokens, counted.generated_tokens, GENERATED_TOLERANCE), (declared, counted)
    assert _close(declared.forward_tokens, counted.forward_tokens, TOKEN_TOLERANCE), (declared, counted)
    assert _close(declared.forward_pairs, counted.forward_pairs, 2 * TOKEN_TOLERANCE), (declared, counted)
    assert _close(declared.rows, counted.rows, ROW_TOLERANCE), (declared, counted)


def test_throughput_is_measured_in_seconds_and_predicts_positive_times(loaded: Any, tiny_input: CostInput) -> None:
    from triggersearch.cost import triggers_work

    tp = measure_throughput(loaded.model, loaded.tokenizer, backward=True)
    assert tp.seconds < 30
    assert tp.forward_token > 0 and tp.decode_token > 0 and tp.backward_token > 0
    quick, deep = (tp.seconds_for(triggers_work(b, tiny_input)) for b in ("quick", "deep"))
    assert 0 < quick < deep


def _plan(budget: str, seconds: float) -> Plan:
    return Plan(budget=budget, spent=1.0, stages=[StageEstimate("triggers", seconds, StageWork())])


def test_fit_picks_the_largest_budget_that_fits_and_never_widens() -> None:
    plans = {"quick": _plan("quick", 10), "standard": _plan("standard", 100), "deep": _plan("deep", 1000)}
    assert fit_budget(plans, requested="deep", time_limit=200, order=BUDGETS) is plans["standard"]
    assert fit_budget(plans, requested="deep", time_limit=5000, order=BUDGETS) is plans["deep"]
    assert fit_budget(plans, requested="quick", time_limit=5000, order=BUDGETS) is plans["quick"]  # never wider
    assert fit_budget(plans, requested="deep", time_limit=5, order=BUDGETS) is None
    text = over_limit_message(plans["deep"], 200, plans["quick"], fit=False, fitting=plans["standard"])
    assert "16.7 min" in text and "--time-limit 200 s" in text and "--fit would narrow the budget to standard" in text
    text = over_limit_message(plans["deep"], 5, plans["quick"], fit=True)
    assert "no budget fits" in text and "quick" in text


def test_plan_counts_each_unit_at_its_rate() -> None:
    from modelaudit.cost import Throughput

    tp = Throughput(forward_pass=0.5, forward_token=0.01, decode_step=0.1, decode_token=0.02, row=0.001)
    work = StageWork(forward_passes=2, forward_tokens=100, decode_steps=10, generated_tokens=50, rows=1000,
                     fixed_seconds=3.0)
    got = plan({"triggers": work}, tp, budget="quick", spent=4.0)
    assert got.stages[0].seconds == pytest.approx(1.0 + 1.0 + 1.0 + 1.0 + 1.0 + 3.0)
    assert got.total == pytest.approx(12.0)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr


def test_a_scan_over_its_time_limit_is_refused_naming_the_estimate(clean_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, err = _cli("scan", str(clean_model), "--stages", "static,triggers", "--budget", "quick",
                     "--time-limit", "1", "--format", "json", "-o", str(out))
    assert code == 2, err
    assert "estimated to take" in err and "--time-limit 1 s" in err and "triggers" in err
    assert not out.exists()
    code, err = _cli("scan", str(clean_model), "--stages", "static", "--fit")
    assert code == 2 and "--fit needs --time-limit" in err
    code, err = _cli("triggers", str(clean_model), "--budget", "quick", "--time-limit", "1", "--format", "json",
                     "-o", str(out))
    assert code == 2 and "estimated to take" in err and "--time-limit 1 s" in err and not out.exists()
    code, err = _cli("triggers", str(clean_model), "--fit")
    assert code == 2 and "--fit needs --time-limit" in err
    twin = tmp_path / "twin"
    shutil.copytree(clean_model, twin)
    code, err = _cli("scan", str(clean_model), str(twin), "--stages", "static,triggers", "--budget", "quick",
                     "--time-limit", "1", "--format", "json", "-o", str(out))
    assert code == 2 and err.count("estimated to take") == 2, err  # several targets: each refused alone, none stops


def test_fit_narrows_the_budget_and_the_report_records_estimate_and_actual(loaded: Any, tiny_input: CostInput,
                                                                          clean_model: Path, tmp_path: Path) -> None:
    from triggersearch.cost import triggers_work

    tp = measure_throughput(loaded.model, loaded.tokenizer, backward=True)
    quick, standard = (tp.seconds_for(triggers_work(b, tiny_input)) for b in ("quick", "standard"))
    # the work, not the machine, sets the ratio (the gradient search makes standard 10-25x quick on the tiny model);
    # the scan measures again, so a limit at the geometric mean leaves room for a busy machine either way
    assert standard > 8 * quick
    limit = math.sqrt(quick * standard) + 10  # loading and measuring count too
    out = tmp_path / "r.json"
    code, err = _cli("scan", str(clean_model), "--stages", "static,triggers", "--budget", "standard", "--fit",
                     "--time-limit", f"{limit:.0f}", "--device", "cpu", "--format", "json", "-o", str(out))
    assert code in (0, 1), err
    data = json.loads(out.read_text())
    est = data["scan"]["estimate"]
    assert data["scan"]["budget"] == est["budget"] == "quick" and est["requested_budget"] == "standard"
    assert data["trigger_search"]["budget"] == "quick"  # the stage really ran at the narrowed budget
    assert set(est["stages"]) == set(est["actual"]) == {"triggers"}
    assert est["total_seconds"] <= limit and est["actual_total_seconds"] > 0 and est["throughput"]
    assert any("narrowed from standard to quick" in n for n in data["coverage"]["triggers"]["notes"])
    again = Report.from_dict(data)
    assert again.scan is not None and again.scan.estimate is not None and again.scan.estimate.budget == "quick"
    assert "estimated" in again.scan.describe()


def test_static_only_scans_make_no_estimate(clean_model: Path) -> None:
    from modelaudit.api import scan
    from modelaudit.stages import ScanConfig

    report = scan(clean_model, config=ScanConfig(stages=("static",), time_limit=1.0))
    assert report.scan is not None and report.scan.estimate is None


def test_the_reporters_show_the_estimate_beside_each_stage() -> None:
    import io
    import logging

    from rich.console import Console

    from modelaudit.progress import LogReporter, RichReporter, stage_progress, tell_estimate

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test-cost-reporter")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    log = LogReporter(logger)
    tell_estimate(log, ["estimate on this device: budget quick: triggers 12 s; total 20 s"], {"triggers": 12.0})
    with stage_progress(log, "triggers") as run:
        run.status = "ran"
    assert records[0].startswith("estimate on this device")
    assert records[1] == "stage triggers: started (estimated 12 s)"
    assert records[2].startswith("stage triggers: ran in ") and records[2].endswith(", estimated 12 s")
    out = io.StringIO()
    rich = RichReporter(Console(file=out, force_terminal=True, width=120))
    tell_estimate(rich, ["estimate line"], {"triggers": 12.0})
    with stage_progress(rich, "triggers") as run:
        rich._progress.refresh()
        run.status = "ran"
    assert "estimate line" in out.getvalue() and "(estimated 12 s)" in out.getvalue()
    tell_estimate(None, ["nothing"], {})  # no reporter: nothing shown, no error
