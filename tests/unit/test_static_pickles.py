"""The pickle check: every malicious sample flagged, every benign checkpoint clean, bombs and junk bounded.

Samples are real files built by ``tests/pickle_samples.py`` (hand-assembled opcodes, ``pickle.dumps`` of
``__reduce__`` objects, real ``torch.save``/``np.save`` output); nothing is ever unpickled, which
``test_scan_never_unpickles`` enforces.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pickle_samples as ps  # noqa: E402

from modelaudit.findings import Finding, Severity  # noqa: E402
from modelaudit.registry import static_checks  # noqa: E402
from modelaudit.static.base import StaticContext, run_static_checks  # noqa: E402
from modelaudit.static.pickles import (  # noqa: E402
    CALL_CONST1,
    CALL_NEW,
    CALL_RULES,
    RULES,
    PickleLimits,
    analyse_stream,
    classify_global,
    iter_findings,
    parse_npy_header,
)
from modelaudit.target import inventory  # noqa: E402

MALICIOUS = [s.name for s in ps.SAMPLES if s.malicious]
BENIGN = [s.name for s in ps.SAMPLES if not s.malicious]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every sample written once (torch.save included), name -> file path."""
    return ps.write_samples(tmp_path_factory.mktemp("pickle-samples"))


def scan_folder(folder: Path, *, limits: PickleLimits | None = None) -> list[Finding]:
    ctx = StaticContext(root=folder, files=inventory(folder))
    return list(iter_findings(ctx, limits=limits) if limits else iter_findings(ctx))


def scan_bytes_as(tmp_path: Path, name: str, data: bytes, **kw: object) -> list[Finding]:
    (tmp_path / name).write_bytes(data)
    return scan_folder(tmp_path, **kw)  # type: ignore[arg-type]


def by_rule(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.rule_id, []).append(f)
    return out


def resolved_globals(findings: list[Finding]) -> set[str]:
    return {f.evidence["global"] for f in findings if "global" in f.evidence}


# --- the sample catalogue -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", MALICIOUS)
def test_every_malicious_sample_is_flagged_critical(samples: dict[str, Path], name: str) -> None:
    findings = scan_folder(samples[name].parent)
    assert any(f.severity is Severity.CRITICAL and f.rule_id in {"static.pickle.dangerous-call",
                                                                 "static.pickle.dangerous-global"}
               for f in findings), [(f.rule_id, f.severity.value, f.message) for f in findings]


@pytest.mark.parametrize("name", BENIGN)
def test_every_benign_sample_passes_without_low_findings(samples: dict[str, Path], name: str) -> None:
    findings = scan_folder(samples[name].parent)
    assert [f for f in findings if f.severity >= Severity.LOW] == []


def test_rules_are_declared_and_evidence_is_json(samples: dict[str, Path]) -> None:
    plugin = static_checks.get("static.pickle")
    assert set(plugin.rules) == set(RULES)
    for path in samples.values():
        for f in scan_folder(path.parent):
            assert f.rule_id in plugin.rules
            assert f.location.path == path.name
            json.dumps(f.evidence)


# --- indirect calls are resolved, not just listed ------------------------------------------------------

@pytest.mark.parametrize(("name", "resolved"), [
    ("importlib_getattr", "os.system"),
    ("builtins_exec_getattr", "builtins.exec"),
    ("inspect_getattr_static", "os.path.os.system"),
    ("operator_attrgetter", "os.path.os.system"),
    ("stack_global_obfuscated", "posix.system"),
    ("builtin_eval_py2", "__builtin__.eval"),
])
def test_indirect_calls_resolve_to_the_real_target(samples: dict[str, Path], name: str, resolved: str) -> None:
    findings = scan_folder(samples[name].parent)
    calls = {f.evidence["global"]: f for f in findings if f.rule_id == "static.pickle.dangerous-call"}
    assert resolved in calls, sorted(calls)
    assert calls[resolved].severity is Severity.CRITICAL
    assert "modelaudit" in calls[resolved].evidence["detected_by"]


