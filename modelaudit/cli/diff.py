"""``modelaudit diff MODEL BASE``: the weight diff (the scan's ``weights`` stage) as its own command."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from modelaudit.cli.edge import ModelAuditCommand, write_output
from modelaudit.errors import UsageError
from modelaudit.policy import EXIT_FINDINGS, EXIT_PASS, parse_severity
from modelaudit.weightdiff import diff_models, weight_findings

DIFF_FORMATS = ("console", "json")


@click.command(name="diff", cls=ModelAuditCommand)
@click.argument("model")
@click.argument("base")
@click.option("--reference", help="A clean fine-tune of BASE; token rows are measured relative to its change "
                                  "(without one the token ranking is a weak signal).")
@click.option("--format", "fmt", default="console", show_default=True, help=f"Output: {', '.join(DIFF_FORMATS)}.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the result here (atomically).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--fail-on", default="high", show_default=True, help="Exit 1 when a finding is at or above this severity.")
@click.option("--top", default=10, show_default=True, help="Rows to show per list in the console output.")
def diff(model: str, base: str, reference: str | None, fmt: str, output: str | None, device: str, fail_on: str,
         top: int) -> None:
    """Compare MODEL with the BASE it claims: provenance, per-layer change, delta rank, token rows.

    MODEL and BASE are local folders (safetensors, sharded or not), .safetensors or .gguf files, or hub
    ids already in the local cache.
    """
    if fmt not in DIFF_FORMATS:
        raise UsageError(f"unknown format {fmt!r} for diff (known: {', '.join(DIFF_FORMATS)})")
    threshold = parse_severity(fail_on)
    result = diff_models(model, base, reference_dir=reference, device=device)
    findings = weight_findings(result)
    data = result.to_dict()
    data["findings"] = [{"rule_id": f.rule_id, "severity": f.severity.value, "confidence": f.confidence,
                         "message": f.message, "location": dataclasses.asdict(f.location), "evidence": f.evidence}
                        for f in findings]
    text = json.dumps(data, indent=2, allow_nan=False) + "\n" if fmt == "json" else _console(data, top)
    if output:
        write_output(output, text)
        click.echo(f"derived_from_base={str(result.derived_from_base).lower()}: written to {output}", err=True)
    else:
        click.echo(text, nl=False)
    sys.exit(EXIT_FINDINGS if any(f.severity >= threshold for f in findings) else EXIT_PASS)


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
