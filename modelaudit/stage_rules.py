"""Rule ids of the model stages, registered so that SARIF and the docs describe every rule.

Imported by ``load_plugins`` for every scan, so it names each stage's function by dotted path
instead of importing the stage (which would import torch into static-only scans).
"""

from __future__ import annotations

from modelaudit.registry import stages
from modelaudit.weightdiff.rules import RULES as WEIGHT_RULES
from triggersearch import RULES as TRIGGER_RULES

PROBE_RULES = {
    "probes.defection-direction": "Inserting a candidate trigger moves activations along a defection direction.",
}

stages.register("weights", description="Weight diff against the claimed base", rules=WEIGHT_RULES)(
    "modelaudit.weightdiff:run_weights_stage")
stages.register("triggers", description="Trigger search against random control insertions", rules=TRIGGER_RULES)(
    "triggersearch.stage:run_triggers_stage")
stages.register("probes", description="Activation probes for defection", rules=PROBE_RULES)(
    "probes.stage:run_probes_stage")