def test_engine_rule_code_and_members_are_kept(samples: dict[str, Path]) -> None:
    torch_findings = scan_folder(samples["pytorch_zip_data_pkl"].parent)
    call = next(f for f in torch_findings if f.evidence.get("global") == "posix.system")
    assert call.evidence["engine_rule"] == "DANGEROUS_CALL"
    assert call.evidence["member"] == "archive/data.pkl"
    assert call.location.member is not None and call.location.member.startswith("archive/data.pkl@")
    nested = scan_folder(samples["nested_zip"].parent)
    assert {f.evidence.get("member") for f in nested} == {"inner.zip/payload/model.pkl"}
    npy = next(f for f in scan_folder(samples["npy_object_dtype"].parent) if f.rule_id.endswith("dangerous-call"))
    header_end = parse_npy_header(samples["npy_object_dtype"].read_bytes())
    assert header_end is not None and header_end[1] is True
    assert min(npy.evidence["positions"]) >= header_end[0]  # positions are offsets in the file, not the stream


def test_legacy_torch_stream_stops_before_raw_storages(samples: dict[str, Path]) -> None:
    with open(samples["benign_torch_legacy"], "rb") as fh:
        analysis = analyse_stream(fh)
    assert analysis.legacy_torch and analysis.pickles == 5
    assert analysis.end < samples["benign_torch_legacy"].stat().st_size  # raw storage bytes follow
    assert analysis.persistent_ids > 0 and analysis.error is None


def test_varied_benign_checkpoints_pass(tmp_path: Path) -> None:
    """Parameters, half/bf16/int/bool tensors, sparse tensors (torch.layout via copyreg), views, Size, dtype,
    device, sets and bytes, in both torch formats and in protocol 0/2 pickles: all without a finding."""
    import torch

    obj = {"p": torch.nn.Parameter(torch.randn(2, 2)), "h": torch.randn(3).half(), "bf": torch.randn(3).bfloat16(),
           "i": torch.arange(4), "b": torch.ones(2, dtype=torch.bool), "sparse": torch.eye(3).to_sparse(),
           "size": torch.Size([2, 3]), "dtype": torch.float16, "dev": torch.device("cpu"),
           "view": torch.arange(10)[2:5], "nested": {"a": [torch.zeros(1), (1, 2.0, "x", None, True)]},
           "set": {1, 2}, "bytes": b"\x00\x01"}
    obj["with_attr"] = torch.ones(2)
    obj["with_attr"].note = "tensor with an attribute: _rebuild_from_type_v2(..., torch.Tensor, ...)"
    torch.save(obj, tmp_path / "zip.pt")
    torch.save(obj, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    plain = {"set": {1, 2}, "frozen": frozenset([3]), "bytes": b"ab", "complex": 1j, "array": bytearray(b"x")}
    (tmp_path / "p2.pkl").write_bytes(pickle.dumps(plain, protocol=2))
    (tmp_path / "p0.pkl").write_bytes(pickle.dumps(plain, protocol=0))
    assert scan_folder(tmp_path) == []


# --- policy -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("module", "name", "verdict"), [
    ("torch._utils", "_rebuild_tensor_v2", "allow"),
    ("collections", "OrderedDict", "allow"),
    ("numpy._core.multiarray", "_reconstruct", "allow"),
    ("torch", "FloatStorage", "allow"),
    ("__builtin__", "eval", "deny"),
    ("copy_reg", "_reconstructor", "unknown"),
    ("builtins", "getattr", "deny"),
    ("posix", "system", "deny"),
    ("numpy.testing._private.utils", "runstring", "deny"),
    ("collections", "OrderedDict.__init__.__globals__", "deny"),
    ("torch", "__builtins__", "deny"),
    ("torch.serialization", "_get_layout", "allow"),
    ("torch.serialization", "load", "deny"),
    ("copyreg", "_reconstructor", "unknown"),
    ("torch.nn.modules.linear", "Linear", "unknown"),
    ("os system", "x", "unknown"),  # cannot be imported, so nothing runs
    ("jinja2.environment", "Template.render", "deny"),
    ("torch.fx.graph_module", "_forward_from_src", "deny"),
    ("torch", "fx.graph_module._forward_from_src", "deny"),  # the same function reached by a dotted name
    ("numpy", "testing._private.utils.runstring", "deny"),
])
def test_classify_global(module: str, name: str, verdict: str) -> None:
    assert classify_global(module, name) == verdict


