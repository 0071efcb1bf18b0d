"""``modelaudit.fleet.cached``, the library path the fleet driver and ``scan --store`` share: store keys made
from the bytes and the settings (not the path), the base named by its digest, unhashed models never
answered from the store, and hub ids pinned through a cache."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelaudit.fleet.cached import key_for, scan_with_store
from modelaudit.fleet.digest import DIGEST_PREFIX
from modelaudit.stages import ScanConfig
from modelaudit.store import ScanStore, open_store
from modelaudit.target import ReadLimits
from tests.unit.test_target import SHA_MAIN, SHA_OLD, make_hub_cache

STATIC = ScanConfig(stages=("static",))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ScanStore]:
    with open_store(str(tmp_path / "store.sqlite")) as opened:
        yield opened


def test_the_key_is_the_content_and_the_settings_not_the_path(clean_model: Path, tampered_model: Path,
                                                              tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(clean_model, copy)
    key, settings = key_for(clean_model, config=STATIC)
    assert key is not None and key.digest.startswith(DIGEST_PREFIX)
    assert key_for(copy, config=STATIC) == (key, settings)
    other_settings, _ = key_for(clean_model, config=ScanConfig(stages=("static", "weights")))
    other_content, _ = key_for(tampered_model, config=STATIC)
    assert other_settings is not None and other_content is not None
    assert other_settings.digest == key.digest and other_settings.settings != key.settings
    assert other_content.digest != key.digest and other_content.settings == key.settings


def test_the_base_is_named_by_its_digest_when_it_resolves(clean_model: Path, tmp_path: Path) -> None:
    base_copy = tmp_path / "base"
    shutil.copytree(clean_model, base_copy)
    clean_key, _ = key_for(clean_model, config=STATIC)
    assert clean_key is not None
    _, by_digest = key_for(clean_model, base=str(base_copy), config=STATIC)
    assert by_digest["base"] == clean_key.digest  # the same bytes as the model itself
    _, by_text = key_for(clean_model, base=str(tmp_path / "missing-base"), config=STATIC)
    assert by_text["base"] == f"spec:{tmp_path / 'missing-base'}"


def test_an_unhashed_model_is_stored_every_time_and_never_answered(clean_model: Path, store: ScanStore) -> None:
    limited = dataclasses.replace(STATIC, read_limits=ReadLimits(max_hash_bytes_per_file=16))
    key, _ = key_for(clean_model, config=limited)
    assert key is None
    first = scan_with_store(clean_model, config=limited, store=store)
    second = scan_with_store(clean_model, config=limited, store=store)
    assert first.scan is not None and second.scan is not None
    assert first.scan.stored_scan is None and second.scan.stored_scan is None
    assert [s.key.digest for s in store.list()] == [None, None]


def test_a_hub_id_is_pinned_through_the_cache_and_each_revision_is_its_own_content(tmp_path: Path,
                                                                                  store: ScanStore) -> None:
    cache = tmp_path / "hub"
    make_hub_cache(cache)
    offline = dataclasses.replace(STATIC, cache_dir=str(cache), offline=True)
    first = scan_with_store("acme/tiny", config=offline, store=store)
    again = scan_with_store("acme/tiny", revision="main", config=offline, store=store)
    assert first.scan is not None and first.scan.stored_scan is None
    assert again.scan is not None and again.scan.stored_scan is not None
    older = scan_with_store("acme/tiny", revision="v1", config=offline, store=store)
    assert older.scan is not None and older.scan.stored_scan is None  # other bytes: scanned, not answered
    assert [(s.target, s.revision) for s in store.list()] == [("acme/tiny", SHA_OLD), ("acme/tiny", SHA_MAIN)]
