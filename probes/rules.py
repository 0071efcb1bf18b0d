"""Rule ids of the activation probes, and the ``probes`` stage's registration (light: no torch)."""

from __future__ import annotations

from modelaudit.registry import Evidence, StageSpec, register_stage

RULES = {
    "probes.defection-direction": "Inserting a candidate trigger moves activations along a defection direction.",
}

register_stage("probes", StageSpec(entry="probes.stage:run_probes_stage", order=30, evidence=Evidence.BEHAVIOUR,
                                   cost="probes.stage:probes_work"),
               description="Activation probes for defection", rules=RULES)