def test_unknown_global_referenced_is_review_but_called_is_high(tmp_path: Path) -> None:
    """An unknown class only referenced needs review (medium); called while loading it runs its own code
    (``__init__``, ``__new__``), so it is high, never critical: nothing says it is malicious."""
    referenced = ps.glob("mylib.layers", "Norm")
    body = ps.call(ps.glob("__main__", "TinyNet"), ) + ps.call(ps.glob("mylib.layers", "Block"), ps.ustr("x"))
    findings = scan_bytes_as(tmp_path, "model.pkl", ps.program(ps.MARK + body + referenced + ps.TUPLE))
    assert {f.evidence["global"]: (f.rule_id, f.severity) for f in findings} == {
        "__main__.TinyNet": ("static.pickle.unknown-call", Severity.HIGH),
        "mylib.layers.Block": ("static.pickle.unknown-call", Severity.HIGH),
        "mylib.layers.Norm": ("static.pickle.unknown-global", Severity.MEDIUM)}


def test_persistent_ids_outside_torch_are_low(tmp_path: Path) -> None:
    findings = scan_bytes_as(tmp_path, "model.pkl", b"\x80\x02X\x03\x00\x00\x00key" + b"Q.")
    assert [(f.rule_id, f.severity) for f in findings] == [("static.pickle.persistent-id", Severity.LOW)]


# --- fail closed: malformed, unfinished, bombs --------------------------------------------------------

def test_truncated_malicious_pickle_is_malformed_and_still_critical(tmp_path: Path) -> None:
    rules = by_rule(scan_bytes_as(tmp_path, "model.pkl", ps.os_system_payload()[:-3]))
    assert rules["static.pickle.dangerous-call"][0].severity is Severity.CRITICAL
    assert rules["static.pickle.malformed"][0].severity is Severity.HIGH
    incomplete = rules["static.pickle.scan-incomplete"][0]
    assert incomplete.severity is Severity.HIGH and incomplete.evidence["engine_status"] != "complete"


def test_unresolvable_stack_global_is_malformed(tmp_path: Path) -> None:
    # STACK_GLOBAL on an int and a str: nothing can say which callable it is
    data = ps.program(b"K\x07" + ps.ustr("system") + ps.STACK_GLOBAL + ps.ustr("id") + ps.TUPLE1 + ps.REDUCE,
                      proto=ps.PROTO4)
    findings = scan_bytes_as(tmp_path, "model.pkl", data)
    malformed = [f for f in findings if f.rule_id == "static.pickle.malformed"]
    assert malformed and all(f.severity is Severity.HIGH for f in malformed)


def test_corrupt_zip_is_incomplete_not_passed(tmp_path: Path) -> None:
    findings = scan_bytes_as(tmp_path, "model.pt", b"PK\x03\x04" + b"\x00\xff" * 100)
    assert [(f.rule_id, f.severity) for f in findings] == [("static.pickle.scan-incomplete", Severity.HIGH)]


def test_zip_bomb_is_a_finding_not_an_oom(tmp_path: Path) -> None:
    bomb = ps.zip_of({"model.pkl": b"\x80\x04" + b"\x00" * (8 * 1024 * 1024)})
    assert len(bomb) < 64 * 1024
    findings = scan_bytes_as(tmp_path, "weights.zip", bomb, limits=PickleLimits(max_payload_bytes=1024 * 1024))
    assert [(f.rule_id, f.severity, f.evidence["member"]) for f in findings] == [
        ("static.pickle.resource-limit", Severity.HIGH, "model.pkl")]


