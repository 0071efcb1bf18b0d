"""The safetensors integrity check: real files from the library must pass, every kind of lying header must not."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from modelaudit.findings import Severity
from modelaudit.registry import static_checks
from modelaudit.static.base import StaticContext, run_static_checks
from modelaudit.static.safetensors_integrity import RULES
from modelaudit.target import inventory


def _scan(folder: Path) -> dict[str, list[Any]]:
    result = run_static_checks(StaticContext(root=folder, files=inventory(folder)), only=["static.safetensors"])
    assert result.errors == []
    found: dict[str, list[Any]] = {}
    for f in result.findings:
        found.setdefault(f.rule_id, []).append(f)
    return found


def _raw(header: dict[str, Any] | bytes, data: bytes = b"", *, pad: bytes = b"",
         length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    body += pad
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def _t(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _write(folder: Path, content: bytes, name: str = "model.safetensors") -> Path:
    (folder / name).write_bytes(content)
    return folder


# --- benign -----------------------------------------------------------------------------------------------


def test_real_library_files_have_no_findings(tmp_path: Path) -> None:
    tensors = {
        "empty": torch.zeros(0), "empty2d": torch.zeros(0, 4), "scalar": torch.tensor(3.5),
        "bf16": torch.randn(3, 5).to(torch.bfloat16), "fp16": torch.randn(7, dtype=torch.float16),
        "i8": torch.arange(9, dtype=torch.int8), "mask": torch.tensor([True, False, True]),
        "f32": torch.randn(4, 4), "i64": torch.arange(3), "f64": torch.randn(2, dtype=torch.float64),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    save_file({}, str(tmp_path / "nothing.safetensors"))
    assert _scan(tmp_path) == {}


def test_real_sharded_checkpoint_passes(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {"total_size": 20},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert _scan(tmp_path) == {}


def test_space_padding_and_non_model_files_pass(tmp_path: Path) -> None:
    _write(tmp_path, _raw({"w": _t("F32", [1], 0, 4)}, b"\0" * 4, pad=b"    "))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(pickle.dumps({"x": 1}))
    assert _scan(tmp_path) == {}


def test_check_is_registered_with_every_rule() -> None:
    plugin = static_checks.get("static.safetensors")
    assert set(plugin.rules) == set(RULES)
    assert all(r.startswith("static.safetensors.") for r in RULES)


# --- malicious / malformed ------------------------------------------------------------------------------

W = {"w": _t("F32", [2], 0, 8)}

CASES: list[tuple[str, bytes, str, Severity | None]] = [
    ("pickle renamed", pickle.dumps({"a": 1}, protocol=4), "static.safetensors.not-safetensors", Severity.HIGH),
    ("zip renamed", b"PK\x05\x06" + b"\0" * 18, "static.safetensors.not-safetensors", Severity.HIGH),
    ("too short", b"\x05\x00\x00", "static.safetensors.truncated", Severity.HIGH),
    ("header past eof", _raw(W, b"\0" * 8, length=500), "static.safetensors.header-beyond-file", Severity.HIGH),
    ("huge header", _raw(W, b"\0" * 8, length=200 * 1024 * 1024), "static.safetensors.header-too-large",
     Severity.HIGH),
    ("not utf8", _raw(b'{"w\xff":1}'), "static.safetensors.header-invalid", Severity.HIGH),
    ("not json", _raw(b"{not json at all}"), "static.safetensors.header-invalid", Severity.HIGH),
    ("not object", _raw(b" [1, 2]"), "static.safetensors.header-invalid", Severity.HIGH),
    ("NaN constant", _raw(b'{"w": NaN}'), "static.safetensors.header-invalid", Severity.HIGH),
    ("duplicate tensor", _raw(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                              b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
     "static.safetensors.duplicate-key", Severity.HIGH),
    ("junk padding", _raw(W, b"\0" * 8, pad=b"  EVIL"), "static.safetensors.header-padding", Severity.MEDIUM),
    ("tab padding", _raw(W, b"\0" * 8, pad=b"\t\n"), "static.safetensors.header-padding", Severity.LOW),
    ("metadata not str", _raw({"__metadata__": {"a": 1}, **W}, b"\0" * 8), "static.safetensors.bad-metadata",
     Severity.MEDIUM),
    ("metadata list", _raw({"__metadata__": ["x"], **W}, b"\0" * 8), "static.safetensors.bad-metadata", None),
    ("entry not object", _raw({"w": 5}), "static.safetensors.bad-entry", None),
    ("unknown dtype", _raw({"w": _t("F33", [2], 0, 8)}, b"\0" * 8), "static.safetensors.unknown-dtype", None),
    ("negative dim", _raw({"w": _t("F32", [-2], 0, 8)}, b"\0" * 8), "static.safetensors.bad-shape", None),
    ("float dim", _raw({"w": _t("F32", [2.0], 0, 8)}, b"\0" * 8), "static.safetensors.bad-shape", None),
    ("dim over u64", _raw({"w": _t("F32", [2**64], 0, 4)}, b"\0" * 4), "static.safetensors.bad-shape", None),
    ("absurd rank", _raw({"w": _t("U8", [1] * 2000, 0, 1)}, b"\0"), "static.safetensors.bad-shape", None),
    ("huge product", _raw({"w": _t("U8", [2**63] * 1000, 0, 1)}, b"\0"), "static.safetensors.size-mismatch",
     Severity.HIGH),
    ("bool dim", _raw({"w": _t("F32", [True], 0, 4)}, b"\0" * 4), "static.safetensors.bad-shape", None),
    ("reversed offsets", _raw({"w": _t("F32", [2], 8, 0)}, b"\0" * 8), "static.safetensors.bad-offsets",
     Severity.HIGH),
    ("three offsets", _raw({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
     "static.safetensors.bad-offsets", None),
    ("past end", _raw({"w": _t("F32", [4], 0, 16)}, b"\0" * 8), "static.safetensors.offsets-past-end",
     Severity.HIGH),
    ("overlap", _raw({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 4, 12)}, b"\0" * 12),
     "static.safetensors.overlap", Severity.HIGH),
    ("gap", _raw({"a": _t("F32", [1], 0, 4), "b": _t("F32", [1], 8, 12)}, b"\0" * 12),
     "static.safetensors.gap", Severity.LOW),
    ("trailing payload", _raw(W, b"\0" * 8 + b"import os; os.system('x')"), "static.safetensors.trailing-bytes",
     Severity.MEDIUM),
    ("size mismatch", _raw({"w": _t("F32", [3], 0, 8)}, b"\0" * 8), "static.safetensors.size-mismatch",
     Severity.HIGH),
    ("sub-byte misaligned", _raw({"w": _t("F4", [3], 0, 2)}, b"\0" * 2), "static.safetensors.size-mismatch", None),
]


@pytest.mark.parametrize(("label", "content", "rule", "severity"), CASES, ids=[c[0] for c in CASES])
def test_malformed_files_are_flagged(tmp_path: Path, label: str, content: bytes, rule: str,
                                     severity: Severity | None) -> None:
    found = _scan(_write(tmp_path, content))
    assert rule in found, f"{label}: got {sorted(found)}"
    finding = found[rule][0]
    assert finding.location.path == "model.safetensors"
    assert "model.safetensors" in finding.message
    if severity is not None:
        assert finding.severity == severity
    json.dumps(finding.evidence)  # evidence must serialise


def test_truncated_real_file_is_flagged_at_every_cut(tmp_path: Path) -> None:
    save_file({"a": torch.randn(4, 4), "b": torch.ones(3, dtype=torch.int8)}, str(tmp_path / "full.safetensors"))
    full = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "full.safetensors").unlink()
    for cut in (0, 3, 8, 20, len(full) // 2, len(full) - 1):
        for old in tmp_path.iterdir():
            old.unlink()
        found = _scan(_write(tmp_path, full[:cut]))
        assert found, f"cut at {cut} produced no finding"


def test_many_bad_tensors_collapse_into_one_finding(tmp_path: Path) -> None:
    header = {f"t{i}": _t("F32", [1], 0, 400) for i in range(500)}
    found = _scan(_write(tmp_path, _raw(header, b"\0" * 4)))
    (finding,) = found["static.safetensors.offsets-past-end"]
    assert finding.evidence["count"] == 500
    assert len(finding.evidence["tensors"]) == 10


def test_too_many_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelaudit.static.safetensors_integrity as mod

    monkeypatch.setattr(mod, "MAX_TENSORS", 5)
    header = {f"t{i}": _t("F32", [0], 0, 0) for i in range(6)}
    found = _scan(_write(tmp_path, _raw(header)))
    assert found["static.safetensors.too-many-tensors"][0].evidence["count"] == 6
    monkeypatch.setattr(mod, "MAX_TENSORS", 6)
    assert _scan(tmp_path) == {}


def test_library_second_opinion_flags_what_our_parser_accepts(tmp_path: Path) -> None:
    # A zero-element tensor whose other dims overflow the reader's u64 arithmetic: byte size 0 matches
    # prod(shape) in Python, but the reference loader refuses the file, so it must not pass silently.
    found = _scan(_write(tmp_path, _raw({"w": _t("F32", [2**40, 2**40, 0], 0, 0)})))
    assert set(found) == {"static.safetensors.rejected"}
    finding = found["static.safetensors.rejected"][0]
    assert finding.severity == Severity.HIGH and finding.evidence["error"]


def test_library_accepts_every_dtype_we_know(tmp_path: Path) -> None:
    from modelaudit.static.safetensors_integrity import DTYPE_BITS

    header = {}
    offset = 0
    for i, (dtype, bits) in enumerate(sorted(DTYPE_BITS.items())):
        nbytes = 8 * bits // 8  # 8 elements: whole bytes for every packed type
        header[f"t{i}_{dtype}"] = _t(dtype, [8], offset, offset + nbytes)
        offset += nbytes
    assert _scan(_write(tmp_path, _raw(header, b"\0" * offset))) == {}


def test_library_writes_broken_header_for_empty_dict_with_empty_metadata(tmp_path: Path) -> None:
    # safetensors 0.8 ``save({}, metadata={})`` writes ``{},"__metadata__":{}}``: JSON followed by junk.
    from safetensors.torch import save

    found = _scan(_write(tmp_path, save({}, metadata={})))
    assert found["static.safetensors.header-padding"][0].severity == Severity.MEDIUM


def test_named_safetensors_that_is_a_text_file(tmp_path: Path) -> None:
    found = _scan(_write(tmp_path, b"hello, I am not a tensor file\n"))
    assert found["static.safetensors.not-safetensors"][0].severity == Severity.HIGH


def test_empty_safetensors(tmp_path: Path) -> None:
    found = _scan(_write(tmp_path, b""))
    assert found["static.safetensors.not-safetensors"][0].severity == Severity.MEDIUM


def test_safetensors_without_extension_is_checked(tmp_path: Path) -> None:
    found = _scan(_write(tmp_path, _raw({"w": _t("F32", [4], 0, 16)}, b"\0" * 8), name="weights.dat"))
    assert found["static.safetensors.offsets-past-end"][0].location.path == "weights.dat"


# --- sharded index ---------------------------------------------------------------------------------------


def _sharded(folder: Path, weight_map: dict[str, str]) -> Path:
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, str(folder / "model-00001-of-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_index_names_missing_shard(tmp_path: Path) -> None:
    found = _scan(_sharded(tmp_path, {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors",
                                      "c": "model-00002-of-00002.safetensors"}))
    (finding,) = found["static.safetensors.index-missing-shard"]
    assert finding.severity == Severity.HIGH and finding.evidence["tensors"] == ["c"]
    assert set(found) == {"static.safetensors.index-missing-shard"}


def test_index_names_tensor_the_shard_lacks(tmp_path: Path) -> None:
    found = _scan(_sharded(tmp_path, {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors",
                                      "ghost": "model-00001-of-00001.safetensors"}))
    assert found["static.safetensors.index-missing-tensor"][0].evidence["tensors"] == ["ghost"]


def test_index_misses_a_tensor_the_shard_holds(tmp_path: Path) -> None:
    found = _scan(_sharded(tmp_path, {"a": "model-00001-of-00001.safetensors"}))
    (finding,) = found["static.safetensors.index-unlisted-tensor"]
    assert finding.evidence["tensors"] == ["b"] and finding.severity == Severity.LOW


def test_index_shard_that_is_a_pickle(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    torch.save({"b": torch.ones(2)}, tmp_path / "model-00002-of-00002.bin", _use_new_zipfile_serialization=False)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.bin"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    found = _scan(tmp_path)
    (finding,) = found["static.safetensors.index-shard-not-safetensors"]
    assert finding.severity == Severity.HIGH and finding.evidence["content_type"] == "pickle"
    assert finding.location.path == "model.safetensors.index.json" and "model-00002-of-00002.bin" in finding.message
    assert set(found) == {"static.safetensors.index-shard-not-safetensors"}


@pytest.mark.parametrize("text", ["{broken", "[1]", '{"weight_map": {"a": 3}}',
                                  '{"weight_map": {"a": "../x.safetensors"}}'])
def test_invalid_index(tmp_path: Path, text: str) -> None:
    save_file({"a": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(text)
    found = _scan(tmp_path)
    assert set(found) == {"static.safetensors.index-invalid"}


def test_large_file_reads_header_only(tmp_path: Path) -> None:
    """A 512 MB (sparse) file costs the same as a tiny one: only the header is read."""
    import time

    from modelaudit.findings import FileEntry
    from modelaudit.static.safetensors_integrity import inspect_file

    nbytes = 512 * 1024 * 1024
    path = tmp_path / "model.safetensors"
    path.write_bytes(_raw({"big": _t("F32", [nbytes // 4], 0, nbytes)}))
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size + nbytes)
    entry = FileEntry(path="model.safetensors", size=path.stat().st_size, sha256="0" * 64, content_type="safetensors")
    start = time.perf_counter()
    report = inspect_file(path, entry)
    assert time.perf_counter() - start < 1.0
    assert report.findings == [] and report.header is not None and list(report.header.tensors) == ["big"]


def test_hostile_long_names_are_shortened_in_findings(tmp_path: Path) -> None:
    name = "x" * 100_000
    found = _scan(_write(tmp_path, _raw({name: _t("F32", [4], 0, 16)}, b"\0" * 8)))
    (finding,) = found["static.safetensors.offsets-past-end"]
    assert len(finding.message) < 1000
    assert finding.evidence["tensors"][0].startswith("xxx") and len(finding.evidence["tensors"][0]) < 300
    assert finding.location.member is not None and len(finding.location.member) < 300


def test_file_that_shrank_after_the_inventory(tmp_path: Path) -> None:
    from modelaudit.findings import FileEntry
    from modelaudit.static.safetensors_integrity import inspect_file

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x05\x00")
    entry = FileEntry(path="model.safetensors", size=4096, sha256="0" * 64, content_type="safetensors")
    rules = [f.rule_id for f in inspect_file(path, entry).findings]
    assert rules == ["static.safetensors.truncated"]


def test_check_does_not_import_torch(tmp_path: Path) -> None:
    """The second opinion opens files with framework="numpy": a static scan must not pay torch's import."""
    import subprocess
    import sys

    _write(tmp_path, _raw(W, b"\0" * 8))
    code = ("import sys; from pathlib import Path; from modelaudit.static.base import StaticContext, run_static_checks;"
            "from modelaudit.target import inventory; root = Path(sys.argv[1]);"
            "r = run_static_checks(StaticContext(root=root, files=inventory(root)), only=['static.safetensors']);"
            "assert not r.errors and not r.findings, r; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "False"


# --- payloads hidden in __metadata__ (issue 17 item 8) ----------------------------------------------------

CANARY = "/tmp/modelaudit-metadata-canary-must-not-exist"


class _Reduce:
    """Serialising this runs nothing; unpickling it would run a shell command that creates the canary."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.system, (f"touch {CANARY}",))


def _with_metadata(folder: Path, metadata: dict[str, str]) -> Path:
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"), metadata=metadata)
    return folder


def _payload_findings(folder: Path) -> list[Any]:
    return _scan(folder).get("static.safetensors.metadata-payload", [])


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode, base64.b85encode,
                                    lambda b: b.hex().encode()], ids=["base64", "urlsafe", "base85", "hex"])
def test_encoded_pickle_with_dangerous_call_in_metadata_is_high(tmp_path: Path, encode: Any) -> None:
    blob = encode(pickle.dumps(_Reduce(), protocol=2)).decode()
    found = _payload_findings(_with_metadata(tmp_path, {"format": "pt", "extra": blob}))
    assert [(f.severity, f.evidence["payload"]) for f in found] == [(Severity.HIGH, "pickle")]
    assert "system" in found[0].message and found[0].location.member == "__metadata__"
    assert not Path(CANARY).exists()


def test_pickle_split_over_several_keys_is_joined_and_found(tmp_path: Path) -> None:
    blob = base64.b64encode(pickle.dumps(_Reduce(), protocol=4)).decode()
    parts = {f"payload_{i}": blob[i * 10:(i + 1) * 10] for i in range(len(blob) // 10 + 1)}
    shuffled = dict(sorted(parts.items(), reverse=True))  # header order is not the chunk order
    found = _payload_findings(_with_metadata(tmp_path, {"format": "pt", **shuffled}))
    assert [f.severity for f in found] == [Severity.HIGH]
    assert found[0].evidence["keys"][0] == "payload_0"


def test_harmless_pickle_archive_and_code_in_metadata_are_medium(tmp_path: Path) -> None:
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("a.txt", "x")
    metadata = {"state": base64.b64encode(pickle.dumps({"lr": 0.1, "steps": [1, 2, 3]}, protocol=4)).decode(),
                "bundle": base64.b64encode(zipped.getvalue()).decode(),
                "hook": base64.b64encode(b"import os\nos.system('id')\n").decode()}
    found = {f.evidence["keys"][0]: (f.severity, f.evidence["payload"]) for f in _payload_findings(
        _with_metadata(tmp_path, metadata))}
    assert found == {"state": (Severity.MEDIUM, "pickle"), "bundle": (Severity.MEDIUM, "zip"),
                     "hook": (Severity.MEDIUM, "python")}


def test_encoded_executable_in_metadata_is_high(tmp_path: Path) -> None:
    elf = b"\x7fELF\x02\x01\x01" + b"\x00" * 57
    found = _payload_findings(_with_metadata(tmp_path, {"blob": base64.b64encode(elf).decode()}))
    assert [(f.severity, f.evidence["payload"]) for f in found] == [(Severity.HIGH, "elf")]


def test_ordinary_metadata_stays_clean(tmp_path: Path) -> None:
    metadata = {
        "format": "pt",
        "sha256": hashlib.sha256(b"weights").hexdigest(),
        "base_model_sha": "a" * 40,
        "merge_recipe": "models:\n  - model: org/a\n    parameters: {weight: 0.5}\nmerge_method: slerp\n",
        "config": json.dumps({"hidden_size": 4096, "layers": list(range(32)), "name": "llama-3-8b-instruct"}),
        "modelspec.sai_model_spec": "1.0.0",
        "checksum_b64": base64.b64encode(hashlib.sha256(b"x").digest()).decode(),
        "license": "apache-2.0",
        "notes": base64.b64encode(b"A plain note about this model, nothing more.").decode(),
        "card": base64.b64encode(json.dumps({"a": 1, "b": [1, 2]}).encode()).decode(),
    }
    assert _payload_findings(_with_metadata(tmp_path, metadata)) == []
