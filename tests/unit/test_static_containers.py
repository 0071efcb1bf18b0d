"""The pickle check's container walk: object ``.npy`` in every spelling, joblib's compressed formats by content,
zip members torch loads despite a bad CRC, and archive bombs held to a memory bound (issue 17 items 5-7, 15).

Inputs are real ``np.save``/``joblib.dump``/``torch.save`` output or builders from ``tests/pickle_samples.py``;
nothing is ever unpickled, and code-execution samples carry a canary path that must not exist afterwards.
"""

from __future__ import annotations

import io
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pickle_samples as ps  # noqa: E402

from modelaudit.findings import Finding, Severity  # noqa: E402
from modelaudit.static.base import StaticContext  # noqa: E402
from modelaudit.static.pickles import PickleLimits, iter_findings  # noqa: E402
from modelaudit.target import inventory  # noqa: E402

CODE_EXECUTION = {"static.pickle.dangerous-call", "static.pickle.dangerous-global"}


def scan_folder(folder: Path, *, limits: PickleLimits | None = None) -> list[Finding]:
    ctx = StaticContext(root=folder, files=inventory(folder))
    return list(iter_findings(ctx, limits=limits) if limits else iter_findings(ctx))


def scan_one(folder: Path, name: str, data: bytes, *, limits: PickleLimits | None = None) -> list[Finding]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return scan_folder(folder, limits=limits)


def flagged_critical(findings: list[Finding]) -> bool:
    return any(f.rule_id in CODE_EXECUTION and f.severity is Severity.CRITICAL for f in findings)


def summary(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.rule_id, f.severity.value, f.message) for f in findings]


# --- item 5: object .npy in every spelling, long headers --------------------------------------------------

@pytest.mark.parametrize("descr", ["object", "O", "|O", "=O8", ("|O", (1,)), ("object", (2, 2)),
                                   [("a", "<f4"), ("b", "object")], [("a", [("b", ("|O", (3,)))])]],
                         ids=repr)
def test_object_npy_is_scanned_whatever_the_spelling(tmp_path: Path, descr: object) -> None:
    canary = tmp_path / "canary"
    findings = scan_one(tmp_path / "m", "array.npy", ps.npy_with_descr(descr, ps.canary_payload(canary)))
    assert flagged_critical(findings), summary(findings)
    assert not canary.exists()


def test_object_npy_behind_a_header_longer_than_64k_is_scanned(tmp_path: Path) -> None:
    """np.load(allow_pickle=True) lifts numpy's header-size limit, so a long header must not stop the scan."""
    data = ps.npy_with_descr("|O", ps.canary_payload(tmp_path / "canary"), header_bytes=200_000)
    assert data[6] == 2  # format 2.0: a four-byte header length
    findings = scan_one(tmp_path / "m", "array.npy", data)
    assert flagged_critical(findings), summary(findings)
    npz = ps.zip_of({"arr_0.npy": data})
    assert flagged_critical(scan_one(tmp_path / "z", "arrays.npz", npz))


def test_npy_header_over_the_parsing_limit_is_a_named_resource_limit(tmp_path: Path) -> None:
    data = ps.npy_with_descr("<f4", b"\x00" * 4, header_bytes=3 * 1024 * 1024)
    findings = scan_one(tmp_path, "array.npy", data)
    assert [(f.rule_id, f.severity) for f in findings] == [("static.pickle.resource-limit", Severity.HIGH)]
    assert "1048576-byte" in findings[0].message and "array.npy" in findings[0].message