def test_gzip_bomb_with_lying_name_is_bounded(tmp_path: Path) -> None:
    bomb = gzip.compress(b"\x80\x04" + b"N0" * (2 * 1024 * 1024), mtime=0)
    findings = scan_bytes_as(tmp_path, "model.pkl.gz", bomb, limits=PickleLimits(max_total_bytes=1024 * 1024))
    assert {f.rule_id for f in findings} == {"static.pickle.resource-limit"}


def test_nesting_depth_is_bounded_and_reported(tmp_path: Path) -> None:
    blob = ps.zip_of({"m.pkl": ps.os_system_payload()})
    for i in range(6):
        blob = ps.zip_of({f"level{i}.zip": blob})
    findings = scan_bytes_as(tmp_path, "deep.zip", blob, limits=PickleLimits(max_depth=3))
    assert [f.rule_id for f in findings] == ["static.pickle.resource-limit"]
    shallow = scan_folder(tmp_path, limits=PickleLimits(max_depth=8))
    assert any(f.rule_id == "static.pickle.dangerous-call" for f in shallow)


def test_trailing_junk_is_low_and_a_second_pickle_is_scanned(tmp_path: Path) -> None:
    junk = scan_bytes_as(tmp_path, "data.pkl", ps.benign_dict_payload() + b"JUNKJUNK")
    assert [(f.rule_id, f.severity) for f in junk] == [("static.pickle.trailing-data", Severity.LOW)]
    first = ps.benign_dict_payload()
    second = scan_bytes_as(tmp_path, "data.pkl", first + ps.os_system_payload())
    call = next(f for f in second if f.rule_id == "static.pickle.dangerous-call")
    assert len(first) + 2 in call.evidence["positions"]  # the GLOBAL right after the second PROTO


# --- containers and extensions ------------------------------------------------------------------------

def test_joblib_zlib_and_npz_object_members_are_opened(tmp_path: Path) -> None:
    import zlib

    assert any(f.rule_id == "static.pickle.dangerous-call"
               for f in scan_bytes_as(tmp_path, "model.joblib", zlib.compress(ps.subprocess_payload())))
    (tmp_path / "model.joblib").unlink()
    npz = ps.zip_of({"a.npy": ps.npy_object_bytes(ps.webbrowser_payload()), "b.npy": b"\x93NUMPY"})
    findings = scan_bytes_as(tmp_path, "arrays.npz", npz)
    assert {f.evidence.get("member") for f in findings if f.severity is Severity.CRITICAL} == {"a.npy"}


def test_files_that_cannot_be_unpickled_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.bin").write_text("hello, this is a text file named .bin\n")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe" + bytes(range(256)) * 4)  # 0xff is no opcode
    (tmp_path / "opcode_then_noise.pt").write_bytes(b"K\x01" + b"\xff" * 64)  # BININT1, then nothing runs
    (tmp_path / "readme.pt").write_text("cuda notes\nfoo bar\n(more text")  # GLOBAL-looking, not importable
    (tmp_path / "ggml-model.bin").write_bytes(b"lmgg" + bytes(5000))  # 'l' is an opcode; the rest is data
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert scan_folder(tmp_path, limits=PickleLimits(max_payload_bytes=1024)) == []


def test_truncated_protocol0_payload_in_a_text_file_is_still_caught(tmp_path: Path) -> None:
    """The unpickler runs os.system before it reaches the garbage that keeps the file from sniffing as pickle."""
    findings = scan_bytes_as(tmp_path, "model.pkl", b"cos\nsystem\n(S'id'\ntR" + b"garbage without stop")
    assert any(f.rule_id == "static.pickle.dangerous-call" and f.severity is Severity.CRITICAL for f in findings)


