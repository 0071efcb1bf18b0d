"""``modelaudit diff MODEL BASE``: the weight diff (the scan's ``weights`` stage) as its own command."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from modelaudit.api import ScanConfig
from modelaudit.api import scan as run_scan
from modelaudit.cli.edge import ModelAuditCommand, emit_text, settings
from modelaudit.cli.scan import hub_options, report_options
from modelaudit.errors import StageError
from modelaudit.policy import EXIT_FINDINGS, EXIT_PASS, Policy, exit_code, parse_severity
from reports.output import render

OWN_FORMATS = ("console", "json")
"""Formats with the diff's own layout (every tensor and layer); the others render the scan report."""


@click.command(name="diff", cls=ModelAuditCommand)
@click.argument("model")
@click.argument("base")
@click.option("--reference", help="A clean fine-tune of BASE; token rows are measured relative to its change "
                                  "(without one the token ranking is a weak signal).")
@hub_options
@report_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--top", default=10, show_default=True, help="Rows to show per list in the console output.")
def diff(model: str, base: str, reference: str | None, revision: str | None, cache_dir: str | None,
         offline: bool | None, fmt: str, output: str | None, fail_on: str | None, device: str, top: int) -> None:
    """Compare MODEL with the BASE it claims: provenance, per-layer change, delta rank, token rows.

    MODEL is a hub id (resolved like scan's TARGET, with --revision, --cache-dir, --offline), a local folder
    (safetensors, sharded or not), or a .safetensors or .gguf file; BASE a local folder or file, or a hub id
    already in the cache. console and json show the diff itself; the other formats are the report of a scan
    with the weights stage only.
    """
    policy = Policy()
    if fail_on is not None:
        policy.fail_on = parse_severity(fail_on)
    options: dict[str, object] = {"weights.reference": reference} if reference else {}
    report = run_scan(model, revision=revision, base=base,
                      config=ScanConfig(policy=policy, stages=("weights",), cache_dir=cache_dir, offline=offline,
                                        device=device, options=options, progress=settings().reporter))
    if fmt not in OWN_FORMATS:
        emit_text(render(report, fmt), output, f"{report.verdict.value}: report written to {output}")
        sys.exit(exit_code(report, policy))
    data = report.sections.get("weightdiff")
    if data is None:  # the stage failed: its error is the command's
        raise StageError("; ".join(e.message for e in report.errors) or "the weight diff did not run")
    findings = [f for f in report.findings if f.stage == "weights"]
    data = {**data, "findings": [{"rule_id": f.rule_id, "severity": f.severity.value, "confidence": f.confidence,
                                  "message": f.message, "location": dataclasses.asdict(f.location),
                                  "evidence": f.evidence} for f in findings]}
    text = json.dumps(data, indent=2, allow_nan=False) + "\n" if fmt == "json" else _console(data, top)
    emit_text(text, output, f"derived_from_base={str(data.get('derived_from_base')).lower()}: written to {output}")
    sys.exit(EXIT_FINDINGS if any(f.severity >= policy.fail_on for f in findings) else EXIT_PASS)


def _console(data: dict[str, Any], top: int) -> str:
    """Plain text summary; the JSON has everything."""
    p = data["provenance"]
    lines = [f"model: {data['model']}", f"base:  {data['base']}",
             f"provenance: {p['verdict']} (median correlation {p['median_correlation']:.3f}, "
             f"{p['matched_fraction']:.0%} of {p['tensors_tested']} matrices inherited)"]
    untouched = data["untouched_tensors"]
    lines.append(f"tensors: {len(data['tensors'])} compared, {len(untouched)} untouched")
    lines.append("per-layer relative change:")
    peak = max((g["relative_change"] or 0.0 for g in data["layers"]), default=0.0) or 1.0
    for layer in data["layers"]:
        bar = "#" * int(round(30 * (layer["relative_change"] or 0.0) / peak))
        lines.append(f"  {layer['name']:<12} {layer['relative_change']:.4g} "
                     f"({layer['changed_tensors']}/{layer['tensors']} changed) {bar}")
    low = [t for t in data["tensors"] if t["spectrum"] and t["spectrum"]["low_rank"]]
    if low:
        lines.append(f"low-rank deltas: {len(low)} matrices, e.g. "
                     + ", ".join(f"{t['name']} (rank {t['spectrum']['rank99']})" for t in low[:top]))
    tokens = data.get("tokens")
    if tokens:
        lines.append(f"token rows ({tokens['side']}, {tokens['method']}, signal {tokens['signal']}):")
        for row in tokens["top_rows"][:top]:
            lines.append(f"  z={row['z']:>8.2f}  id={row['token_id']:<7} {row['text']!r}")
        if data["token_candidates"]:
            lines.append("token candidates: " + ", ".join(repr(c) for c in data["token_candidates"][:top]))
    for f in data["findings"]:
        lines.append(f"[{f['severity']}] {f['rule_id']}: {f['message']}")
    for note in data["coverage_notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"
