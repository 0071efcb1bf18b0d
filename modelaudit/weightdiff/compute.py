"""The streaming diff: per-tensor statistics, delta spectra, provenance and per-layer aggregates.

Memory: a tensor is read in row blocks of at most ``block_mb`` (fp32) through memory maps that are
dropped every ~32 MiB read (``sources.RELEASE_BYTES``), and its delta is written into one reused buffer
when it is at most ``cache_mb``; so peak memory is the largest delta plus a few blocks, not two models
(SmolLM2: 448 MiB peak RSS, 221 of them Python + torch, vs 513 MiB for one model). A bigger delta is
recomputed from the files for each later pass instead.

The spectrum is the randomized range finder of Halko, Martinsson & Tropp (what ``torch.svd_lowrank``
does, without power iterations), its sketch taken block by block during the first read with a seeded
test matrix, so reports are reproducible and a cached delta is never re-read for it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from modelaudit.weightdiff.result import LayerDiff, Provenance, Spectrum, TensorDiff
from modelaudit.weightdiff.sources import FLOAT_DTYPES, TensorPair, WeightSource, layer_of

SKETCH_RANK = 16
"""Sketch columns per delta; a merged LoRA of rank <= SKETCH_RANK reads as low rank."""
OVERSAMPLE = 4
"""Extra sketch columns beyond the directions wanted (common-mode estimate of wide matrices)."""
TOP_K = 4
"""k for the ``energy_top_k`` statistic."""
MIN_SPECTRUM_DIM = 8
"""Matrices with a smaller side get no spectrum (their rank says nothing)."""
MATCH_CORRELATION = 0.5
"""Per-matrix correlation that counts as inherited: fine-tunes measure >= 0.9, unrelated inits ~0 +- 1/sqrt(n)."""
PROVENANCE_MIN_ELEMENTS = 256
"""Matrices smaller than this are too noisy to vote on provenance."""


@dataclass
class _Sums:
    """Running sums over row blocks, in float64."""

    ss_a: float = 0.0
    ss_b: float = 0.0
    ss_d: float = 0.0
    sum_a: float = 0.0
    sum_b: float = 0.0
    changed: bool = False


@dataclass
class DeltaOp:
    """model[key] - base[key] for one tensor pair, as a rows x cols float32 matrix read in row blocks.

    The first pass writes the delta into a cache buffer when it is at most ``cache_mb`` (so the SVD and
    row passes of a token matrix do not re-read both files); a larger delta is recomputed per pass.
    """

    a_src: WeightSource
    a_key: str
    b_src: WeightSource
    b_key: str
    rows: int
    cols: int
    device: Any
    block_rows: int
    buffers: _Scratch
    cacheable: bool
    """The whole delta fits in the cache buffer."""
    whole_a: bool = True
    """The model-side tensor has exactly ``rows`` rows (False: a resized vocabulary, read a row range)."""
    whole_b: bool = True
    cached: Any = None
    """The full delta after the first pass, when cacheable (a view of the shared buffer: valid until the
    next tensor is processed)."""
    vh: Any = None
    """Leading right singular vectors of the delta, once computed.  # [q, cols]"""
    bytes_read: int = 0
    """Bytes actually read from the sources, all passes together (for profiling)."""

    def spans(self) -> Iterator[tuple[int, int]]:
        for r0 in range(0, self.rows, self.block_rows):
            yield r0, min(r0 + self.block_rows, self.rows)

    def read_pair(self, r0: int, r1: int) -> tuple[Any, Any]:
        """Both sides' rows [r0, r1) as float32 on the device, rounded to the coarser dtype first."""
        import torch

        whole = r0 == 0 and r1 == self.rows
        a = self.a_src.read(self.a_key, None if whole and self.whole_a else (r0, r1))
        b = self.b_src.read(self.b_key, None if whole and self.whole_b else (r0, r1))
        self.bytes_read += a.numel() * a.element_size() + b.numel() * b.element_size()
        if a.dtype != b.dtype and a.is_floating_point() and b.is_floating_point():
            if a.element_size() < b.element_size():
                b = b.to(a.dtype)
            elif b.element_size() < a.element_size():
                a = a.to(b.dtype)
        a = a.reshape(r1 - r0, self.cols).to(device=self.device, dtype=torch.float32)
        b = b.reshape(r1 - r0, self.cols).to(device=self.device, dtype=torch.float32)
        return a, b

    def delta(self, r0: int, r1: int) -> Any:
        """model - base for rows [r0, r1) (from the cache, else recomputed into the block buffer)."""
        import torch

        if self.cached is not None:
            return self.cached[r0:r1]
        a, b = self.read_pair(r0, r1)
        out = self.buffers.block((r1 - r0) * self.cols, self.device).view(r1 - r0, self.cols)
        torch.sub(a, b, out=out)
        del a, b
        self.release()
        return out

    def left_project(self, basis: Any) -> Any:
        """basis.T @ delta, from the cache or block by block.  # [q, cols]"""
        import torch

        if self.cached is not None:
            return basis.T @ self.cached
        out = torch.zeros(basis.shape[1], self.cols, device=self.device)
        for r0, r1 in self.spans():
            out += basis[r0:r1].T @ self.delta(r0, r1)
        return out

    def row(self, i: int) -> Any:
        """One row of the delta (for the few top token rows).  # [cols]"""
        if self.cached is not None:
            return self.cached[i].clone()
        a, b = self.read_pair(i, i + 1)
        d = (a - b)[0]
        self.release()
        return d

    def release(self, *, force: bool = False) -> None:
        """Let the sources drop their mappings once enough has been read (every block would cost
        a header parse and an munmap per tensor; never would keep both files resident)."""
        self.a_src.maybe_release(force=force)
        self.b_src.maybe_release(force=force)


