"""Target resolution: local folders and files, hub ids through a real cache layout, sniffing by bytes."""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest

from modelaudit.errors import TargetNotFoundError, TargetUnreadableError, UsageError
from modelaudit.target import (
    GIB,
    LINK_DANGLING,
    LINK_LOOP,
    LINK_OUTSIDE,
    UNREAD_LINK_TYPES,
    ReadLimits,
    inventory,
    looks_like_hub_id,
    resolve_target,
)

SHA_MAIN = "a" * 40
SHA_OLD = "b" * 40


def _safetensors_bytes() -> bytes:
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    return struct.pack("<Q", len(header)) + header + b"\x00" * 8


def make_hub_cache(cache: Path, repo_id: str = "acme/tiny") -> Path:
    """Build the layout huggingface_hub writes: blobs by hash, snapshots of symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    for sha, payload in ((SHA_MAIN, b'{"model_type": "llama"}'), (SHA_OLD, b'{"model_type": "gpt2"}')):
        snap = repo / "snapshots" / sha
        snap.mkdir(parents=True)
        for name, data in (("config.json", payload), ("model.safetensors", _safetensors_bytes())):
            digest = hashlib.sha256(data).hexdigest()
            (blobs / digest).write_bytes(data)
            os.symlink(os.path.relpath(blobs / digest, snap), snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA_MAIN)
    (repo / "refs" / "v1").write_text(SHA_OLD)
    return repo


def test_hub_id_resolves_through_offline_cache_and_pins_sha(tmp_path: Path) -> None:
    make_hub_cache(tmp_path)
    resolved = resolve_target("acme/tiny", cache_dir=tmp_path, offline=True)
    assert resolved.info.kind == "hub"
    assert resolved.info.resolved_revision == SHA_MAIN
    assert resolved.info.requested_revision == "main"
    by_path = {f.path: f for f in resolved.info.files}
    assert by_path["config.json"].sha256 == hashlib.sha256(b'{"model_type": "llama"}').hexdigest()
    assert by_path["model.safetensors"].content_type == "safetensors"


def test_hub_revision_tag_pins_to_its_commit(tmp_path: Path) -> None:
    make_hub_cache(tmp_path)
    resolved = resolve_target("acme/tiny", revision="v1", cache_dir=tmp_path, offline=True)
    assert resolved.info.resolved_revision == SHA_OLD
    assert resolved.info.requested_revision == "v1"


def test_hub_id_missing_from_cache_offline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TargetNotFoundError, match="acme/absent@main: not found in cache .* offline"):
        resolve_target("acme/absent", cache_dir=tmp_path, offline=True)


def test_hub_offline_follows_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert resolve_target("acme/tiny").info.resolved_revision == SHA_MAIN


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TargetNotFoundError, match="no such file or folder"):
        resolve_target(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetUnreadableError, match="contains no files"):
        resolve_target(str(tmp_path / "empty"))


def test_revision_on_local_path_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="--revision"):
        resolve_target(str(tmp_path), revision="main")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    f.chmod(0)
    with pytest.raises(TargetUnreadableError, match="model.bin"):
        resolve_target(str(tmp_path))


def test_single_file_target(tmp_path: Path) -> None:
    f = tmp_path / "weights.safetensors"
    f.write_bytes(_safetensors_bytes())
    (tmp_path / "other.txt").write_text("ignored")
    resolved = resolve_target(str(f))
    assert resolved.info.kind == "file"
    assert [e.path for e in resolved.info.files] == ["weights.safetensors"]


def test_sniffing_by_bytes_not_extension(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "real.bin").write_bytes(_safetensors_bytes())
    (tmp_path / "proto0.dat").write_bytes(b"(dp0\nVa\np1\nI1\ns.")
    (tmp_path / "notes.txt").write_text("hello (world) I think.\n")
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "lib.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 50)
    with zipfile.ZipFile(tmp_path / "ckpt.pt", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps([1, 2]))
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr("readme.txt", "x")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "run").write_text("#!/usr/bin/env python3\nprint(1)\n")
    (tmp_path / "install").write_text("#!/bin/sh\necho python is not the interpreter here\n")
    (tmp_path / "tool.py").write_text("print(1)\n")
    (tmp_path / "state.bin").write_bytes(bz2.compress(pickle.dumps([1])))
    (tmp_path / "state2.bin").write_bytes(lzma.compress(pickle.dumps([1])))
    types = {e.path: e.content_type for e in inventory(tmp_path)}
    assert types == {
        "model.safetensors": "pickle", "real.bin": "safetensors", "proto0.dat": "pickle", "notes.txt": "text",
        "config.json": "json", "lib.so": "elf", "ckpt.pt": "pytorch-zip", "plain.zip": "zip",
        "broken.zip": "zip-corrupt", "empty.bin": "empty", "run": "python", "install": "script", "tool.py": "python",
        "state.bin": "bz2", "state2.bin": "xz",
    }


def test_hub_id_pattern() -> None:
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not looks_like_hub_id("./local/dir")
    assert not looks_like_hub_id("a/b/c")


# --- read limits (issue 17 item 15) ---------------------------------------------------------------------

def test_file_over_the_hash_limit_is_listed_without_a_digest(tmp_path: Path) -> None:
    """A 10 GiB sparse file is sniffed from its head, not hashed; the entry names the limit (no fake digest)."""
    with open(tmp_path / "huge.bin", "wb") as fh:
        fh.truncate(10 * GIB)
    (tmp_path / "config.json").write_text('{"a": 1}')
    resolved = resolve_target(str(tmp_path), limits=ReadLimits(max_hash_bytes_per_file=1024 * 1024))
    by_path = {f.path: f for f in resolved.info.files}
    huge = by_path["huge.bin"]
    assert huge.sha256 is None and huge.size == 10 * GIB
    assert huge.unread is not None and "max_hash_bytes_per_file" in huge.unread
    assert by_path["config.json"].sha256 == hashlib.sha256(b'{"a": 1}').hexdigest()


def test_total_hash_limit_stops_hashing_in_path_order(tmp_path: Path) -> None:
    for name in ("a.bin", "b.bin", "c.bin"):
        (tmp_path / name).write_bytes(b"\x01" * 1000)
    entries = inventory(tmp_path, limits=ReadLimits(max_hash_bytes_total=2500))
    assert [e.sha256 is not None for e in entries] == [True, True, False]
    assert entries[2].unread is not None and "max_hash_bytes_total" in entries[2].unread


# --- symbolic links (issue 17 item 16) ------------------------------------------------------------------

def test_link_out_of_the_folder_is_marked_and_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET!!" + b"x" * 100)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    os.symlink(secret, model / "model.safetensors")
    entry = {e.path: e for e in resolve_target(str(model)).info.files}["model.safetensors"]
    assert (entry.content_type, entry.sha256, entry.size) == (LINK_OUTSIDE, None, 0)
    single = resolve_target(str(model / "model.safetensors")).info.files
    assert [(e.path, e.content_type) for e in single] == [("model.safetensors", LINK_OUTSIDE)]


def test_dangling_and_looping_links_are_named_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    os.symlink("missing.bin", tmp_path / "dangling.bin")
    os.symlink("loop.bin", tmp_path / "loop.bin")
    types = {e.path: (e.content_type, e.sha256) for e in resolve_target(str(tmp_path)).info.files}
    assert types["dangling.bin"] == (LINK_DANGLING, None)
    assert types["loop.bin"] == (LINK_LOOP, None)


def test_hub_snapshot_links_into_blobs_are_inside_but_out_of_the_repo_are_not(tmp_path: Path) -> None:
    repo = make_hub_cache(tmp_path)
    resolved = resolve_target("acme/tiny", cache_dir=tmp_path, offline=True)
    assert all(e.content_type not in UNREAD_LINK_TYPES and e.sha256 for e in resolved.info.files)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not part of the repo")
    os.symlink(os.path.relpath(outside, repo / "snapshots" / SHA_MAIN), repo / "snapshots" / SHA_MAIN / "extra.txt")
    os.symlink("../../refs/main", repo / "snapshots" / SHA_MAIN / "ref.txt")  # in the repo, but not a blob
    types = {e.path: e.content_type for e in resolve_target("acme/tiny", cache_dir=tmp_path, offline=True).info.files}
    assert types["extra.txt"] == types["ref.txt"] == LINK_OUTSIDE
    assert types["model.safetensors"] == "safetensors"


# --- hub refs and revisions (issue 17 item 17) ----------------------------------------------------------

@pytest.mark.parametrize("ref", ["../../outside", "abc/../../../outside", f"{SHA_OLD}/../../../outside"])
def test_cache_ref_holding_a_path_is_refused(tmp_path: Path, ref: str) -> None:
    repo = make_hub_cache(tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    (repo / "snapshots" / "abc").mkdir()
    (repo / "refs" / "main").write_text(ref)
    with pytest.raises(TargetUnreadableError, match="not a commit sha"):
        resolve_target("acme/tiny", cache_dir=tmp_path, offline=True)


def test_cache_ref_to_another_repo_snapshot_is_refused(tmp_path: Path) -> None:
    repo = make_hub_cache(tmp_path)
    make_hub_cache(tmp_path, "evil/other")
    (repo / "snapshots" / SHA_OLD / "x").mkdir()
    (repo / "refs" / "main").write_text(f"{SHA_OLD}/x/../../../../models--evil--other/snapshots/{SHA_MAIN}")
    with pytest.raises(TargetUnreadableError, match="not a commit sha"):
        resolve_target("acme/tiny", cache_dir=tmp_path, offline=True)


@pytest.mark.parametrize("revision", ["../../outside", "abc/../../x", "/etc", "main/", ".."])
def test_revision_that_is_a_path_is_a_usage_error(tmp_path: Path, revision: str) -> None:
    make_hub_cache(tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="neither a commit sha nor a branch or tag name"):
        resolve_target("acme/tiny", revision=revision, cache_dir=tmp_path, offline=True)


def test_revision_as_sha_or_branch_still_resolves(tmp_path: Path) -> None:
    make_hub_cache(tmp_path)
    assert resolve_target("acme/tiny", revision=SHA_OLD, cache_dir=tmp_path,
                          offline=True).info.resolved_revision == SHA_OLD
    assert resolve_target("acme/tiny", revision="main", cache_dir=tmp_path,
                          offline=True).info.resolved_revision == SHA_MAIN
