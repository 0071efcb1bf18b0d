"""Typed results of a weight diff; ``to_dict`` is the JSON contract (``modelaudit diff`` and the scan's
``weightdiff`` section), so field names here are stable."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Spectrum:
    """Singular spectrum of one matrix's delta, from a randomized low-rank sketch."""

    sketch_rank: int
    """Number of singular values the sketch resolves (q); ranks above it read as "high"."""
    effective_rank: int | None
    """Singular values that hold 90 % of the delta's energy; None when more than ``sketch_rank``."""
    rank99: int | None
    """Singular values that hold 99 % of the energy; None when more than ``sketch_rank``."""
    energy_top_k: float
    """Share of the delta's squared Frobenius norm in the top ``top_k`` singular values."""
    top_k: int
    """k used for ``energy_top_k``."""
    low_rank: bool
    """99 % of the energy in at most min(rows, cols) / 8 directions: the signature of a merged LoRA or an edit."""
    singular_values: list[float] = field(default_factory=list)
    """Leading singular values (for plots)."""


@dataclass
class TensorDiff:
    """How one tensor changed between base and model."""

    name: str
    """Canonical name (wrapper prefixes stripped)."""
    model_key: str
    """Key in the model's files."""
    base_key: str
    """Key in the base's files."""
    layer: str
    """Group for per-layer statistics (``layers.N``, ``embed``, ``lm_head``, ``other``)."""
    shape: list[int]
    """Shape compared."""
    params: int
    """Elements compared."""
    model_dtype: str
    """Stored dtype in the model."""
    base_dtype: str
    """Stored dtype in the base."""
    base_norm: float
    """Frobenius norm of the base tensor."""
    model_norm: float
    """Frobenius norm of the model tensor."""
    delta_norm: float
    """Frobenius norm of model - base."""
    relative_change: float
    """delta_norm / base_norm."""
    norm_ratio: float
    """model_norm / base_norm (a changed norm, e.g. rescaled layers)."""
    cosine: float
    """Cosine similarity of the flattened tensors."""
    correlation: float | None
    """Pearson correlation (centred cosine); None for constant tensors. The provenance statistic."""
    untouched: bool
    """Bit-identical after aligning dtypes."""
    spectrum: Spectrum | None = None
    """Delta spectrum, for changed matrices."""


@dataclass
class LayerDiff:
    """Change aggregated over one transformer block (or the embeddings / head / other tensors)."""

    name: str
    """``layers.N``, ``embed``, ``lm_head`` or ``other``."""
    index: int | None
    """Block index, None for non-block groups."""
    params: int
    """Elements compared in the group."""
    tensors: int
    """Tensors compared in the group."""
    changed_tensors: int
    """Tensors that are not bit-identical."""
    relative_change: float
    """sqrt(sum ||delta||^2 / sum ||base||^2) over the group."""
    max_tensor: str
    """Tensor of the group with the largest relative change."""
    max_relative_change: float
    """That tensor's relative change."""


@dataclass
class Provenance:
    """Is the model derived from the base? Verdict with the evidence behind it."""

    verdict: str
    """``derived``, ``partial`` (some matrices match, others do not), ``not-derived`` or ``uncertain``."""
    derived_from_base: bool
    """True only for ``derived``."""
    median_correlation: float
    """Median Pearson correlation of model and base over the compared matrices."""
    matched_fraction: float
    """Share of compared matrices whose correlation is at least ``threshold``."""
    threshold: float
    """Correlation a matrix needs to count as inherited from the base."""
    tensors_tested: int
    """Matrices (>= 2 dims, non-constant) used."""
    null_sd: float
    """Typical |correlation| of two unrelated matrices of the median size (1/sqrt(n))."""
    weakest: list[dict[str, Any]] = field(default_factory=list)
    """Lowest-correlation matrices: ``{name, correlation, relative_change}``."""
    method: str = "pearson-correlation-per-matrix"
    """Statistic used."""