def test_numeric_npy_files_still_pass(tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "plain.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    np.save(tmp_path / "structured.npy", np.zeros(3, dtype=[("a", "<f4"), ("b", "<i8", (2,))]))
    np.save(tmp_path / "subarray.npy", np.zeros(2, dtype=("<f8", (3,))))
    np.savez_compressed(tmp_path / "arrays.npz", a=np.ones(5), b=np.arange(3))
    assert scan_folder(tmp_path) == []


# --- item 6: joblib's compressed formats, by content ----------------------------------------------------

JOBLIB_COMPRESS = [("zlib", 3), ("gzip", 3), ("bz2", 3), ("lzma", 3), ("xz", 3), 3]


@pytest.mark.parametrize("name", ["model.dat", "model", "model.joblib"])
@pytest.mark.parametrize("compress", JOBLIB_COMPRESS, ids=str)
def test_compressed_joblib_is_opened_by_content(tmp_path: Path, compress: object, name: str) -> None:
    canary = tmp_path / "canary"
    data = ps.joblib_dump_bytes(ps.joblib_malicious(canary), compress, tmp_path)
    findings = scan_one(tmp_path / "m", name, data)
    assert flagged_critical(findings), summary(findings)
    assert not canary.exists()


def test_old_joblib_zfile_is_opened(tmp_path: Path) -> None:
    """joblib < 0.10 wrote ``ZF`` + a hex length, then zlib; joblib.load still reads it."""
    import zlib

    body = ps.os_system_payload()
    data = b"ZF" + hex(len(body)).encode().ljust(19) + zlib.compress(body)
    assert flagged_critical(scan_one(tmp_path, "model", data))


@pytest.mark.parametrize("compress", JOBLIB_COMPRESS, ids=str)
def test_compressed_joblib_of_numeric_arrays_passes(tmp_path: Path, compress: object) -> None:
    import numpy as np

    data = ps.joblib_dump_bytes({"w": np.arange(1000.0), "names": ["a", "b"]}, compress, tmp_path)
    assert scan_one(tmp_path / "m", "model.dat", data) == []


def test_binary_files_that_only_start_like_zlib_or_lzma_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "a.dat").write_bytes(b"x\x9c" + bytes(range(256)) * 8)
    (tmp_path / "b.dat").write_bytes(b"]\x00" + b"\xff" * 2048)
    (tmp_path / "c.dat").write_bytes(b"ZF0x10" + b"\xff" * 64)
    assert {e.content_type for e in inventory(tmp_path)} == {"binary"}
    assert scan_folder(tmp_path) == []


# --- item 7: zip members read the way torch reads them --------------------------------------------------

def test_torch_zip_with_bad_crc_reports_payload_and_tampering(tmp_path: Path) -> None:
    """CVE-2025-10156: zipfile refuses the member, torch.load ignores the CRC and runs the pickle."""
    zipped = ps._replace_zip_member(ps.torch_zip_bytes(), "archive/data.pkl", ps.exec_payload())
    data = ps.zip_with_bad_crc(zipped, "archive/data.pkl")
    with zipfile.ZipFile(io.BytesIO(data)) as zf, pytest.raises(zipfile.BadZipFile):
        zf.read("archive/data.pkl")
    findings = scan_one(tmp_path, "pytorch_model.bin", data)
    assert flagged_critical(findings), summary(findings)
    assert {"__builtin__.exec", "builtins.exec"} & {f.evidence.get("global") for f in findings}
    tampered = [f for f in findings if f.rule_id == "static.pickle.archive-tampered"]
    assert tampered and all(f.severity is Severity.HIGH for f in tampered)
    assert "CRC" in tampered[0].message and tampered[0].evidence["member"] == "archive/data.pkl"


def test_local_header_that_disagrees_with_central_directory_is_reported(tmp_path: Path) -> None:
    data = ps.zip_with_local_crc_mismatch(ps.torch_zip_bytes(), "archive/data.pkl")
    findings = scan_one(tmp_path, "pytorch_model.bin", data)
    assert [(f.rule_id, f.severity, f.evidence["fields"]) for f in findings] == [
        ("static.pickle.archive-tampered", Severity.HIGH, ["crc"])]


def test_real_torch_checkpoints_still_pass(tmp_path: Path) -> None:
    import torch

    state = {"w": torch.randn(64, 64), "b": torch.zeros(64), "step": 3}
    torch.save(state, tmp_path / "pytorch_model.bin")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert scan_folder(tmp_path) == []


# --- item 15: bounded memory whatever the archive ---------------------------------------------------------