def test_torch_zip_storages_are_not_mistaken_for_pickles(tmp_path: Path) -> None:
    """A storage whose raw float bytes happen to start like a pickle is data torch.load never unpickles."""
    data = ps.torch_zip_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        storage = next(n for n in zf.namelist() if "/data/" in n and not n.endswith(".pkl"))
    doctored = ps._replace_zip_member(data, storage, b"\x80\x02" + b"\x00" * 30)
    assert scan_bytes_as(tmp_path, "pytorch_model.bin", doctored) == []


# --- integration with the runner ----------------------------------------------------------------------

def test_runner_runs_the_check_and_never_unpickles(samples: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the pickle check must never unpickle")

    import _pickle

    for module in (pickle, _pickle):
        for name in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(module, name, refuse)
    root = samples["nested_zip"].parents[1]  # every sample's folder under one root
    ctx = StaticContext(root=root, files=inventory(root))
    result = run_static_checks(ctx, only=["static.pickle"])
    assert result.errors == [] and result.coverage.checks_run == ["static.pickle"]
    flagged = {f.location.path.split("/")[0] for f in result.findings if f.severity >= Severity.HIGH}
    assert flagged == set(MALICIOUS)


# --- calls off the allow-list (issue 17 item 4) --------------------------------------------------------

@pytest.mark.parametrize(("payload", "worst"), [
    (ps.fx_forward_from_src_payload, Severity.CRITICAL),
    (ps.jinja2_render_payload, Severity.CRITICAL),
    (ps.unknown_callable_payload, Severity.HIGH),
])
@pytest.mark.parametrize("container", ["model.pkl", "pytorch_model.bin"])
def test_callables_that_run_code_fail_the_gate(tmp_path: Path, payload: Callable[[str], bytes], worst: Severity,
                                               container: str) -> None:
    """``_forward_from_src`` execs source, ``Template.render`` evaluates an SSTI template, an unknown helper
    may do anything: each is at least high (the default gate), raw and inside a torch.save zip."""
    canary = tmp_path / "canary"
    data = payload(str(canary))
    if container == "pytorch_model.bin":
        data = ps.in_torch_zip(data)
    findings = scan_bytes_as(tmp_path, container, data)
    assert max(f.severity for f in findings) is worst, [(f.rule_id, f.severity.value) for f in findings]
    if container == "pytorch_model.bin":
        assert all(f.evidence["member"].endswith("data.pkl") for f in findings)
    assert not canary.exists()


@pytest.mark.parametrize(("label", "body"), [
    ("enum with a computed argument", ps.call(ps.glob("transformers.trainer_utils", "IntervalStrategy"),
                                              ps.call(ps.glob("builtins", "str"), ps.ustr("steps")))),
    ("enum with two arguments", ps.call(ps.glob("transformers.trainer_utils", "IntervalStrategy"),
                                        ps.ustr("steps"), ps.ustr("x"))),
    ("dataclass called with arguments", ps.call(ps.glob("transformers.training_args", "TrainingArguments"),
                                                ps.ustr("/tmp/out"))),
    ("joblib wrapper called, not new", ps.call(ps.glob("joblib.numpy_pickle", "NumpyArrayWrapper"),
                                               ps.ustr("x"))),
    ("BUILD on an allowed class itself", ps.glob("collections", "OrderedDict") + ps.EMPTY_DICT + ps.BUILD),
    ("dataclass given slot state (setattr)", ps.glob("transformers.training_args", "TrainingArguments")
     + ps.EMPTY_TUPLE + ps.NEWOBJ + ps.MARK + b"N" + ps.EMPTY_DICT + ps.TUPLE + ps.BUILD),
])
def test_allowed_callables_only_in_their_exact_shape(tmp_path: Path, label: str, body: bytes) -> None:
    findings = scan_bytes_as(tmp_path, "model.pkl", ps.program(body))
    assert [(f.rule_id, f.severity) for f in findings if f.severity >= Severity.HIGH] == [
        ("static.pickle.unknown-call", Severity.HIGH)], label


def test_training_artefacts_pass(tmp_path: Path) -> None:
    """What a transformers Trainer writes beside a checkpoint, built for real and never loaded."""
    import random

    import numpy as np
    import torch
    from transformers import TrainingArguments, get_linear_schedule_with_warmup

    def save(name: str, obj: object) -> None:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        torch.save(obj, tmp_path / name)

    save("ckpt/training_args.bin", TrainingArguments(output_dir=str(tmp_path / "out")))
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    save("ckpt/optimizer.pt", opt.state_dict())
    sched = get_linear_schedule_with_warmup(opt, 10, 100)
    opt.step()
    sched.step()
    save("ckpt/scheduler.pt", sched.state_dict())
    save("ckpt/rng_state.pth", {"python": random.getstate(), "numpy": np.random.get_state(),
                                "cpu": torch.random.get_rng_state()})
    arrays = {"a": np.arange(5), "b": np.ones((2, 3), np.float32), "s": np.float64(2.5), "i": np.int64(3)}
    (tmp_path / "ckpt" / "stats.pkl").write_bytes(pickle.dumps(arrays))
    assert len(list((tmp_path / "ckpt").iterdir())) == 5
    assert [f for f in scan_folder(tmp_path) if f.severity >= Severity.LOW] == []  # INFO: RNG bytes like pickles


def test_call_rules_match_the_installed_classes() -> None:
    """Each entry of CALL_RULES is what its comment says: an Enum (const1), or a class whose creation and
    BUILD run none of its own code (new(): no ``__new__``, ``__setstate__`` or ``__setattr__``)."""
    import enum
    import importlib

    for ref, shapes in CALL_RULES.items():
        module, _, name = ref.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if shapes == {CALL_CONST1}:
            assert issubclass(cls, enum.Enum), ref
        else:
            assert shapes == {CALL_NEW}, ref
            own = {k for klass in cls.__mro__[:-1] for k in vars(klass)}
            assert own.isdisjoint({"__new__", "__setstate__", "__setattr__", "__reduce__"}), ref


# --- joblib's array layout (issue 17 item 18) ---------------------------------------------------------

@pytest.mark.parametrize("label", ["1-D", "2-D", "several in a dict", "float", "structured", "fortran", "empty"])
def test_joblib_numeric_arrays_pass(tmp_path: Path, label: str) -> None:
    import numpy as np

    value = {"1-D": np.arange(10), "2-D": np.arange(12.0).reshape(3, 4),
             "several in a dict": {"x": np.arange(3), "y": np.ones((2, 2), np.float32), "z": np.zeros(4, np.int8)},
             "float": np.float64(1.5) * np.ones(7), "structured": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
             "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)), "empty": np.zeros((0, 3))}[label]
    assert scan_bytes_as(tmp_path, "model.joblib", ps.joblib_bytes(value)) == []
    assert scan_bytes_as(tmp_path, "model.joblib", ps.joblib_unaligned_bytes(value)) == []


def test_joblib_object_array_and_code_after_an_array_are_caught(tmp_path: Path) -> None:
    """An object array is a nested pickle (it can carry code); a call after an array's raw bytes still runs."""
    import numpy as np

    canary = tmp_path / "canary"
    evil = ps._Reduce(ps.os.system, (f"touch {canary}",))
    for value in (np.array([evil, 1], dtype=object), [np.arange(100), evil], {"a": np.ones(9), "b": [evil]}):
        findings = scan_bytes_as(tmp_path, "model.joblib", ps.joblib_bytes(value))
        call = [f for f in findings if f.rule_id == "static.pickle.dangerous-call"]
        assert call and call[0].severity is Severity.CRITICAL, [(f.rule_id, f.message) for f in findings]
        assert {f.rule_id for f in findings} == {"static.pickle.dangerous-call"}
    benign_objects = ps.joblib_bytes(np.array(["a", 1, None], dtype=object))
    assert scan_bytes_as(tmp_path, "model.joblib", benign_objects) == []
    assert not canary.exists()


def test_joblib_layout_cannot_be_used_to_hide_code(tmp_path: Path) -> None:
    """The skip is sized from the wrapper's state: a lying shape, an unreadable state, or array bytes that
    plain ``pickle.load`` would run as opcodes are all findings."""
    import numpy as np

    payload = ps.os_system_payload()
    hidden = ps.joblib_unaligned_bytes(np.frombuffer(payload, dtype=np.uint8))  # pickle.load runs these bytes
    assert any(f.rule_id == "static.pickle.dangerous-call" for f in scan_bytes_as(tmp_path, "m.joblib", hidden))
    real = ps.joblib_bytes(np.arange(4, dtype=np.int64))
    lying = real.replace(b"K\x04\x85", b"K\x40\x85", 1)  # shape (4,) -> (64,): more bytes than the file has
    assert lying != real
    assert "static.pickle.malformed" in by_rule(scan_bytes_as(tmp_path, "m.joblib", lying))
    unreadable = real.replace(b"\x8c\x05order", b"\x8c\x05ORDER", 1)  # a key joblib.dump never writes
    assert unreadable != real
    rules = by_rule(scan_bytes_as(tmp_path, "m.joblib", unreadable))
    assert rules["static.pickle.malformed"][0].severity is Severity.HIGH


@pytest.mark.parametrize("trampoline", [("torch._tensor", "_rebuild_from_type_v2"),
                                        ("numpy.core.multiarray", "_reconstruct")])
def test_a_global_handed_to_an_allowed_callable_counts_as_called(tmp_path: Path,
                                                                 trampoline: tuple[str, str]) -> None:
    """``_rebuild_from_type_v2(func, type, args, state)`` calls ``func(*args)``; ``_reconstruct(cls, ...)``
    creates a ``cls``: an unknown global passed to them is invoked, not merely referenced."""
    target = ps.glob("mylib.tools", "run_script")
    body = ps.call(ps.glob(*trampoline), target, ps.glob("torch", "Tensor"),
                   ps.MARK + ps.ustr("touch x") + ps.TUPLE, ps.EMPTY_DICT)
    findings = scan_bytes_as(tmp_path, "model.pkl", ps.program(body))
    run = [f for f in findings if f.evidence.get("global") == "mylib.tools.run_script"]
    assert [(f.rule_id, f.severity) for f in run] == [("static.pickle.unknown-call", Severity.HIGH)]


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_rng_state_random_bytes_are_not_findings(tmp_path: Path, seed: int) -> None:
    """Trainer RNG state is random bytes; with these seeds some of them partly parse as a nested pickle
    (an EXT1 code, an unfinished base64 or raw pickle). A literal is never unpickled by loading: no finding."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               tmp_path / "rng_state.pth")
    assert [f for f in scan_folder(tmp_path) if f.severity >= Severity.LOW] == []


def test_a_pickle_inside_a_literal_is_still_judged(tmp_path: Path) -> None:
    """Whatever an application would run by unpickling a literal is still reported by its own rule."""
    findings = scan_bytes_as(tmp_path, "data.pkl", pickle.dumps({"blob": ps.os_system_payload()}))
    call = [f for f in findings if f.rule_id == "static.pickle.dangerous-call"]
    assert call and call[0].evidence["global"] == "posix.system" and call[0].severity is Severity.CRITICAL
    nested = [f for f in findings if f.rule_id == "static.pickle.nested-pickle"]
    assert nested and max(f.severity for f in nested) is Severity.MEDIUM


def test_a_chance_pickle_inside_saved_rng_state_is_not_a_finding(tmp_path: Path) -> None:
    """Seed 96's RNG states hold bytes that parse as a pickle, with a pickle inside that one (about 1 in 150
    seeds do): random data, not code, so nothing at or above LOW. Found as a flaky run of the test above."""
    import random

    import numpy as np
    import torch

    random.seed(96)
    np.random.seed(96)
    torch.manual_seed(96)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               tmp_path / "rng_state.pth")
    findings = scan_folder(tmp_path)
    assert any(f.rule_id == "static.pickle.nested-pickle" for f in findings)  # the chance pickle is still seen
    assert [f for f in findings if f.severity >= Severity.LOW] == []
