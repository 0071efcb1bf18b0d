"""``diff_models``: stream model and base tensor by tensor and assemble the result."""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from modelaudit.errors import InvalidModelFileError
from modelaudit.loading import pick_device
from modelaudit.weightdiff.compute import (
    MATCH_CORRELATION,
    PendingSpectrum,
    StreamConfig,
    aggregate_layers,
    common_mode,
    diff_tensor,
    finish_spectra,
    first_pass,
    make_op,
    provenance_test,
)
from modelaudit.weightdiff.result import TensorDiff, WeightDiffResult
from modelaudit.weightdiff.sources import (
    ArchitectureMismatchError,
    Pairing,
    TensorPair,
    WeightSource,
    itemsize,
    open_weights,
    pair_tensors,
)
from modelaudit.weightdiff.tokens import (
    SideRows,
    TokenText,
    analyse_tokens,
    candidates,
    common_mode_k,
    row_changes,
)


def diff_models(model_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str], *,
                reference_dir: str | os.PathLike[str] | None = None, device: str = "auto",
                block_mb: float = 16.0, cache_mb: float = 256.0, sketch_rank: int = 16,
                cache_dir: str | None = None) -> WeightDiffResult:
    """Compare a model with the base it claims, tensor by tensor, without loading either whole.

    ``reference_dir`` is an optional clean fine-tune of the same base; token-row changes are then
    measured relative to it, which is what makes planted triggers stand out (see ``tokens``).
    Tensors are read in row blocks of ``block_mb``; deltas up to ``cache_mb`` are kept for the later
    passes, larger ones are recomputed from the files (slower, bounded memory).

    Raises:
        TargetNotFoundError: a path does not exist locally (hub ids are looked up in the cache only).
        ArchitectureMismatchError: model and base do not share an architecture.
        InvalidModelFileError: unreadable or unsupported weights (only pickles, an adapter, corrupt files).
    """
    start = time.perf_counter()
    dev = pick_device(device)
    with ExitStack() as stack:
        model = stack.enter_context(open_weights(model_dir, what="model", cache_dir=cache_dir))
        base = stack.enter_context(open_weights(base_dir, what="base model", cache_dir=cache_dir))
        ref = (stack.enter_context(open_weights(reference_dir, what="reference model", cache_dir=cache_dir))
               if reference_dir is not None else None)
        pairing = pair_tensors(model, base)
        # Parsing tokenizer.json costs about as much as streaming the tensors of a 135M model from the page
        # cache (0.14 s for SmolLM2); it runs beside the tensor loop, whose torch kernels release the GIL.
        loader = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        text_future = loader.submit(TokenText.load, model.root, base.root,
                                    fallback=model.tokenizer or base.tokenizer)
        notes = _source_notes(model, base, ref, pairing)
        ref_pairs = _reference_pairs(ref, base, notes)
        cfg = StreamConfig(device=dev, block_mb=block_mb, cache_mb=cache_mb, sketch_rank=sketch_rank)
        ref_cfg = StreamConfig(device=dev, block_mb=block_mb, cache_mb=cache_mb, sketch_rank=sketch_rank)
        tensors: list[TensorDiff] = []
        pending: list[PendingSpectrum] = []
        sides: dict[str, SideRows] = {}
        bytes_read = 0
        for pair in pairing.pairs:
            td, op, spectrum = diff_tensor(pair, model, base, cfg)
            tensors.append(td)
            if spectrum is not None:
                pending.append(spectrum)
            if pair.role is not None and len(pair.shape) == 2:
                if not td.untouched:
                    op.vh = common_mode(op, common_mode_k(op.cols), seed=cfg.seed)
                change = row_changes(op, op.vh)
                ref_change = _reference_rows(ref_pairs.get(pair.name), pair, ref, base, ref_cfg, notes)
                if ref_change is not None and ref_change.numel() != change.numel():
                    n = min(ref_change.numel(), change.numel())
                    change, ref_change = change[:n], ref_change[:n]
                sides[pair.role or "input"] = SideRows(pair.role or "input", op, change, ref_change)
            op.cached = None  # the scratch buffer is reused by the next tensor
            bytes_read += td.params * (itemsize(pair.model_dtype) + itemsize(pair.base_dtype))
        finish_spectra(pending)
        provenance = provenance_test(tensors)
        text = text_future.result()
        analysis = None
        if provenance.verdict in ("derived", "partial"):  # token rows of an unrelated model mean nothing
            analysis = analyse_tokens(sides.get("input") or sides.get("tied"), sides.get("output"), text,
                                      added=_added_rows(pairing))
    notes += _analysis_notes(analysis, text, cfg)
    bad = [t.name for t in tensors if not (math.isfinite(t.delta_norm) and math.isfinite(t.model_norm))]
    if bad:
        notes.append(f"{len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]}), so their change could not be "
                     "measured")
    dtypes = {(t.model_dtype, t.base_dtype) for t in tensors if t.model_dtype != t.base_dtype}
    if dtypes:
        pairs = ", ".join(f"model {m} vs base {b}" for m, b in sorted(dtypes))
        notes.append(f"dtypes differ ({pairs}): tensors were compared after rounding to the coarser dtype")
    return WeightDiffResult(
        model=str(model_dir), base=str(base_dir), reference=None if reference_dir is None else str(reference_dir),
        derived_from_base=provenance.derived_from_base, provenance=provenance, layers=aggregate_layers(tensors),
        tensors=tensors, token_candidates=candidates(analysis), tokens=analysis,
        structure=_structure(pairing, model, base, tensors), coverage_notes=notes,
        seconds=round(time.perf_counter() - start, 4), bytes_compared=bytes_read, device=str(dev))