def test_zip_bomb_scan_stays_under_512_mib_and_names_the_limit(tmp_path: Path) -> None:
    """A 600 MiB member (under the 1 GiB extraction cap) used to be read whole into memory, twice over."""
    bomb = ps.write_zip_bomb(tmp_path / "weights.zip", member_bytes=600 * 1024 * 1024)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        findings = scan_folder(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024 * 1024, f"peak {peak >> 20} MiB"
    limits = [f for f in findings if f.rule_id == "static.pickle.resource-limit"]
    assert limits and limits[0].severity is Severity.HIGH, summary(findings)
    assert limits[0].evidence["member"] == "model0.pkl" and "limit" in limits[0].message
    assert str(limits[0].evidence["limit_bytes"]) in limits[0].message


def test_extraction_budget_is_shared_by_members_and_nesting(tmp_path: Path) -> None:
    inner = ps.zip_of({f"m{i}.pkl": b"\x80\x04" + bytes(300_000) for i in range(4)})
    outer = ps.zip_of({"inner.zip": inner, "model.pkl": ps.os_system_payload()})
    findings = scan_one(tmp_path, "weights.zip", outer, limits=PickleLimits(max_total_bytes=1_000_000))
    assert any(f.rule_id == "static.pickle.resource-limit" for f in findings), summary(findings)


def test_truncated_compressed_stream_is_scanned_up_to_the_break(tmp_path: Path) -> None:
    """The unpickler runs what it decompressed before the reader fails: that part is checked, and the rest is
    reported as unchecked."""
    import gzip

    whole = gzip.compress(ps.os_system_payload() + ps.benign_dict_payload() * 200, mtime=0)
    findings = scan_one(tmp_path, "model.joblib", whole[: len(whole) // 2])
    assert flagged_critical(findings), summary(findings)
    assert any(f.rule_id == "static.pickle.scan-incomplete" for f in findings)


def test_bzip2_member_with_bad_crc_is_incomplete_not_a_crash(tmp_path: Path) -> None:
    """Members zipfile decompresses for us (bzip2, lzma) keep its CRC check: a failure is a named finding."""
    data = ps.zip_with_bad_crc(ps.zip_of({"model.pkl": ps.os_system_payload()}, compression=zipfile.ZIP_BZIP2),
                               "model.pkl")
    findings = scan_one(tmp_path, "weights.zip", data)
    assert {"static.pickle.scan-incomplete", "static.pickle.archive-tampered"} & {f.rule_id for f in findings}, \
        summary(findings)


def test_zip_member_with_an_empty_name_is_scanned_not_a_crash(tmp_path: Path) -> None:
    """Found by the zip fuzz test: ``ZipInfo.is_dir()`` raises IndexError on an empty member name, which made
    the whole pickle check fail for such an archive."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(""), ps.os_system_payload())
    findings = scan_one(tmp_path, "pytorch_model.bin", buf.getvalue())
    assert any(f.severity >= Severity.HIGH for f in findings), findings


def test_a_huge_literal_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Issue 17 item 15: a pickle member declaring one 900 MiB bytes literal (a few MB zipped) took the scan
    to 933 MiB, because the opcode reader materialises each literal. The read is refused above the cap (here
    lowered, with the engine's in-memory cap, so that only the member's spooled copy stays in memory)."""
    size = 32 * 1024 * 1024
    member = b"\x80\x04\x8e" + size.to_bytes(8, "little") + b"\x00" * size + b"."  # PROTO 4, BINBYTES8
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", member)
        zf.writestr("archive/version", "3\n")
    data = buf.getvalue()
    del member, buf
    limits = PickleLimits(max_literal_bytes=1024 * 1024, max_payload_bytes=16 * 1024 * 1024)
    tracemalloc.start()
    try:
        findings = scan_one(tmp_path, "pytorch_model.bin", data, limits=limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert any(f.rule_id == "static.pickle.resource-limit" and f.severity is Severity.HIGH for f in findings)
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes: the literal was read"
