"""Weight diff against a claimed base: provenance, what changed, and token rows that hint at a trigger.

``diff_models(model, base)`` streams both models tensor by tensor (memory-mapped safetensors, sharded
or not; GGUF dequantized in memory) and returns a ``WeightDiffResult``; ``weight_findings`` turns it
into findings; ``modelaudit.weightdiff.stage`` is the scan's ``weights`` stage (section ``weightdiff``
of the report). ``result.token_candidates`` is what trigger search consumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelaudit.lazy import lazy_attributes

if TYPE_CHECKING:
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

# Resolved on first use: the stage registry imports ``weightdiff.rules`` on the way to every scan, static-only
# ones included, and the diff's modules are not needed there (``modelaudit.lazy`` says why).
_LAZY = {
    "diff_models": "modelaudit.weightdiff.core",
    "LayerDiff": "modelaudit.weightdiff.result",
    "Provenance": "modelaudit.weightdiff.result",
    "Spectrum": "modelaudit.weightdiff.result",
    "TensorDiff": "modelaudit.weightdiff.result",
    "TokenAnalysis": "modelaudit.weightdiff.result",
    "TokenRow": "modelaudit.weightdiff.result",
    "TokenSequence": "modelaudit.weightdiff.result",
    "WeightDiffResult": "modelaudit.weightdiff.result",
    "RULES": "modelaudit.weightdiff.rules",
    "weight_findings": "modelaudit.weightdiff.rules",
    "ArchitectureMismatchError": "modelaudit.weightdiff.sources",
}

__all__ = ["RULES", "ArchitectureMismatchError", "LayerDiff", "Provenance", "Spectrum", "TensorDiff",
           "TokenAnalysis", "TokenRow", "TokenSequence", "WeightDiffResult", "diff_models", "weight_findings"]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
