"""Fleet manifests (YAML and plain text) and targets from a real Hugging Face cache layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelaudit.errors import TargetNotFoundError, TargetUnreadableError, UsageError
from modelaudit.findings import Severity
from modelaudit.fleet.manifest import FleetTarget, read_manifest, targets_from_cache
from tests.unit.test_target import SHA_MAIN, SHA_OLD, make_hub_cache


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_list_of_strings_and_mappings(tmp_path: Path) -> None:
    (tmp_path / "models" / "a").mkdir(parents=True)
    _write(tmp_path / "strict.toml", '[policy]\nfail_on = "medium"\n')
    manifest = _write(tmp_path / "fleet.yaml", """
- acme/tiny
- target: models/a
  base: acme/base
  revision: v1
  policy: strict.toml
""")
    targets = read_manifest(manifest)
    assert targets == [FleetTarget("acme/tiny"),
                       FleetTarget(str(tmp_path / "models" / "a"), base="acme/base", revision="v1",
                                   policy=str(tmp_path / "strict.toml"))]
    policy = targets[1].read_policy()
    assert policy is not None and policy.fail_on is Severity.MEDIUM
    assert targets[0].read_policy() is None


def test_yaml_mapping_with_targets(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "fleet.yml", "targets:\n  - acme/one\n  - {target: acme/two, revision: 1234}\n")
    assert read_manifest(manifest) == [FleetTarget("acme/one"), FleetTarget("acme/two", revision="1234")]


def test_plain_text_one_target_per_line_with_comments(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "fleet.txt", "# models to audit\n\nacme/one\n   acme/two  \n  # done\n")
    assert read_manifest(manifest) == [FleetTarget("acme/one"), FleetTarget("acme/two")]


def test_relative_paths_are_read_beside_the_manifest_only_when_they_exist_there(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    manifest = _write(tmp_path / "fleet.txt", "here\nnot-here/model\n")
    assert [t.target for t in read_manifest(manifest)] == [str(tmp_path / "here"), "not-here/model"]


@pytest.mark.parametrize(("text", "message"), [
    ("- acme/one\n- {target: acme/two, baes: x}\n", r"fleet\.yaml: item 2: unknown key\(s\) baes"),
    ("- acme/one\n- [a, b]\n", r"item 2: expected a target or a mapping"),
    ("- {base: acme/base}\n", r"item 1: no 'target'"),
    ("- {target: {a: 1}}\n", r"item 1: 'target' must be text"),
    ("targets: [a/b]\nother: 1\n", r"unknown top-level key\(s\) other"),
    ("acme/one\n", r"a manifest is a list of targets"),
    ("- acme/one\n- acme/one\n", r"item 2 repeats item 1 \(acme/one\)"),
    ("[]\n", r"lists no target"),
    ("- [unclosed\n", r"not valid YAML"),
    ("- {target: acme/one, policy: missing.toml}\n", r"item 1: missing\.toml: cannot read policy file"),
])
def test_manifest_errors_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        read_manifest(_write(tmp_path / "fleet.yaml", text))


def test_manifest_policy_with_unknown_keys_names_the_item(tmp_path: Path) -> None:
    _write(tmp_path / "bad.toml", "[policy]\nfail_onn = 'low'\n")
    with pytest.raises(UsageError, match=r"item 1: .*bad\.toml: unknown policy keys: fail_onn"):
        read_manifest(_write(tmp_path / "fleet.yaml", "- {target: acme/one, policy: bad.toml}\n"))


def test_missing_or_unreadable_manifest(tmp_path: Path) -> None:
    with pytest.raises(TargetNotFoundError, match="no such manifest file"):
        read_manifest(tmp_path / "absent.yaml")
    _write(tmp_path / "empty.txt", "# nothing\n")
    with pytest.raises(UsageError, match="lists no target"):
        read_manifest(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(TargetUnreadableError, match="cannot read the manifest"):
        read_manifest(tmp_path / "binary.txt")


def test_targets_from_cache_pins_each_model_repository_to_its_main_commit(tmp_path: Path) -> None:
    make_hub_cache(tmp_path, "acme/tiny")
    other = make_hub_cache(tmp_path, "acme/other")
    (other / "refs" / "main").unlink()  # no main ref: the newest revision a ref names (v1 -> SHA_OLD)
    dataset = tmp_path / "datasets--acme--data" / "snapshots" / SHA_MAIN
    dataset.mkdir(parents=True)
    (dataset / "data.txt").write_text("x")
    found = targets_from_cache(tmp_path)
    assert found.targets == [FleetTarget("acme/other", revision=SHA_OLD), FleetTarget("acme/tiny", revision=SHA_MAIN)]
    assert found.problems == []


def test_targets_from_cache_reports_corrupted_repositories(tmp_path: Path) -> None:
    make_hub_cache(tmp_path, "acme/tiny")
    (tmp_path / "models--acme--broken").mkdir()  # no snapshots folder: the hub library calls it corrupted
    found = targets_from_cache(tmp_path)
    assert found.targets == [FleetTarget("acme/tiny", revision=SHA_MAIN)]
    assert len(found.problems) == 1 and "models--acme--broken" in found.problems[0]


def test_targets_from_unreadable_cache_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(TargetNotFoundError, match="no Hugging Face cache folder"):
        targets_from_cache(tmp_path / "absent")
    _write(tmp_path / "file", "x")
    with pytest.raises(TargetUnreadableError, match="cannot read the Hugging Face cache"):
        targets_from_cache(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_targets_from_cache_without_permission(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make_hub_cache(cache, "acme/tiny")
    cache.chmod(0)
    try:
        with pytest.raises((TargetUnreadableError, TargetNotFoundError)):
            targets_from_cache(cache)
    finally:
        cache.chmod(0o755)