def _reference_pairs(ref: WeightSource | None, base: WeightSource, notes: list[str]) -> dict[str, TensorPair]:
    if ref is None:
        return {}
    try:
        rp = pair_tensors(ref, base)
    except ArchitectureMismatchError as exc:
        raise InvalidModelFileError(f"reference model: {exc}") from None
    pairs = {p.name: p for p in rp.pairs if p.role is not None}
    if not pairs:
        notes.append("the reference model (--reference) shares no token matrix with the base, so token rows were "
                     "checked without it")
    return pairs


def _reference_rows(rp: TensorPair | None, pair: TensorPair, ref: WeightSource | None, base: WeightSource,
                    cfg: StreamConfig, notes: list[str]) -> Any:
    """Row changes of the clean reference (same common-mode removal), or None when unusable."""
    if rp is None or ref is None:
        return None
    rows = min(rp.shape[0], pair.shape[0])
    sub = TensorPair(rp.name, rp.model_key, rp.base_key, (rows, *rp.shape[1:]), rp.model_dtype, rp.base_dtype, rp.role)
    op = make_op(sub, ref, base, cfg)
    sums, _ = first_pass(op)
    n = op.rows * op.cols
    var_a, var_b = sums.ss_a - sums.sum_a**2 / n, sums.ss_b - sums.sum_b**2 / n
    dot = (sums.ss_a + sums.ss_b - sums.ss_d) / 2
    corr = (dot - sums.sum_a * sums.sum_b / n) / (var_a * var_b) ** 0.5 if var_a > 0 and var_b > 0 else 0.0
    if corr < MATCH_CORRELATION:
        notes.append(f"the reference model (--reference) was ignored: its {rp.name} shows it is not a fine-tune "
                     "of this base")
        op.cached = None
        return None
    if not sums.changed:
        notes.append(f"the reference model (--reference) was ignored: its {rp.name} is identical to the base")
        op.cached = None
        return None
    op.vh = common_mode(op, common_mode_k(op.cols), seed=cfg.seed)
    change = row_changes(op, op.vh)
    op.cached = None
    return change


def _added_rows(pairing: Pairing) -> list[int]:
    vr = pairing.vocab_resized
    if not vr or vr["model_rows"] <= vr["base_rows"]:
        return []
    return list(range(vr["base_rows"], vr["model_rows"]))


def _source_notes(model: WeightSource, base: WeightSource, ref: WeightSource | None, pairing: Pairing) -> list[str]:
    notes = list(model.notes) + [f"base: {n}" for n in base.notes]
    if ref is not None:
        notes += [f"reference: {n}" for n in ref.notes]
    if model.fmt == "gguf" or base.fmt == "gguf":
        notes.append("GGUF weights were compared after dequantization, so quantization error shows as a small "
                     "change in every tensor")
    notes += pairing.notes
    if pairing.renamed:
        notes.append("tensor names differ by a wrapper prefix (e.g. 'model.'); they were paired without it")
    if pairing.missing_in_model or pairing.extra_in_model or pairing.shape_mismatch:
        notes.append(f"{len(pairing.missing_in_model)} base tensors missing in the model, "
                     f"{len(pairing.extra_in_model)} extra, {len(pairing.shape_mismatch)} with other shapes: "
                     "those were not compared")
    return notes


def _analysis_notes(analysis: Any, text: TokenText | None, cfg: StreamConfig) -> list[str]:
    notes = [f"low-rank edits (such as a merged LoRA) are recognised up to rank {cfg.sketch_rank}; a change of "
             "higher rank is reported as high rank"]
    if analysis is None:
        notes.append("token rows were not checked: the model shares no changed embedding or output matrix with a "
                     "base it derives from")
        return notes
    if text is None:
        notes.append("no tokenizer.json, so token candidates are shown as ids and multi-token triggers were not "
                     "assembled")
    if analysis.side == "tied":
        notes.append("tied embeddings: input and output token rows are one matrix and were checked together")
    if analysis.signal == "weak":
        notes.append("token rows: signal weak without a clean fine-tune of the same base (--reference), so the "
                     "weight-diff token candidates are only a guess and raise no finding")
    elif analysis.signal == "reference":
        notes.append("token rows were compared with the clean reference (--reference), which works only if it was "
                     "fine-tuned on data like the model's")
    return notes


def _structure(pairing: Pairing, model: WeightSource, base: WeightSource, tensors: list[TensorDiff]) -> dict[str, Any]:
    dtype_diff = [{"name": t.name, "model": t.model_dtype, "base": t.base_dtype}
                  for t in tensors if t.model_dtype != t.base_dtype]
    return {
        "model_format": model.fmt, "base_format": base.fmt,
        "tensors_compared": len(pairing.pairs),
        "missing_in_model": pairing.missing_in_model, "extra_in_model": pairing.extra_in_model,
        "shape_mismatch": pairing.shape_mismatch, "vocab_resized": pairing.vocab_resized,
        "renamed_keys": pairing.renamed, "model_tied_embeddings": pairing.model_tied,
        "base_tied_embeddings": pairing.base_tied,
        "dtype_differences": dtype_diff[:20], "dtype_difference_count": len(dtype_diff),
    }
