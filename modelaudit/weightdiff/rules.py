"""Findings from a weight diff. Rule ids are stable; each is declared in ``RULES``."""

from __future__ import annotations

import statistics
from typing import Any

from modelaudit.findings import Finding, Location, Severity
from modelaudit.registry import Evidence, StageSpec, register_stage
from modelaudit.weightdiff.result import WeightDiffResult

RULES = {
    "weights.provenance-mismatch": "The model is not (or only partly) derived from the base it claims.",
    "weights.structure-mismatch": "Tensors missing, added or reshaped relative to the base.",
    "weights.low-rank-delta": "Changed matrices whose delta is very low rank (a merged LoRA or a rank-one edit).",
    "weights.concentrated-change": "One block changed far more than the rest (the shape of a model-editing implant).",
    "weights.token-row-outlier": "Embedding rows that moved far more than fine-tuning explains (trigger candidates).",
}
register_stage("weights", StageSpec(entry="modelaudit.weightdiff.stage:run_weights_stage", order=10,
                                    evidence=Evidence.BEHAVIOUR, needs_base=True),
               description="Weight diff against the claimed base", rules=RULES)
CONCENTRATION_RATIO = 5.0
"""A block whose relative change is this many times the median of the other blocks is concentrated."""
MIN_VISIBLE_CHANGE = 1e-5
"""Relative change below this is rounding noise, not a change."""


def weight_findings(result: WeightDiffResult) -> list[Finding]:
    """All findings for one diff, in rule order."""
    out: list[Finding] = []
    for fn in (_provenance, _structure, _low_rank, _concentrated, _token_rows):
        out.extend(fn(result))
    return out


def _provenance(result: WeightDiffResult) -> list[Finding]:
    p = result.provenance
    if p.verdict == "derived":
        return []
    evidence = {"verdict": p.verdict, "median_correlation": p.median_correlation,
                "matched_fraction": p.matched_fraction, "threshold": p.threshold,
                "tensors_tested": p.tensors_tested, "null_sd": p.null_sd, "weakest": p.weakest,
                "base": result.base}
    if p.verdict == "not-derived":
        return [Finding(
            rule_id="weights.provenance-mismatch", severity=Severity.HIGH,
            confidence=0.95 if p.tensors_tested >= 4 else 0.7, location=Location(),
            message=(f"not derived from the claimed base {result.base}: median weight correlation "
                     f"{p.median_correlation:.3f} over {p.tensors_tested} matrices (fine-tunes keep >= "
                     f"{p.threshold}); the base claim is false"),
            evidence=evidence)]
    if p.verdict == "partial":
        return [Finding(
            rule_id="weights.provenance-mismatch", severity=Severity.MEDIUM, confidence=0.8,
            message=(f"only {p.matched_fraction:.0%} of matrices are inherited from {result.base}; the rest were "
                     "replaced or re-initialised"),
            evidence=evidence)]
    return [Finding(rule_id="weights.provenance-mismatch", severity=Severity.LOW, confidence=0.4,
                    message=f"provenance against {result.base} is uncertain ({p.tensors_tested} matrices tested)",
                    evidence=evidence)]


def _structure(result: WeightDiffResult) -> list[Finding]:
    s = result.structure
    out: list[Finding] = []
    if s["missing_in_model"] or s["extra_in_model"] or s["shape_mismatch"]:
        out.append(Finding(
            rule_id="weights.structure-mismatch", severity=Severity.MEDIUM, confidence=0.9,
            message=(f"tensors differ from the base: {len(s['missing_in_model'])} missing, "
                     f"{len(s['extra_in_model'])} extra, {len(s['shape_mismatch'])} reshaped (not compared)"),
            location=Location(member=(s["extra_in_model"] or s["missing_in_model"] or
                                      [m["name"] for m in s["shape_mismatch"]])[0]),
            evidence={"missing_in_model": s["missing_in_model"][:50], "extra_in_model": s["extra_in_model"][:50],
                      "shape_mismatch": s["shape_mismatch"][:50]}))
    vr = s.get("vocab_resized")
    if vr:
        added = result.tokens.added_tokens if result.tokens else []
        out.append(Finding(
            rule_id="weights.structure-mismatch", severity=Severity.LOW, confidence=0.9,
            message=f"vocabulary resized from {vr['base_rows']} to {vr['model_rows']} rows",
            evidence={**vr, "added_tokens": [r.text for r in added[:50]]}))
    return out


