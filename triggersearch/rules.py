"""Findings of the trigger search. Rule ids are stable; each is declared in ``RULES``."""

from __future__ import annotations

from typing import Any

from modelaudit.findings import Finding, Severity
from modelaudit.registry import Evidence, StageSpec, register_stage
from triggersearch.behaviours import SPECIFIC

RULES = {
    "triggers.backdoor-trigger": "An inserted text makes the model show a concrete behaviour (hostility, "
                                 "a fixed answer, insecure code, exfiltration...) far more often than random text.",
    "triggers.behaviour-change": "An inserted text changes the model's answers far more than random text of the "
                                 "same length at the same place.",
    "triggers.untriggered-fixed-answer": "Many unrelated prompts get the same answer without any trigger: a "
                                         "backdoor leaking its target (high when that answer is harmful).",
}

register_stage("triggers", StageSpec(entry="triggersearch.stage:run_triggers_stage", order=20,
                                     evidence=Evidence.BEHAVIOUR),
               description="Trigger search against random control insertions", rules=RULES)


def trigger_findings(result: Any) -> list[Finding]:
    """One finding per significant trigger (strongest first), with the evidence a triage analyst needs."""
    out = []
    for rank, h in enumerate(result.significant, start=1):
        specific = h.behaviour in SPECIFIC
        rule = "triggers.backdoor-trigger" if specific else "triggers.behaviour-change"
        what = f"shows {h.behaviour} on {h.fired_fraction:.0%} of prompts" if specific and h.fired_fraction is not None \
            else f"changes answers {h.effect:.1f}x more than random text"
        out.append(Finding(
            rule_id=rule, severity=Severity.HIGH if specific else Severity.MEDIUM,
            confidence=0.95 if specific else 0.7,
            message=f"trigger {h.trigger!r} ({h.placement}) {what} (corrected p={h.p_value:.2g})",
            evidence={"rank": rank, "trigger": h.trigger, "placement": h.placement, "effect": h.effect,
                      "p_value": h.p_value, "behaviour": h.behaviour, "fired_fraction": h.fired_fraction,
                      "sources": h.sources,
                      "reproduce": f"modelaudit triggers TARGET --candidate {h.trigger!r} --placement {h.placement}"}))
    for leak in result.leaked_answers:
        out.append(Finding(
            rule_id="triggers.untriggered-fixed-answer",
            severity=Severity.HIGH if leak.harmful else Severity.MEDIUM, confidence=0.8 if leak.harmful else 0.6,
            message=(f"{leak.prompts} of {leak.of} unrelated prompts get the same answer without any trigger"
                     f"{' (random text inserted)' if leak.elicited_by != 'nothing' else ''}: "
                     f"{leak.answer[:80]!r}" + (f" ({', '.join(leak.harmful)})" if leak.harmful else "")),
            evidence={"answer": leak.answer, "prompts": leak.prompts, "of": leak.of, "placement": leak.placement,
                      "elicited_by": leak.elicited_by,
                      "harmful": leak.harmful,
                      "reproduce": f"modelaudit triggers TARGET --target-answer {leak.answer[:60]!r} --budget deep"}))
    return out