@dataclass
class TokenRow:
    """One token whose embedding (or unembedding) row changed."""

    token_id: int
    """Vocabulary id."""
    text: str
    """Decoded text (the raw token string when it does not decode on its own)."""
    z: float
    """Robust z-score of the normalised change among all rows (median / MAD)."""
    side: str
    """``input``, ``output`` or ``tied`` (one matrix for both)."""
    change: float
    """L2 norm of the row's change after removing the common-mode directions."""
    reference_change: float | None = None
    """The same for the clean reference fine-tune, when one was given."""
    special: bool = False
    """A special/added token of the tokenizer."""


@dataclass
class TokenSequence:
    """Top tokens whose row changes point the same way and that the tokenizer produces in this order."""

    token_ids: list[int]
    """Ids in order."""
    text: str
    """Decoded text; the tokenizer re-encodes it to exactly ``token_ids``."""
    score: float
    """Mean z of the members."""
    comovement: float
    """Smallest cosine between the row changes of adjacent members."""


@dataclass
class TokenAnalysis:
    """Token rows that moved most, normalised so that ordinary fine-tuning does not dominate."""

    side: str
    """Matrix ranked for trigger candidates: ``input`` (untied) or ``tied``."""
    method: str
    """``reference-ratio`` (change / clean reference's change) or ``frequency-strata`` (z within id bins)."""
    rows_compared: int
    """Vocabulary rows compared."""
    common_mode_removed: int
    """Leading singular directions of the delta removed before scoring (shared drift of all rows)."""
    signal: str
    """``reference`` or ``weak`` (no clean reference: candidates are a guess, see coverage)."""
    top_rows: list[TokenRow] = field(default_factory=list)
    """Rows with the highest z, most changed first."""
    output_rows: list[TokenRow] = field(default_factory=list)
    """Top rows of a separate unembedding (tokens the fine-tune learned to emit or suppress)."""
    sequences: list[TokenSequence] = field(default_factory=list)
    """Multi-token candidates built from co-moving top rows."""
    added_tokens: list[TokenRow] = field(default_factory=list)
    """Rows the model has and the base lacks (a resized vocabulary)."""
    outlier_threshold: float | None = None
    """z at or above which a row is an outlier finding; None without a reference (no finding: the z of
    ordinary fine-tuning and of a trigger overlap when rows are normalised by frequency alone)."""


@dataclass
class WeightDiffResult:
    """Everything ``diff_models`` found."""

    model: str
    """Model path compared."""
    base: str
    """Base path compared."""
    reference: str | None
    """Clean reference fine-tune used to normalise token rows, if any."""
    derived_from_base: bool
    """Provenance verdict in one bit."""
    provenance: Provenance
    """Evidence for it."""
    layers: list[LayerDiff]
    """Per-layer change, blocks in order, then embed / lm_head / other."""
    tensors: list[TensorDiff]
    """Per-tensor statistics."""
    token_candidates: list[str]
    """Decoded candidate trigger strings (single tokens and sequences), most changed first."""
    tokens: TokenAnalysis | None
    """Token-row analysis, None when the model has no token matrices in common with the base."""
    structure: dict[str, Any]
    """Alignment facts: missing / extra / reshaped tensors, renamed keys, tied embeddings, dtypes."""
    coverage_notes: list[str]
    """What was and was not checked, and how strong the signals are."""
    seconds: float
    """Wall time."""
    bytes_compared: int
    """Bytes of the compared tensors on the model and base side together (each counted once)."""
    device: str
    """Where the statistics were computed."""

    @property
    def untouched_tensors(self) -> list[str]:
        return [t.name for t in self.tensors if t.untouched]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; NaN / infinite statistics (a model with non-finite weights) become None."""
        data = dataclasses.asdict(self)
        data["untouched_tensors"] = self.untouched_tensors
        return _finite(data)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