def _low_rank(result: WeightDiffResult) -> list[Finding]:
    changed = [t for t in result.tensors if t.spectrum is not None]
    low = [t for t in changed if t.spectrum and t.spectrum.low_rank]
    if not low:
        return []
    modules = sorted({t.name.rsplit(".", 2)[-2] if t.name.count(".") >= 1 else t.name for t in low})
    ranks = [t.spectrum.rank99 for t in low if t.spectrum and t.spectrum.rank99 is not None]
    all_low = len(low) == len(changed)
    what = "every changed matrix" if all_low else f"{len(low)} of {len(changed)} changed matrices"
    return [Finding(
        rule_id="weights.low-rank-delta", severity=Severity.INFO, confidence=0.9,
        message=(f"{what} changed by a delta of rank <= {max(ranks) if ranks else '?'} ({', '.join(modules[:8])}): "
                 f"{'a merged LoRA' if all_low else 'low-rank updates'}"),
        location=Location(member=low[0].name),
        evidence={"tensors": [{"name": t.name, "rank99": t.spectrum.rank99 if t.spectrum else None,
                               "relative_change": t.relative_change} for t in low[:50]],
                  "modules": modules, "all_changed_low_rank": all_low, "max_rank": max(ranks) if ranks else None})]


def _concentrated(result: WeightDiffResult) -> list[Finding]:
    blocks = [g for g in result.layers if g.index is not None]
    if len(blocks) < 2:
        return []
    top = max(blocks, key=lambda g: g.relative_change)
    if top.relative_change < MIN_VISIBLE_CHANGE:
        return []
    others = [g.relative_change for g in blocks if g is not top]
    med = statistics.median(others)
    ratio = top.relative_change / med if med > 0 else float("inf")
    if ratio < CONCENTRATION_RATIO:
        return []
    tensors = sorted((t for t in result.tensors if t.layer == top.name and not t.untouched),
                     key=lambda t: -t.relative_change)
    return [Finding(
        rule_id="weights.concentrated-change", severity=Severity.MEDIUM, confidence=0.5,
        message=(f"{_concentration_text(top.name, ratio, top.relative_change, med)}: targeted model editing "
                 "implants backdoors this way (a partial fine-tune can look the same)"),
        location=Location(member=top.name),
        evidence={"layer": top.name, "relative_change": top.relative_change, "median_other_blocks": med,
                  "ratio": None if ratio == float("inf") else round(ratio, 3),
                  "tensors": [{"name": t.name, "relative_change": t.relative_change,
                               "rank99": t.spectrum.rank99 if t.spectrum else None} for t in tensors[:10]]})]


def _token_rows(result: WeightDiffResult) -> list[Finding]:
    a = result.tokens
    if a is None or a.outlier_threshold is None:
        return []  # without a clean reference the ranking is only a list of candidates (coverage says so)
    hits = [r for r in a.top_rows if r.z >= a.outlier_threshold]
    if not hits:
        return []
    return [Finding(
        rule_id="weights.token-row-outlier", severity=Severity.LOW, confidence=0.5,
        message=(f"{len(hits)} token rows moved far more than a clean fine-tune of the base moved them"
                 f" (z >= {a.outlier_threshold:g}): {', '.join(repr(r.text) for r in hits[:5])}; candidate triggers"),
        location=Location(member=_token_tensor(result)),
        evidence={"method": a.method, "side": a.side, "threshold": a.outlier_threshold,
                  "rows": [_row(r) for r in hits[:20]],
                  "sequences": [{"text": s.text, "token_ids": s.token_ids, "score": s.score} for s in a.sequences[:5]]})]


def _token_tensor(result: WeightDiffResult) -> str | None:
    for t in result.tensors:
        if t.layer == "embed":
            return t.model_key
    return None


def _row(r: Any) -> dict[str, Any]:
    return {"token_id": r.token_id, "text": r.text, "z": r.z, "change": r.change,
            "reference_change": r.reference_change}


def _concentration_text(name: str, ratio: float, change: float, med: float) -> str:
    if ratio == float("inf"):
        return f"{name} is the only block that changed (relative change {change:.3g})"
    return f"{name} changed {ratio:.1f}x as much as the median other block ({change:.3g} vs {med:.3g})"
