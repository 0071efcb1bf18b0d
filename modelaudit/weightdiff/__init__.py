"""Weight diff against a claimed base: provenance, what changed, and token rows that hint at a trigger.

``diff_models(model, base)`` streams both models tensor by tensor (memory-mapped safetensors, sharded
or not; GGUF dequantized in memory) and returns a ``WeightDiffResult``; ``weight_findings`` turns it
into findings; ``modelaudit.weightdiff.stage`` is the scan's ``weights`` stage (section ``weightdiff``
of the report). ``result.token_candidates`` is what trigger search consumes.
"""

from __future__ import annotations

from modelaudit.weightdiff.core import diff_models
from modelaudit.weightdiff.result import (
    LayerDiff,
    Provenance,
    Spectrum,
    TensorDiff,
    TokenAnalysis,
    TokenRow,
    TokenSequence,
    WeightDiffResult,
)
from modelaudit.weightdiff.rules import RULES, weight_findings
from modelaudit.weightdiff.sources import ArchitectureMismatchError

__all__ = ["RULES", "ArchitectureMismatchError", "LayerDiff", "Provenance", "Spectrum", "TensorDiff",
           "TokenAnalysis", "TokenRow", "TokenSequence", "WeightDiffResult", "diff_models", "weight_findings"]