class _Scratch:
    """Growing float32 buffers reused for every tensor (fresh allocations cost page faults)."""

    def __init__(self) -> None:
        self.bufs: dict[str, Any] = {}

    def _get(self, name: str, numel: int, device: Any) -> Any:
        import torch

        buf = self.bufs.get(name)
        if buf is None or buf.numel() < numel or buf.device != device:
            self.bufs.pop(name, None)
            buf = torch.empty(numel, dtype=torch.float32, device=device)
            self.bufs[name] = buf
        return buf[:numel]

    def block(self, numel: int, device: Any) -> Any:
        return self._get("block", numel, device)

    def cache(self, numel: int, device: Any) -> Any:
        return self._get("cache", numel, device)


@dataclass
class StreamConfig:
    """Knobs of the streaming pass."""

    device: Any
    block_mb: float = 16.0
    """Rows are read in blocks of about this many MiB (fp32)."""
    cache_mb: float = 256.0
    """Deltas up to this size are kept whole for the passes after the first."""
    sketch_rank: int = SKETCH_RANK
    seed: int = 0
    scratch: _Scratch = field(default_factory=_Scratch)


def make_op(pair: TensorPair, a_src: WeightSource, b_src: WeightSource, cfg: StreamConfig, *,
            a_key: str | None = None) -> DeltaOp:
    """A block reader for one pair (``a_key`` overrides the model side, e.g. with a reference model)."""
    if len(pair.shape) <= 1:
        rows, cols = 1, max(1, math.prod(pair.shape))
    else:
        rows, cols = pair.shape[0], max(1, math.prod(pair.shape[1:]))
    block_rows = max(1, int(cfg.block_mb * 2**20) // (cols * 4))
    akey = a_key or pair.model_key
    a_rows = tuple(a_src.tensors[akey].shape[:1])
    b_rows = tuple(b_src.tensors[pair.base_key].shape[:1])
    return DeltaOp(a_src, akey, b_src, pair.base_key, rows, cols, cfg.device, block_rows, cfg.scratch,
                   cacheable=rows * cols * 4 <= cfg.cache_mb * 2**20,
                   whole_a=len(pair.shape) <= 1 or a_rows == tuple(pair.shape[:1]),
                   whole_b=len(pair.shape) <= 1 or b_rows == tuple(pair.shape[:1]))


def first_pass(op: DeltaOp, omega: Any = None) -> tuple[_Sums, Any]:
    """Norms, sums, the untouched test and (given ``omega``) the sketch delta @ omega, in one read.

    Per block: one subtraction into the cache (or block buffer), three dot products and two sums, and
    the sketch product; the five statistics stay on the device and are read back once per tensor.
    Why so few calls: a SmolLM2 diff is ~270 tensors of a few MB, where per-call and per-sync overhead
    (a float() per statistic, chunked dots, a separate equality test) had cost more than the arithmetic.
    ``||delta||^2`` comes from the delta itself, never from ``||a||^2 + ||b||^2 - 2 a.b`` (which would
    cancel catastrophically for a short fine-tune); float32 dots over one block (<= 4M elements) are
    within ~1e-5 relative, summed across blocks in float64.

    Returns the sums and the sketch (None when no omega or nothing changed).  # sketch [rows, q]
    """
    import torch

    acc = torch.zeros(5, dtype=torch.float64, device=op.device)
    sketch = None
    cache = op.buffers.cache(op.rows * op.cols, op.device).view(op.rows, op.cols) if op.cacheable else None
    for r0, r1 in op.spans():
        a, b = op.read_pair(r0, r1)
        out = cache[r0:r1] if cache is not None else \
            op.buffers.block((r1 - r0) * op.cols, op.device).view(r1 - r0, op.cols)
        torch.sub(a, b, out=out)
        fa, fb, fd = a.reshape(-1), b.reshape(-1), out.view(-1)
        acc += torch.stack([torch.dot(fa, fa), torch.dot(fb, fb), torch.dot(fd, fd), fa.sum(), fb.sum()]).double()
        if omega is not None:
            if sketch is None:
                sketch = torch.empty(op.rows, omega.shape[1], device=op.device)
            torch.mm(out, omega, out=sketch[r0:r1])
        del a, b, fa, fb
        op.release()
    ss_a, ss_b, ss_d, sum_a, sum_b = acc.tolist()
    changed = ss_d != 0.0  # NaN counts as changed
    if not changed:  # all squares were zero: untouched, unless every change underflowed in float32
        changed = _any_change(op, cache)
    s = _Sums(ss_a=ss_a, ss_b=ss_b, ss_d=ss_d, sum_a=sum_a, sum_b=sum_b, changed=changed)
    if s.changed and cache is not None:
        op.cached = cache
    return s, sketch if s.changed else None


def _any_change(op: DeltaOp, cache: Any) -> bool:
    """Exact check for a delta whose squares summed to 0 (re-reads only such tensors, when not cached)."""
    import torch

    if cache is not None:
        return bool(cache.any())
    for r0, r1 in op.spans():
        a, b = op.read_pair(r0, r1)
        equal = torch.equal(a, b)
        del a, b
        op.release()
        if not equal:
            return True
    return False


@functools.lru_cache(maxsize=16)
def gaussian(cols: int, q: int, seed: int, device: Any) -> Any:
    """Seeded test matrix for the sketches (reports are reproducible); cached because every layer's
    matrices share a few shapes and drawing them was 2 % of a SmolLM2 diff.  # [cols, q] (read-only)"""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(cols, q, generator=gen).to(device)


def common_mode(op: DeltaOp, k: int, *, seed: int = 0, sample_rows: int = 8192) -> Any:
    """The k leading right singular directions of the delta, from an evenly spaced sample of its rows.

    Why a sample: these directions are the drift shared by most rows (that is what makes them
    leading), so a few thousand rows estimate them as well as all of them, at a fraction of the cost;
    a trigger's few rows cannot dominate them.  # [k, cols]
    """
    import torch

    k = max(0, min(k, op.cols - 1, op.rows - 1))
    if k == 0:
        return None
    step = max(1, op.rows // max(sample_rows, 4 * op.cols))
    if op.cached is not None:
        sample = op.cached[::step]
    else:
        parts = []
        for r0, r1 in op.spans():
            first = (-r0) % step
            parts.append(op.delta(r0, r1)[first::step].clone())
        sample = torch.cat(parts)
    if op.cols <= 2048:  # exact: eigenvectors of the small Gram matrix
        _, vecs = torch.linalg.eigh(sample.T @ sample)  # ascending eigenvalues
        return vecs[:, -k:].flip(1).T.contiguous()
    q = min(op.cols, k + 2 * OVERSAMPLE)
    y = sample @ gaussian(op.cols, q, seed, op.device)
    for _ in range(2):  # power iterations: the spectrum of a fine-tune delta decays slowly
        y = sample @ torch.linalg.qr(sample.T @ torch.linalg.qr(y).Q).Q
    basis = torch.linalg.qr(y).Q
    _, _, vh = torch.linalg.svd(basis.T @ sample, full_matrices=False)
    return vh[:k].contiguous()


def spectrum_of(s: Any, total_energy: float, rows: int, cols: int, q: int) -> Spectrum:
    """Effective rank and energy shares from the sketch's singular values and the exact ||delta||_F^2.

    The sketch captures at most the true top-q energy, so the shares are lower bounds: a delta reads as
    low rank only when q directions really hold 99 % of it (a certificate, never an artefact).
    """
    energy = [float(v) ** 2 / total_energy for v in s.tolist()] if total_energy > 0 else []
    cum, r90, r99 = 0.0, None, None
    for i, e in enumerate(energy, 1):
        cum += e
        if r90 is None and cum >= 0.90:
            r90 = i
        if r99 is None and cum >= 0.99:
            r99 = i
    if min(rows, cols) <= q:  # the sketch saw every direction
        r90 = r90 or len(energy)
        r99 = r99 or len(energy)
    k = min(TOP_K, len(energy))
    low = r99 is not None and min(rows, cols) >= MIN_SPECTRUM_DIM and r99 <= max(1, min(rows, cols) // 8)
    return Spectrum(sketch_rank=q, effective_rank=r90, rank99=r99, energy_top_k=round(sum(energy[:k]), 6),
                    top_k=k, low_rank=bool(low), singular_values=[round(float(v), 6) for v in s[:8].tolist()])


@dataclass
class PendingSpectrum:
    """A matrix whose spectrum waits for ``finish_spectra``: the Gram matrix B @ B.T of its projected delta."""

    tensor: TensorDiff
    gram: Any
    """B @ B.T in float64, on the compute device.  # [q, q]"""
    total_energy: float
    rows: int
    cols: int
    q: int


def diff_tensor(pair: TensorPair, model: WeightSource, base: WeightSource,
                cfg: StreamConfig) -> tuple[TensorDiff, DeltaOp, PendingSpectrum | None]:
    """All statistics of one pair; the returned op still holds the delta when it was cacheable.

    Matrices get a randomized spectrum without power iterations: the sketch Y = delta @ omega is taken
    during the first read, then B = Q.T @ delta from the cached delta (re-read only when it is too big
    to cache). Exact for a delta of rank below q (a merged LoRA reads as exactly its rank). The singular
    values come later, for all matrices at once (``finish_spectra``): ~200 small SVD calls cost a SmolLM2
    diff 0.04 s on 2 cores, and on a GPU each is a solver launch and a synchronisation.
    """
    op = make_op(pair, model, base, cfg)
    want_spectrum = (len(pair.shape) == 2 and min(op.rows, op.cols) >= MIN_SPECTRUM_DIM
                     and pair.model_dtype in FLOAT_DTYPES)
    q = min(cfg.sketch_rank, op.rows, op.cols)
    omega = gaussian(op.cols, q, cfg.seed, op.device) if want_spectrum else None
    s, sketch = first_pass(op, omega)
    n = op.rows * op.cols
    base_norm, model_norm, delta_norm = math.sqrt(s.ss_b), math.sqrt(s.ss_a), math.sqrt(s.ss_d)
    dot = (s.ss_a + s.ss_b - s.ss_d) / 2
    cosine = dot / math.sqrt(s.ss_a * s.ss_b) if s.ss_a > 0 and s.ss_b > 0 else (1.0 if not s.changed else 0.0)
    var_a, var_b = s.ss_a - s.sum_a**2 / n, s.ss_b - s.sum_b**2 / n
    scale = max(s.ss_a, s.ss_b, 1e-30)
    corr = None
    if var_a > 1e-9 * scale and var_b > 1e-9 * scale:
        corr = (dot - s.sum_a * s.sum_b / n) / math.sqrt(var_a * var_b)
        corr = max(-1.0, min(1.0, corr)) if math.isfinite(corr) else None
    gram = None
    if want_spectrum and s.changed and sketch is not None:
        import torch

        basis = torch.linalg.qr(sketch).Q  # [rows, q]
        b = op.left_project(basis).double()  # [q, cols]
        gram = b @ b.T  # its eigenvalues are B's squared singular values
    layer, _ = layer_of(pair.name)
    td = TensorDiff(
        name=pair.name, model_key=pair.model_key, base_key=pair.base_key, layer=layer, shape=list(pair.shape),
        params=n, model_dtype=pair.model_dtype, base_dtype=pair.base_dtype, base_norm=_r(base_norm),
        model_norm=_r(model_norm), delta_norm=_r(delta_norm),
        relative_change=_r(delta_norm / base_norm) if base_norm > 0 else (1.0 if s.changed else 0.0),
        norm_ratio=_r(model_norm / base_norm) if base_norm > 0 else 1.0, cosine=_r(cosine),
        correlation=None if corr is None else _r(corr), untouched=not s.changed)
    pending = None if gram is None else PendingSpectrum(td, gram, s.ss_d, op.rows, op.cols, q)
    return td, op, pending


def finish_spectra(pending: list[PendingSpectrum]) -> None:
    """Fill in ``spectrum`` of every pending matrix: one batched symmetric eigensolve per sketch size.

    Eigenvalues of B @ B.T in float64 are B's squared singular values; squaring loses relative precision
    only for energies below ~1e-16 of the largest, far under what the shares are rounded to.
    """
    import torch

    by_q: dict[int, list[PendingSpectrum]] = {}
    for p in pending:
        by_q.setdefault(p.q, []).append(p)
    for group in by_q.values():
        evals = torch.linalg.eigvalsh(torch.stack([p.gram for p in group]).cpu())  # ascending  # [n, q]
        svs = evals.flip(-1).clamp_min(0).sqrt()
        for p, sv in zip(group, svs):
            p.tensor.spectrum = spectrum_of(sv, p.total_energy, p.rows, p.cols, p.q)


def aggregate_layers(tensors: list[TensorDiff]) -> list[LayerDiff]:
    """Per-block relative change; blocks in index order, then embed, lm_head, other."""
    groups: dict[str, list[TensorDiff]] = {}
    for t in tensors:
        groups.setdefault(t.layer, []).append(t)
    out = []
    for name, ts in groups.items():
        ss_b = sum(t.base_norm**2 for t in ts)
        ss_d = sum(t.delta_norm**2 for t in ts)
        top = max(ts, key=lambda t: t.relative_change)
        index = int(name.split(".")[1]) if name.startswith("layers.") else None
        out.append(LayerDiff(name=name, index=index, params=sum(t.params for t in ts), tensors=len(ts),
                             changed_tensors=sum(not t.untouched for t in ts),
                             relative_change=_r(math.sqrt(ss_d / ss_b)) if ss_b > 0 else 0.0,
                             max_tensor=top.name, max_relative_change=top.relative_change))
    order = {"embed": 1, "lm_head": 2, "other": 3}
    out.sort(key=lambda g: (0, g.index) if g.index is not None else (order.get(g.name, 4), 0))
    return out


def provenance_test(tensors: list[TensorDiff]) -> Provenance:
    """Derived if nearly every matrix still correlates with the base.

    Why correlation per matrix: fine-tuning adds a delta that is small or at least not anti-aligned,
    so correlation stays high (>= 0.9 measured, 1/sqrt(1 + rel_change^2) when the delta is unrelated
    noise), while two independent inits/trainings of the same shape have unaligned neurons and
    correlate like noise (~1/sqrt(n)). 1-D tensors are left out: norms are initialised to ones in
    every model and would "match" anything.
    """
    cands = [t for t in tensors if len(t.shape) >= 2 and t.params >= PROVENANCE_MIN_ELEMENTS
             and t.correlation is not None]
    if not cands:
        return Provenance(verdict="uncertain", derived_from_base=False, median_correlation=0.0, matched_fraction=0.0,
                          threshold=MATCH_CORRELATION, tensors_tested=0, null_sd=0.0)
    corrs = sorted(t.correlation for t in cands if t.correlation is not None)
    median = corrs[len(corrs) // 2] if len(corrs) % 2 else (corrs[len(corrs) // 2 - 1] + corrs[len(corrs) // 2]) / 2
    matched = sum(c >= MATCH_CORRELATION for c in corrs) / len(corrs)
    sizes = sorted(t.params for t in cands)
    null_sd = 1 / math.sqrt(sizes[len(sizes) // 2])
    if matched >= 0.9 and median >= MATCH_CORRELATION:
        verdict = "derived"
    elif matched <= 0.1 and median < MATCH_CORRELATION / 2:
        verdict = "not-derived"
    elif 0.1 < matched < 0.9:
        verdict = "partial"
    else:
        verdict = "uncertain"
    weakest = sorted(cands, key=lambda t: t.correlation if t.correlation is not None else 0.0)[:5]
    return Provenance(
        verdict=verdict, derived_from_base=verdict == "derived", median_correlation=_r(median),
        matched_fraction=_r(matched), threshold=MATCH_CORRELATION, tensors_tested=len(cands), null_sd=_r(null_sd),
        weakest=[{"name": t.name, "correlation": t.correlation, "relative_change": t.relative_change}
                 for t in weakest])


def _r(x: float) -> float:
    """Round for the report (6 significant digits keeps JSON readable and diffs stable)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.6g}")


__all__ = ["DeltaOp", "PendingSpectrum", "StreamConfig", "aggregate_layers", "common_mode", "diff_tensor",
           "finish_spectra", "first_pass", "gaussian",
           "make_op", "provenance_test", "spectrum_of"]
