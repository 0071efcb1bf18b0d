"""Pickle check: find code execution in every pickle a model ships, in whatever container it hides.

Two detectors run on each pickle stream, and neither ever unpickles it:

* the ``modelaudit_picklescan`` engine (Rust opcode walker, fail-closed ``status``/``verdict``), whose rule
  codes we keep as evidence but whose verdict we re-judge with our own allow- and deny-lists, because its
  "review" findings fire on ordinary PyTorch checkpoints and its dangerous-call list is not ours to trust;
* our own opcode simulation (``pickletools.genops`` plus a tiny symbolic stack), which resolves indirect
  calls the engine only sees as opaque globals: ``getattr(importlib.import_module('os'), 'system')``,
  ``inspect.getattr_static(os.path, 'os')``, ``operator.attrgetter('os.system')``, STACK_GLOBAL operands
  fetched from the memo.

Policy: an allow-listed global passes; a denied one is critical; any other global is medium when only
referenced, but high (``unknown-call``) when loading *calls* it (REDUCE, NEWOBJ, INST/OBJ, handed to an
allow-listed callable that calls it, or BUILD on the global itself), unless ``CALL_RULES`` admits that exact call
shape (what ``training_args.bin`` needs). joblib files write raw array bytes into the middle of the pickle after
each ``NumpyArrayWrapper``; the simulation sizes and skips them from the wrapper's state, as ``joblib.load`` does.

Containers are walked by us (raw pickle, PyTorch zip, plain zip, tar, gzip/bz2/xz, joblib's zlib/lzma/``ZF``
streams, object-dtype ``.npy``, legacy ``torch.save`` streams) with bounded nesting depth, member count and
decompressed bytes, spooling members to temporary files, so an archive bomb becomes a finding instead of an
out-of-memory crash. Zip members are read the way torch reads them (CRC not enforced), and tampering is reported. When a stream cannot be analysed to the
end we say so with a finding (fail closed) rather than pass it.
"""

from __future__ import annotations

import ast
import bz2
import functools
import gzip
import io
import lzma
import math
import operator
import pickletools  # nosec B403 - opcode parsing only; nothing is ever unpickled
import re
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import _compat_pickle

from modelaudit.findings import FileEntry, Finding, Location, Severity
from modelaudit.static.base import StaticContext, static_check
from modelaudit.target import JOBLIB_ZFILE_HEADER, magic

if TYPE_CHECKING:
    from modelaudit_picklescan import PickleReport, PickleScanner

RULES = {
    "static.pickle.dangerous-call": "A pickle invokes a callable that can execute code (directly or via getattr)",
    "static.pickle.dangerous-global": "A pickle imports a module or attribute that gives code execution",
    "static.pickle.unknown-global": "A pickle references a global outside the allow-list; review before loading",
    "static.pickle.unknown-call": "A pickle calls a global outside the allow-list while loading, which can run code",
    "static.pickle.malformed": "A pickle stream is malformed or tampered (unparseable, forged STACK_GLOBAL)",
    "static.pickle.scan-incomplete": "A pickle could not be analysed to the end; it is not known to be safe",
    "static.pickle.resource-limit": "An archive or pickle exceeds size/nesting limits (zip bomb, pickle bomb)",
    "static.pickle.extension-ref": "A pickle uses copyreg extension codes that resolve through process state",
    "static.pickle.nested-pickle": "A pickle carries another pickle inside a string or bytes literal",
    "static.pickle.persistent-id": "A pickle outside a PyTorch checkpoint uses persistent ids",
    "static.pickle.suspicious-string": "A pickle string literal looks like code, a shell command or a URL",
    "static.pickle.trailing-data": "Bytes after the last pickle that are not a pickle (ignored by the unpickler)",
    "static.pickle.engine-finding": "Another finding of the pickle engine, kept with its rule code",
    "static.pickle.archive-tampered": "An archive member's CRC or local header disagrees with the central directory",
}

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
# Content types that are never unpickled by their loaders, whatever their extension says.
_NEVER_PICKLE = frozenset({"safetensors", "gguf", "json", "empty", "elf", "pe", "macho"})
_CONTAINER_TYPES = frozenset({"pickle", "pytorch-zip", "zip", "zip-corrupt", "gzip", "bz2", "xz", "lzma", "zlib",
                              "joblib-zfile", "tar", "numpy"})
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_MEMBER = re.compile(r"(^|/)data/\d+$")
_VALID_FIRST_BYTES = frozenset(op.code.encode("latin-1")[0] for op in pickletools.opcodes)
_HEAD = 512

# --- policy: what a pickle may reference ---------------------------------------------------------------

_TORCH_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
                   "ComplexFloat", "ComplexDouble", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4",
                   "Untyped")
_TORCH_DTYPES = ("float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long",
                 "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
                 "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64")
ALLOWED_GLOBALS: frozenset[str] = frozenset({
    # containers a state_dict is made of
    "collections.OrderedDict", "collections.defaultdict", "collections.Counter", "collections.deque",
    "builtins.set", "builtins.frozenset", "builtins.list", "builtins.dict", "builtins.tuple", "builtins.int",
    "builtins.float", "builtins.complex", "builtins.bool", "builtins.str", "builtins.bytes",
    "builtins.bytearray", "builtins.slice", "builtins.range",
    "_codecs.encode",  # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
    # tensors, parameters and storages as torch.save writes them
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_device_tensor_from_numpy", "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_qtensor", "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor", "torch._tensor._rebuild_from_type_v2",
    "torch._tensor._rebuild_from_type", "torch.serialization._get_layout",  # copyreg's reducer for torch.layout
    # the type torch.save hands _rebuild_from_type_v2 for a tensor with attributes: torch's own class, used for
    # as_subclass and a __dict__ update
    "torch.Tensor", "torch._tensor.Tensor",
    "torch.Size", "torch.device", "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
    "torch.nn.parameter.Parameter", "torch.contiguous_format", "torch.channels_last", "torch.preserve_format",
    "torch.strided", "torch.sparse_coo",
    *(f"torch.{kind}Storage" for kind in _TORCH_STORAGES),
    *(f"torch.{dtype}" for dtype in _TORCH_DTYPES),
    # numpy arrays, dtypes and scalars as pickle.dumps(ndarray) writes them
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
})
_ALLOWED_PATTERNS = (re.compile(r"numpy\.dtypes\.[A-Za-z0-9]+DType"),)

# Globals outside ALLOWED_GLOBALS that ordinary training artefacts *call* while loading, each allowed only in
# the exact call shape that runs none of its own code (anything else it does is an ``unknown-call``):
#
# * ``enum(value)``: the Enum classes ``TrainingArguments`` stores (transformers' and accelerate's own
#   ``str, Enum`` types). ``EnumType.__call__`` with one constant looks the value up among the members; their
#   ``_missing_`` only raises. Shape ``const1``.
# * ``new()``: plain classes ``torch.save(TrainingArguments)`` writes as ``cls.__new__(cls)`` (NEWOBJ, no
#   arguments) followed by BUILD with a dict. None defines ``__new__``, ``__setstate__`` or ``__setattr__``
#   (``test_call_rules_match_the_installed_classes`` checks), so loading is ``object.__new__`` plus a
#   ``__dict__`` update: none of the class's code runs. joblib's ``NumpyArrayWrapper`` is one too; its BUILD
#   additionally makes joblib read raw array bytes, which the simulation follows (``_joblib_layout``).
CALL_CONST1 = "const1"
CALL_NEW = "new()"
_TRANSFORMERS_ENUMS = (
    "transformers.trainer_utils.IntervalStrategy", "transformers.trainer_utils.SaveStrategy",
    "transformers.trainer_utils.SchedulerType", "transformers.trainer_utils.HubStrategy",
    "transformers.trainer_utils.FSDPOption", "transformers.trainer_utils.HPSearchBackend",
    "transformers.training_args.OptimizerNames", "transformers.training_args.ParallelMode",
    "transformers.debug_utils.DebugOption",
    "accelerate.utils.dataclasses.DistributedType", "accelerate.utils.dataclasses.ComputeEnvironment",
    "accelerate.utils.dataclasses.DynamoBackend", "accelerate.utils.dataclasses.PrecisionType",
    "accelerate.utils.dataclasses.RNGType", "accelerate.utils.dataclasses.LoggerType",
)
_PLAIN_CLASSES = (
    "transformers.training_args.TrainingArguments", "transformers.training_args_seq2seq.Seq2SeqTrainingArguments",
    "transformers.trainer_pt_utils.AcceleratorConfig", "accelerate.state.PartialState",
)
JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
CALL_RULES: dict[str, frozenset[str]] = {
    **{ref: frozenset({CALL_CONST1}) for ref in _TRANSFORMERS_ENUMS},
    **{ref: frozenset({CALL_NEW}) for ref in (*_PLAIN_CLASSES, JOBLIB_WRAPPER)},
}

# Any global from these modules (or their submodules) gives code execution, process, file or network access.
DENIED_MODULES: frozenset[str] = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "_winapi", "pty", "commands",
    "popen2", "sys", "importlib", "imp", "pkgutil", "zipimport", "runpy", "code", "codeop", "pydoc",
    "webbrowser", "inspect", "ctypes", "_ctypes", "cffi", "multiprocessing", "_multiprocessing", "threading",
    "_thread", "asyncio", "signal", "socket", "_socket", "ssl", "shutil", "pickle", "_pickle", "cPickle",
    "pickletools", "marshal", "types", "timeit", "cProfile", "profile", "pdb", "bdb", "trace", "doctest",
    "platform", "urllib", "urllib2", "http", "httplib", "ftplib", "smtplib", "telnetlib", "requests",
    "ensurepip", "pip", "setuptools", "distutils", "venv", "site", "operator", "_operator", "dill",
    "cloudpickle", "numpy.testing", "numpy.f2py", "numpy.distutils", "torch.hub", "torch.package",
    "torch.serialization", "torch._C", "torch.jit", "torch.utils.cpp_extension", "tempfile", "io", "_io",
    "linecache", "logging.config", "sqlite3",
    "torch.fx",  # GraphModule pickles exec their generated source (_forward_from_src, reduce_graph_module)
    "jinja2",  # a Template compiles its source to Python and render() evaluates it (template injection)
})
_DENIED_BUILTINS = frozenset({
    "eval", "exec", "execfile", "compile", "__import__", "open", "file", "getattr", "setattr", "delattr",
    "globals", "locals", "vars", "input", "raw_input", "breakpoint", "help", "exit", "quit", "apply", "reload",
})
_DENIED_EXACT = frozenset({"torch.load", "torch.save", "numpy.load", "numpy.save", "numpy.fromfile",
                           "numpy.memmap", "joblib.load", "functools.reduce"})
# Attribute names that mean code execution wherever they are reached from (getattr chains, dotted names).
DANGEROUS_ATTRS: frozenset[str] = frozenset({
    "system", "popen", "popen2", "popen3", "popen4", "exec", "eval", "execfile", "compile", "__import__",
    "import_module", "spawn", "spawnl", "spawnle", "spawnlp", "spawnv", "spawnve", "spawnvp", "execl", "execle",
    "execlp", "execv", "execve", "execvp", "fork", "forkpty", "call", "check_call", "check_output", "run",
    "Popen", "getoutput", "getstatusoutput", "run_path", "run_module", "_run_code", "runstring", "pipepager",
    "getattr_static", "attrgetter", "methodcaller", "load", "loads", "__globals__", "__builtins__",
    "__subclasses__", "__getattribute__", "__code__", "__reduce__", "__reduce_ex__", "__setstate__",
    "__class__", "__base__", "__bases__", "__mro__", "__dict__", "__func__", "__self__", "__closure__",
    "__loader__", "modules", "remove", "unlink", "rmtree", "kill",
})
# Callables whose result is an object named by their string arguments: followed to resolve indirect calls.
_GETATTR_LIKE = frozenset({"builtins.getattr", "inspect.getattr_static"})
_IMPORT_LIKE = frozenset({"importlib.import_module", "builtins.__import__", "importlib.__import__"})


_IMPORTABLE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def normalise_global(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names the way the unpickler's ``fix_imports`` does (``__builtin__`` -> ``builtins``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def classify_global(module: str, name: str) -> str:
    """``deny``, ``allow`` or ``unknown`` for ``module.name`` under our policy (after Python 2 mapping)."""
    module, name = normalise_global(module, name)
    ref = f"{module}.{name}" if name else module
    parts = name.split(".") if name else []
    if not _IMPORTABLE.fullmatch(module) and module != "<object>":
        return "unknown"  # no import can succeed: the unpickler raises before anything runs
    if ref in ALLOWED_GLOBALS or any(p.fullmatch(ref) for p in _ALLOWED_PATTERNS):
        return "allow"
    # on the whole dotted path: ``torch`` + ``fx.graph_module._forward_from_src`` reaches torch.fx all the same
    if ref in _DENIED_EXACT or any(ref == m or ref.startswith(m + ".") for m in DENIED_MODULES):
        return "deny"
    if module == "builtins" and parts and parts[0] in _DENIED_BUILTINS:
        return "deny"
    if module == "<object>":  # getattr(<something we could not follow>, name)
        return "deny" if parts and parts[-1] in DANGEROUS_ATTRS else "unknown"
    if any(p.startswith("__") and p.endswith("__") for p in parts) or any(p in DANGEROUS_ATTRS for p in parts[1:]):
        return "deny"  # traversal in a dotted name: OrderedDict.__init__.__globals__, torch.__builtins__
    return "unknown"


def judge_use(use: GlobalUse) -> str:
    """How a pickle's use of one global is rated: ``deny`` (code execution), ``allow``, ``call`` (a global off
    the allow-list that loading invokes: it can run code, high) or ``unknown`` (only referenced: review).

    A global called only in a shape its ``CALL_RULES`` entry admits is allowed. BUILD on a global itself is a
    call even for allow-listed ones: no pickler writes it, and it runs ``__setstate__`` or overwrites
    attributes of the class or function.
    """
    verdict = classify_global(use.module, use.name)
    if verdict == "deny":
        return "deny"
    if not _IMPORTABLE.fullmatch(use.module):
        return verdict  # no import can succeed: the unpickler raises before anything runs
    if use.built:
        return "call"
    if verdict == "allow" or not use.called:
        return verdict
    module, name = normalise_global(use.module, use.name)
    allowed_shapes = CALL_RULES.get(f"{module}.{name}")
    return "allow" if allowed_shapes is not None and use.call_shapes <= allowed_shapes else "call"


# --- limits --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PickleLimits:
    """Bounds that keep a hostile file from exhausting memory or time; exceeding one is a finding."""

    max_depth: int = 4
    """Containers inside containers (zip in zip in gzip ...) followed below the file itself."""
    max_payload_bytes: int = 192 * 1024 * 1024
    """Largest pickle stream held in memory (the engine needs it whole); with the simulation's transient copies
    this keeps a scan's peak memory under 512 MiB."""
    max_literal_bytes: int = 64 * 1024 * 1024
    """Largest single string or bytes literal the simulation reads (genops materialises each one): a 900 MiB
    literal in a 3 MB zip member would otherwise be held whole in memory."""
    max_member_bytes: int = 1024 * 1024 * 1024
    """Largest archive member or decompressed stream extracted for analysis (into a temporary file past a few
    MiB, never into memory)."""
    max_total_bytes: int = 2 * 1024 * 1024 * 1024
    """Decompressed/extracted bytes read from one file's containers, all members together."""
    max_members: int = 10_000
    """Archive members looked at per archive."""
    max_opcodes: int = 5_000_000
    """Opcodes our own simulation follows per stream (the engine has its own budget of the same size)."""
    max_pickles_per_stream: int = 64
    """Concatenated pickles followed in one stream (legacy torch.save writes five)."""
    engine_timeout_s: float = 300.0
    """Wall clock the engine may spend on one stream."""


DEFAULT_LIMITS = PickleLimits()


# --- our own opcode simulation -------------------------------------------------------------------------

class _Mark:
    """The MARK sentinel on the simulated stack."""


_MARK = _Mark()
_OTHER = object()  # any value we do not model


@dataclass(frozen=True)
class _Ref:
    """A simulated value that is a known object: a global, a module, or an attribute resolved from them."""

    module: str
    name: str
    via: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module

    def attr(self, attr: str, via: str) -> _Ref:
        return _Ref(self.module, f"{self.name}.{attr}" if self.name else attr, via)


class _Dict:
    """A simulated dict, keeping up to ``_DICT_KEYS`` string keys (enough for a joblib wrapper's state)."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.complete = True
        """False once a key was not kept (not a str, or over the limit): ``items`` is then not the whole dict."""

    def set(self, key: Any, value: Any) -> None:
        if isinstance(key, str) and (key in self.items or len(self.items) < _DICT_KEYS):
            self.items[key] = value
        else:
            self.complete = False


_DICT_KEYS = 64


class _Call:
    """The result of invoking a known global: what was called, how, and the state a later BUILD gave it."""

    def __init__(self, func: _Ref, args: Any, shape: str) -> None:
        self.func = func
        self.args = args
        self.shape = shape
        self.state: Any = _OTHER


_CONST_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"})
_CONST_VALUES = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _is_const(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float))


def _call_shape(args: Any, *, new: bool, kwargs: Any = None) -> str:
    """``CALL_NEW`` for ``cls.__new__(cls)``, ``CALL_CONST1`` for ``f(constant)``, else ``"other"``."""
    if not isinstance(args, tuple):
        return "other"
    if new:
        no_kwargs = kwargs is None or (isinstance(kwargs, _Dict) and kwargs.complete and not kwargs.items)
        return CALL_NEW if args == () and no_kwargs else "other"
    return CALL_CONST1 if len(args) == 1 and _is_const(args[0]) else "other"


@dataclass(frozen=True)
class _AttrGetter:
    """The result of ``operator.attrgetter('a.b')``: calling it on X resolves ``X.a.b``."""

    path: str


@dataclass
class GlobalUse:
    """One distinct global (or resolved attribute) a stream reaches, and whether it is invoked."""

    module: str
    """Module as written (before Python 2 name mapping)."""
    name: str
    """Qualified name inside the module; empty for a bare module."""
    positions: list[int] = field(default_factory=list)
    """Byte offsets of the opcodes that reference or invoke it."""
    called: bool = False
    """True when REDUCE/NEWOBJ/INST/OBJ invokes it (or BUILD sets state on the global itself)."""
    call_shapes: set[str] = field(default_factory=set)
    """How it is invoked: ``CALL_CONST1``, ``CALL_NEW``, ``"other"`` (matched against ``CALL_RULES``)."""
    built: bool = False
    """BUILD was applied to the global itself (not to an instance): its ``__setstate__`` runs or its attributes
    are overwritten."""
    via: str | None = None
    """For resolved references: the indirection that produced it (``builtins.getattr``, ``sys.modules``...)."""

    @property
    def ref(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module


@dataclass
class StreamAnalysis:
    """What our own opcode simulation learned from one byte stream of concatenated pickles."""

    globals: dict[str, GlobalUse] = field(default_factory=dict)
    """Distinct references by dotted name."""
    pickles: int = 0
    """Complete pickles (ending in STOP) parsed from the start of the stream."""
    end: int = 0
    """Offset just past the last complete pickle."""
    legacy_torch: bool = False
    """The stream starts with legacy ``torch.save``'s magic-number pickle; raw storages follow the pickles."""
    persistent_ids: int = 0
    """PERSID/BINPERSID opcodes (PyTorch's storage references)."""
    extension_codes: list[int] = field(default_factory=list)
    """EXT1/2/4 codes used."""
    unresolved_stack_globals: list[int] = field(default_factory=list)
    """Positions of STACK_GLOBALs whose operands are not string literals we could follow."""
    error: str | None = None
    """Why parsing stopped before the end of the stream, if it did."""
    error_position: int | None = None
    """Offset of that error."""
    junk_tail: int = 0
    """Bytes after the last complete pickle that do not parse as one and reference nothing; the unpickler
    never reads them, so they are reported as odd, not as a tampered stream."""
    literal_over_limit: int | None = None
    """Size of a literal that was over ``max_literal_bytes``: the analysis stopped there (not read to the end)."""
    literal_limit: int = 0
    """The ``max_literal_bytes`` in force when that happened."""
    truncated: bool = False
    """The opcode budget ran out."""
    regions: list[tuple[int, int, str]] = field(default_factory=list)
    """(start, end, kind) of joblib array payloads inside the stream: ``raw`` array bytes (with their padding)
    that joblib's unpickler reads as data, or an object array's own ``pickle``."""
    joblib_unread: list[int] = field(default_factory=list)
    """Positions of BUILDs of a joblib array wrapper whose layout could not be read: joblib would read array
    bytes there that we parsed as opcodes."""


class _Simulator:
    """Symbolic stack machine over ``pickletools.genops``: it tracks only strings, globals and tuples."""

    def __init__(self, analysis: StreamAnalysis, base: int, *, joblib: bool = True) -> None:
        self.a = analysis
        self.base = base
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.joblib = joblib
        """Follow joblib's layout (array bytes after a wrapper's BUILD); off inside an object array's pickle,
        which joblib reads with the plain unpickler."""
        self.pending: _JoblibArray | None = None
        """Set by BUILD of a joblib array wrapper: what joblib reads from the stream right after it."""

    def use(self, ref: _Ref, pos: int, *, called: bool = False, shape: str | None = None,
            built: bool = False) -> None:
        key = ref.ref
        use = self.a.globals.get(key)
        if use is None:
            use = self.a.globals[key] = GlobalUse(ref.module, ref.name, via=ref.via)
        if len(use.positions) < 32:
            use.positions.append(self.base + pos)
        use.called = use.called or called or built
        use.built = use.built or built
        if shape is not None:
            use.call_shapes.add(shape)

    def pop(self) -> Any:
        if not self.stack:
            raise ValueError("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        raise ValueError("MARK expected but not on the stack")

    def call(self, func: Any, args: Any, pos: int, *, new: bool = False, kwargs: Any = None) -> Any:
        """Record an invocation and return the symbolic result (resolving getattr/import/attrgetter).

        ``new`` marks NEWOBJ/NEWOBJ_EX, which call ``cls.__new__(cls, *args, **kwargs)``.
        """
        items = args if isinstance(args, tuple) else ()
        if isinstance(func, _AttrGetter):
            if items and isinstance(items[0], _Ref):
                resolved = items[0]
                for part in func.path.split("."):
                    resolved = resolved.attr(part, "operator.attrgetter")
                self.use(resolved, pos)
                return resolved
            return _OTHER
        if not isinstance(func, _Ref):
            return _OTHER
        shape = _call_shape(args, new=new, kwargs=kwargs)
        self.use(func, pos, called=True, shape=shape)
        module, name = normalise_global(func.module, func.name)
        ref = f"{module}.{name}"
        if ref in _GETATTR_LIKE and len(items) >= 2 and isinstance(items[1], str):
            base = items[0] if isinstance(items[0], _Ref) else _Ref("<object>", "")
            resolved = base.attr(items[1], ref)
            self.use(resolved, pos)
            return resolved
        if ref in _IMPORT_LIKE and items and isinstance(items[0], str):
            resolved = _Ref(items[0], "", ref)
            self.use(resolved, pos)
            return resolved
        if ref == "operator.attrgetter" and items and isinstance(items[0], str):
            return _AttrGetter(items[0])
        if ref in {"operator.getitem", "_operator.getitem"} and len(items) >= 2 and isinstance(items[1], str) \
                and isinstance(items[0], _Ref) and items[0].ref == "sys.modules":
            resolved = _Ref(items[1], "", "sys.modules")
            self.use(resolved, pos)
            return resolved
        for item in items:
            if isinstance(item, _Ref):  # allow-listed trampolines call their arguments: torch's
                self.use(item, pos, called=True, shape="other")  # _rebuild_from_type_v2(func, ...), _reconstruct
        return _Call(func, args, shape)

    def build(self, pos: int) -> None:
        """BUILD: ``obj.__setstate__(state)``, or a ``__dict__`` update plus ``setattr`` for slot state.

        On an instance this runs code of the class that made it, and that construction was already judged as a
        call (``CALL_NEW`` classes have no ``__setstate__``; state other than a dict goes through ``setattr`` and
        so spoils that shape). On a global itself (a class, function or module object, never what a pickler writes) it runs that
        global's ``__setstate__`` or overwrites its attributes: recorded as invoking it.
        """
        state = self.pop()
        if not self.stack:
            raise ValueError("BUILD on an empty stack")
        target = self.stack[-1]
        if isinstance(target, _Ref):
            self.use(target, pos, built=True)
        elif isinstance(target, _Call):
            target.state = state
            if not isinstance(state, _Dict):  # slot state: setattr, which reaches property setters
                self.use(target.func, pos, called=True, shape="other")
            if self.joblib and target.shape == CALL_NEW and \
                    ".".join(normalise_global(target.func.module, target.func.name)) == JOBLIB_WRAPPER:
                self.pending = _joblib_layout(target)
                if self.pending is None:
                    self.a.joblib_unread.append(self.base + pos)

    def step(self, op: pickletools.OpcodeInfo, arg: Any, pos: int) -> None:  # noqa: C901 - one opcode table
        name = op.name
        if name in {"GLOBAL", "INST"}:
            module, _, qual = str(arg).partition(" ")
            ref = _Ref(module, qual)
            self.use(ref, pos)
            if name == "INST":
                self.call(ref, tuple(self.pop_mark()), pos)
                self.stack.append(_OTHER)
            else:
                self.stack.append(ref)
        elif name == "STACK_GLOBAL":
            qual, module = self.pop(), self.pop()
            if isinstance(module, str) and isinstance(qual, str):
                ref = _Ref(module, qual)
                self.use(ref, pos)
                self.stack.append(ref)
            else:
                self.a.unresolved_stack_globals.append(self.base + pos)
                self.stack.append(_OTHER)
        elif name in {"REDUCE", "NEWOBJ"}:
            args = self.pop()
            self.stack.append(self.call(self.pop(), args, pos, new=name == "NEWOBJ"))
        elif name == "NEWOBJ_EX":
            kwargs = self.pop()
            args = self.pop()
            self.stack.append(self.call(self.pop(), args, pos, new=True, kwargs=kwargs))
        elif name == "BUILD":
            self.build(pos)
        elif name in _CONST_OPS:
            self.stack.append(arg)
        elif name in _CONST_VALUES:
            self.stack.append(_CONST_VALUES[name])
        elif name == "EMPTY_DICT":
            self.stack.append(_Dict())
        elif name == "DICT":
            items = self.pop_mark()
            built = _Dict()
            for key, value in zip(items[::2], items[1::2]):
                built.set(key, value)
            self.stack.append(built)
        elif name in {"SETITEM", "SETITEMS"}:
            items = [self.pop(), self.pop()][::-1] if name == "SETITEM" else self.pop_mark()
            if not self.stack:
                raise ValueError(f"{name} on an empty stack")
            target = self.stack[-1]
            if isinstance(target, _Dict):
                for key, value in zip(items[::2], items[1::2]):
                    target.set(key, value)
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise ValueError("OBJ without a class")
            self.stack.append(self.call(items[0], tuple(items[1:]), pos))
        elif name in {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
                      "SHORT_BINSTRING"}:
            self.stack.append(arg if isinstance(arg, str) else str(arg))
        elif name in {"PUT", "BINPUT", "LONG_BINPUT"}:
            if not self.stack:
                raise ValueError("PUT on an empty stack")
            self.memo[int(arg)] = self.stack[-1]
        elif name == "MEMOIZE":
            if not self.stack:
                raise ValueError("MEMOIZE on an empty stack")
            self.memo[len(self.memo)] = self.stack[-1]
        elif name in {"GET", "BINGET", "LONG_BINGET"}:
            if int(arg) not in self.memo:
                raise ValueError(f"memo key {arg} read before it was written")
            self.stack.append(self.memo[int(arg)])
        elif name == "MARK":
            self.stack.append(_MARK)
        elif name == "TUPLE":
            self.stack.append(tuple(self.pop_mark()))
        elif name in {"TUPLE1", "TUPLE2", "TUPLE3"}:
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            self.stack.append(tuple(items))
        elif name == "EMPTY_TUPLE":
            self.stack.append(())
        elif name in {"PERSID", "BINPERSID"}:
            self.a.persistent_ids += 1
            if name == "BINPERSID":
                self.pop()
            self.stack.append(_OTHER)
        elif name in {"EXT1", "EXT2", "EXT4"}:
            self.a.extension_codes.append(int(arg))
            self.stack.append(_OTHER)
        elif name == "DUP":
            if not self.stack:
                raise ValueError("DUP on an empty stack")
            self.stack.append(self.stack[-1])
        else:
            self.generic(op)

    def generic(self, op: pickletools.OpcodeInfo) -> None:
        """Apply an opcode's documented stack effect, keeping the object that survives (BUILD, SETITEMS...)."""
        before, after = op.stack_before, op.stack_after
        popped: list[Any] = []
        if pickletools.markobject in before:
            self.pop_mark()
            popped = [self.pop() for _ in range(before.index(pickletools.markobject))][::-1]
        else:
            popped = [self.pop() for _ in range(len(before))][::-1]
        for i in range(len(after)):
            keep = i < len(popped) and after[i] is before[i] and i == 0
            self.stack.append(popped[0] if keep else _OTHER)


# --- joblib's layout: array bytes written into the middle of the pickle ----------------------------------

@dataclass(frozen=True)
class _JoblibArray:
    """What ``joblib.load`` reads from the stream right after BUILD of a ``NumpyArrayWrapper``."""

    nbytes: int
    """Raw array bytes (shape product times item size)."""
    padded: bool
    """A padding-length byte and that many padding bytes come first (``numpy_array_alignment_bytes`` set)."""
    object_dtype: bool
    """The array holds Python objects: a whole nested pickle follows instead of raw bytes."""


_JOBLIB_STATE_KEYS = frozenset({"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"})
_JOBLIB_REQUIRED_KEYS = frozenset({"subclass", "shape", "order", "dtype"})
_DTYPE_ITEMSIZE = re.compile(r"[?bBiufcmMO](\d+)")  # numpy's reduce names fixed-size types 'f8', 'b1', 'M8'...
_NPY_ITEM_REFCOUNT = 0x01  # dtype flag: items hold Python object references (also set for structured ones)


def _qualname(ref: _Ref) -> str:
    return ".".join(normalise_global(ref.module, ref.name))


def _dtype_layout(value: Any) -> tuple[int, bool] | None:
    """(item size, holds objects) of a simulated ``numpy.dtype(typestr, ...)`` with its BUILD state, the way
    ``ndarray.dtype.__reduce__`` writes it; None when it is not exactly that."""
    if not isinstance(value, _Call) or _qualname(value.func) != "numpy.dtype":
        return None
    args, state = value.args, value.state
    if not (isinstance(args, tuple) and args and isinstance(args[0], str)):
        return None
    if not (isinstance(state, tuple) and len(state) >= 8 and type(state[5]) is int and type(state[7]) is int):
        return None
    has_object = args[0].startswith("O") or bool(state[7] & _NPY_ITEM_REFCOUNT)
    if state[5] > 0:  # flexible and structured types carry their size
        return state[5], has_object
    match = _DTYPE_ITEMSIZE.fullmatch(args[0])
    return (int(match.group(1)), has_object) if match and int(match.group(1)) > 0 else None


def _joblib_layout(wrapper: _Call) -> _JoblibArray | None:
    """The array payload a ``NumpyArrayWrapper`` announces, from its state (subclass, shape, order, dtype,
    alignment) as ``joblib.dump`` writes it; None when the state is anything else."""
    state = wrapper.state
    if not isinstance(state, _Dict) or not state.complete:
        return None
    items = state.items
    if not _JOBLIB_REQUIRED_KEYS <= items.keys() <= _JOBLIB_STATE_KEYS:
        return None
    subclass, shape, alignment = items["subclass"], items["shape"], items.get("numpy_array_alignment_bytes")
    if not (isinstance(subclass, _Ref) and _qualname(subclass) == "numpy.ndarray"):
        return None  # another subclass makes joblib call it (numpy's _reconstruct)
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        return None
    if items["order"] not in ("C", "F") or not (alignment is None or type(alignment) is int):
        return None
    dtype = _dtype_layout(items["dtype"])
    if dtype is None:
        return None
    itemsize, has_object = dtype
    if has_object:
        return _JoblibArray(0, padded=False, object_dtype=True)
    return _JoblibArray(math.prod(shape) * itemsize, padded=alignment is not None, object_dtype=False)


class _OutOfOpcodes(Exception):
    """The opcode budget of one stream is spent."""


class _Budget:
    """Opcodes left to simulate in one stream, shared by its pickles, nested pickles and shadow reads."""

    def __init__(self, left: int) -> None:
        self.left = left

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _OutOfOpcodes


def _run_pickle(stream: BinaryIO, sim: _Simulator, budget: _Budget,
                first_ops: list[tuple[str, Any]] | None = None) -> None:
    """Step ``sim`` through one pickle up to its STOP, following joblib array payloads on the way.

    Raises:
        _OutOfOpcodes: the budget ran out.
        Exception: whatever a malformed stream makes ``genops`` or the simulation raise.
    """
    for op, arg, pos in pickletools.genops(stream):  # genops reads on from wherever the stream now is
        budget.spend()
        if first_ops is not None and len(first_ops) < 4:
            first_ops.append((op.name, arg))
        sim.step(op, arg, cast(int, pos))  # genops on a seekable stream always has a position
        if sim.pending is not None:
            layout, sim.pending = sim.pending, None
            _follow_joblib_array(stream, sim, layout, budget)


def _follow_joblib_array(stream: BinaryIO, sim: _Simulator, layout: _JoblibArray, budget: _Budget) -> None:
    """Move past the array payload exactly as ``NumpyArrayWrapper.read_array`` does, and record its region.

    An object array is a nested pickle read by the plain unpickler: simulated like any pickle. Raw bytes are
    skipped, but first read as ``pickle.load`` would read them (it knows nothing of joblib).
    """
    here = stream.tell()
    if layout.object_dtype:
        _run_pickle(stream, _Simulator(sim.a, sim.base, joblib=False), budget)
        sim.a.regions.append((here + sim.base, stream.tell() + sim.base, "pickle"))
        return
    _shadow_plain_load(stream, sim, budget)
    stream.seek(here)
    skip = 0
    if layout.padded:
        pad = stream.read(1)
        if not pad:
            raise ValueError("joblib array padding byte missing at the end of the stream")
        skip = 1 + pad[0]
    end = here + skip + layout.nbytes
    size = stream.seek(0, io.SEEK_END)
    if size < end:
        raise ValueError(f"joblib array of {layout.nbytes} bytes runs past the end of the stream")
    stream.seek(end)
    sim.a.regions.append((here + sim.base, end + sim.base, "raw"))


def _shadow_plain_load(stream: BinaryIO, sim: _Simulator, budget: _Budget) -> None:
    """Record the dangerous globals ``pickle.load`` (not joblib) would reach by running array bytes as opcodes.

    joblib writes a padding-length byte that is no opcode, so for its own files this stops at once; a crafted
    file could hide a payload there. The shadow starts from a copy of the stack and memo (mutable values
    replaced, so it cannot alter the real simulation); its parse errors end it quietly, as they end the load.
    """
    here = stream.tell()
    head = stream.read(1)
    stream.seek(here)
    if not head or head[0] not in _VALID_FIRST_BYTES:
        return  # pickle.load raises on this byte before running anything
    shadow_a = StreamAnalysis()
    shadow = _Simulator(shadow_a, sim.base, joblib=False)
    shadow.stack = [_OTHER if isinstance(v, (_Dict, _Call)) else v for v in sim.stack]
    shadow.memo = {k: _OTHER if isinstance(v, (_Dict, _Call)) else v for k, v in sim.memo.items()}
    try:
        _run_pickle(stream, shadow, budget)
    except _OutOfOpcodes:
        raise
    except Exception:  # noqa: BLE001, S110 - the plain load fails here too; what ran before is recorded
        pass
    for key, use in shadow_a.globals.items():
        if judge_use(use) in {"deny", "call"}:
            kept = sim.a.globals.setdefault(key, use)
            kept.called, kept.built = kept.called or use.called, kept.built or use.built
            kept.call_shapes |= use.call_shapes


class _LiteralTooLarge(Exception):
    """A single read asked for more bytes than ``max_literal_bytes`` (a string or bytes literal)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"a literal of {size} bytes")
        self.size = size


class _BoundedReads:
    """The stream as genops sees it, refusing any one read above a cap before a byte is read, so no literal a
    file declares is ever materialised beyond it."""

    def __init__(self, stream: BinaryIO, cap: int) -> None:
        self._stream, self._cap = stream, cap

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._cap:
            raise _LiteralTooLarge(n if n is not None and n >= 0 else -1)
        return self._stream.read(n)

    def readline(self, limit: int = -1) -> bytes:
        return self._stream.readline(self._cap if limit < 0 else min(limit, self._cap))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def analyse_stream(stream: BinaryIO, *, limits: PickleLimits = DEFAULT_LIMITS) -> StreamAnalysis:
    """Simulate every pickle concatenated at the start of ``stream`` without executing anything.

    Stops at the end of data, after the fifth pickle of a legacy ``torch.save`` file (raw storages follow),
    at the first opcode that does not parse, or when the opcode budget is spent.
    """
    analysis = StreamAnalysis()
    budget = _Budget(limits.max_opcodes)
    stream = cast(BinaryIO, _BoundedReads(stream, limits.max_literal_bytes))
    start = stream.tell()
    while analysis.pickles < limits.max_pickles_per_stream:
        here = stream.tell()
        if not stream.read(1):
            break
        stream.seek(here)
        sim = _Simulator(analysis, -start)  # genops reports absolute stream offsets
        first_ops: list[tuple[str, Any]] = []
        seen = (len(analysis.globals), len(analysis.unresolved_stack_globals), len(analysis.extension_codes),
                analysis.persistent_ids)
        try:
            _run_pickle(stream, sim, budget, first_ops)
        except _OutOfOpcodes:
            analysis.truncated = True
            return analysis
        except _LiteralTooLarge as exc:
            analysis.literal_over_limit, analysis.literal_limit = exc.size, limits.max_literal_bytes
            analysis.error_position = stream.tell() - start
            return analysis
        except Exception as exc:  # noqa: BLE001 - any parse failure is a finding, never a crash
            now = (len(analysis.globals), len(analysis.unresolved_stack_globals), len(analysis.extension_codes),
                   analysis.persistent_ids)
            if analysis.pickles and now == seen:
                stream.seek(0, io.SEEK_END)
                analysis.junk_tail = stream.tell() - start - analysis.end
            else:
                analysis.error = f"{type(exc).__name__}: {exc}"
                analysis.error_position = stream.tell() - start
            return analysis
        analysis.pickles += 1
        analysis.end = stream.tell() - start
        if analysis.pickles == 1 and any(n in {"LONG1", "LONG4", "LONG"} and arg == _TORCH_LEGACY_MAGIC
                                         for n, arg in first_ops):
            analysis.legacy_torch = True
        if analysis.legacy_torch and analysis.pickles == 5:
            break
        rest = stream.read(_HEAD)
        stream.seek(start + analysis.end)
        if not rest.strip(b" \t\r\n\x00"):
            break
    return analysis


# --- payload scanning ----------------------------------------------------------------------------------

@dataclass
class Payload:
    """One pickle stream found in a file, with where it sits."""

    data: bytes
    """The stream's bytes (from its first opcode on)."""
    member: str | None
    """Member path inside the file's containers, ``/``-joined across nesting; None for the file itself."""
    offset: int = 0
    """Offset of ``data`` inside that member (e.g. after an ``.npy`` header)."""
    torch_context: bool = False
    """A ``data.pkl`` of a PyTorch zip: persistent ids are its storage references, not a concern."""
    required: bool = True
    """The container says this is a pickle; if False it was only guessed from bytes and may be data."""


# Rules about one global share a key, so the engine's and our view of ``os.system`` merge into one finding
# that takes the gravest of the rules (an invocation outranks a mere reference, which outranks "unknown").
_GLOBAL_RULES = ("static.pickle.unknown-global", "static.pickle.unknown-call", "static.pickle.dangerous-global",
                 "static.pickle.dangerous-call")


class _Findings:
    """Collects findings for one file, merging duplicates (same rule family, member and subject)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._by_key: dict[tuple[str, str | None, str], Finding] = {}

    def add(self, rule: str, severity: Severity, message: str, *, member: str | None, subject: str,
            position: int | None = None, source: str = "modelaudit", confidence: float = 1.0,
            **evidence: Any) -> None:
        """Record a finding; ``position`` is a byte offset inside ``member`` (or the file when None)."""
        key = ("global" if rule in _GLOBAL_RULES else rule, member, subject)
        existing = self._by_key.get(key)
        if existing is None:
            where = f"{member}@{position}" if member and position is not None else (
                member or (f"@{position}" if position is not None else None))
            ev: dict[str, Any] = {"detected_by": [source], "positions": [position] if position is not None else []}
            ev.update({k: v for k, v in evidence.items() if v is not None})
            if member is not None:
                ev["member"] = member
            self._by_key[key] = Finding(rule, severity, message, confidence=confidence,
                                        location=Location(path=self.path, member=where), evidence=ev)
            return
        ev = existing.evidence
        if source not in ev["detected_by"]:
            ev["detected_by"].append(source)
        if position is not None and position not in ev["positions"] and len(ev["positions"]) < 32:
            ev["positions"].append(position)
        for k, v in evidence.items():
            if v is not None and k not in ev:
                ev[k] = v
        if _rank(rule, severity) > _rank(existing.rule_id, existing.severity):
            existing.rule_id, existing.severity, existing.message = rule, severity, message
            existing.confidence = max(existing.confidence, confidence)

    def findings(self) -> list[Finding]:
        return list(self._by_key.values())


def _rank(rule: str, severity: Severity) -> tuple[int, int]:
    return severity.rank, _GLOBAL_RULES.index(rule) if rule in _GLOBAL_RULES else 0


def _engine(limits: PickleLimits) -> PickleScanner:
    # imported here: the engine scans every installed distribution when imported (0.25 s and more), which
    # every scan would pay on the way to the registry; only a file that may be a pickle needs it
    from modelaudit_picklescan import PickleScanner, ScanOptions

    return PickleScanner(ScanOptions(timeout_s=limits.engine_timeout_s, max_opcodes=limits.max_opcodes,
                                     max_known_stream_read_bytes=limits.max_payload_bytes))


def _looks_like_pickle(a: StreamAnalysis) -> bool:
    """For bytes nobody claimed were a pickle: at least one complete pickle, or a dangerous import the unpickler
    would run before choking on what follows (a truncated protocol-0 payload). Garbage that merely parses for a
    few opcodes, as text starting with ``c`` does, is not reported."""
    return a.pickles > 0 or any(classify_global(g.module, g.name) == "deny" for g in a.globals.values())


def scan_payload(payload: Payload, out: _Findings, *, limits: PickleLimits = DEFAULT_LIMITS,
                 analysis: StreamAnalysis | None = None) -> None:
    """Run both detectors on one pickle stream and add the policy's findings to ``out``.

    ``analysis`` is our simulation of the same stream when the caller already ran it (on the file on disk).
    """
    if analysis is None:
        analysis = analyse_stream(io.BytesIO(payload.data), limits=limits)
    if not payload.required and not _looks_like_pickle(analysis):
        return  # guessed from bytes, and not a pickle after all
    _report_own(analysis, payload, out)
    engine = _engine(limits)
    source = payload.member or out.path
    # The unpickler stops at the last STOP (a legacy torch file's raw storages, or junk, follow): the engine
    # judges completeness on the pickles alone, and looks at the whole blob only for findings. joblib's array
    # payloads are cut out of what it sees (they are data to joblib); an object array's pickle is its own scan.
    stops_early = analysis.legacy_torch or bool(analysis.junk_tail)
    if analysis.junk_tail:
        whole, whole_map = _without_regions(payload.data, analysis.regions)
        _report_engine(engine.scan_bytes(whole, source=source, enrich_call_graph=False), payload, analysis, out,
                       judge_status=False, pos_map=whole_map)
    judged, judged_map = _without_regions(payload.data[: analysis.end] if stops_early else payload.data,
                                          analysis.regions)
    report = engine.scan_bytes(judged, source=source, enrich_call_graph=False)
    _report_engine(report, payload, analysis, out, pos_map=judged_map)
    for start, end, kind in analysis.regions:
        if kind == "pickle":
            nested = engine.scan_bytes(payload.data[start:end], source=source, enrich_call_graph=False)
            _report_engine(nested, payload, analysis, out, pos_map=functools.partial(operator.add, start))


def _without_regions(data: bytes, regions: list[tuple[int, int, str]]) -> tuple[bytes, Callable[[int], int]]:
    """``data`` with the joblib array payloads (inside it) cut out: the opcodes joblib's unpickler runs, as one
    pickle. Also returns the map from offsets in the result back to offsets in ``data``."""
    inside = sorted(r for r in regions if r[1] <= len(data))
    if not inside:
        return data, lambda pos: pos
    parts: list[bytes] = []
    cuts: list[tuple[int, int]] = []  # (offset in the result where bytes were cut, how many)
    last = removed = 0
    for start, end, _kind in inside:
        parts.append(data[last:start])
        cuts.append((start - removed, end - start))
        removed += end - start
        last = end
    parts.append(data[last:])

    def to_original(pos: int) -> int:
        return pos + sum(length for at, length in cuts if pos >= at)

    return b"".join(parts), to_original


def _global_evidence(use: GlobalUse) -> dict[str, Any]:
    """The evidence of a finding about one global the pickle imports."""
    return {"global": use.ref, "via": use.via, "called": use.called}


def _global_ref_evidence(global_ref: str | None) -> dict[str, Any]:
    return {"global": global_ref} if global_ref else {}


def _report_own(a: StreamAnalysis, p: Payload, out: _Findings) -> None:
    """Findings from our own simulation."""
    for use in a.globals.values():
        verdict = judge_use(use)
        if verdict == "allow":
            continue
        pos = use.positions[0] + p.offset if use.positions else None
        how = f" via {use.via}" if use.via else ""
        if verdict == "deny":
            rule = "static.pickle.dangerous-call" if use.called else "static.pickle.dangerous-global"
            verb = "invokes" if use.called else "references"
            out.add(rule, Severity.CRITICAL, f"pickle {verb} {use.ref}{how}, which can execute code when loaded",
                    member=p.member, subject=use.ref, position=pos, **_global_evidence(use))
        elif use.via is not None:
            continue  # an unknown value reached through getattr/import: the indirection is reported
        elif verdict == "call":
            what = (f"sets state on {use.ref} itself (BUILD on a class or function), which runs its __setstate__ "
                    "or overwrites its attributes" if use.built else f"calls {use.ref} while loading")
            out.add("static.pickle.unknown-call", Severity.HIGH,
                    f"pickle {what}; it is not on the allow-list of callables, so loading it can run code",
                    member=p.member, subject=use.ref, position=pos, confidence=0.8, **_global_evidence(use))
        else:
            verb = "invokes" if use.called else "references"
            out.add("static.pickle.unknown-global", Severity.MEDIUM,
                    f"pickle {verb} {use.ref}{how}, which is not on the allow-list; review it before loading",
                    member=p.member, subject=use.ref, position=pos, confidence=0.6, **_global_evidence(use))
    for pos in a.joblib_unread:
        out.add("static.pickle.malformed", Severity.HIGH,
                "a joblib array wrapper's state is not what joblib.dump writes, so where joblib.load reads its array "
                "bytes (and what it runs after them) cannot be followed; the rest of the stream is unchecked",
                member=p.member, subject="joblib-wrapper", position=pos + p.offset)
    for pos in a.unresolved_stack_globals:
        out.add("static.pickle.malformed", Severity.HIGH,
                "STACK_GLOBAL takes operands that are not string literals; the callable cannot be resolved",
                member=p.member, subject="stack-global", position=pos + p.offset)
    if a.extension_codes:
        out.add("static.pickle.extension-ref", Severity.HIGH,
                f"pickle uses copyreg extension codes {sorted(set(a.extension_codes))[:8]}, which load whatever "
                "the loading process registered", member=p.member, subject="ext", codes=sorted(set(a.extension_codes)))
    if a.persistent_ids and not (p.torch_context or a.legacy_torch):
        out.add("static.pickle.persistent-id", Severity.LOW,
                f"pickle uses {a.persistent_ids} persistent id(s) outside a PyTorch checkpoint; the loader's "
                "persistent_load decides what they become", member=p.member, subject="persid",
                count=a.persistent_ids)
    if a.error is not None:
        out.add("static.pickle.malformed", Severity.HIGH,
                f"pickle stream does not parse ({a.error}); the unpickler would run every opcode before this point",
                member=p.member, subject="parse", position=(a.error_position or 0) + p.offset, error=a.error,
                complete_pickles=a.pickles)
    if a.junk_tail and not a.legacy_torch:
        out.add("static.pickle.trailing-data", Severity.LOW,
                f"{a.junk_tail} bytes after the last pickle are not a pickle; the unpickler ignores them, but it is an "
                "odd place for data", member=p.member, subject="tail", position=a.end + p.offset,
                trailing_bytes=a.junk_tail)
    if a.truncated:
        out.add("static.pickle.resource-limit", Severity.HIGH,
                "pickle has more opcodes than the analysis budget; the rest was not checked",
                member=p.member, subject="opcodes")
    if a.literal_over_limit is not None:
        out.add("static.pickle.resource-limit", Severity.HIGH,
                f"pickle declares a literal of {a.literal_over_limit} bytes, over the "
                f"{a.literal_limit} byte limit on one literal; the rest was not checked",
                member=p.member, subject="literal", position=(a.error_position or 0) + p.offset,
                literal_bytes=a.literal_over_limit)


_ENGINE_POS = re.compile(r"\(pos (\d+)\)\s*$")
_ENGINE_RULES = {
    "DANGEROUS_CALL": "static.pickle.dangerous-call",
    "DANGEROUS_GLOBAL": "static.pickle.dangerous-global",
    "POST_BUDGET_GLOBAL": "static.pickle.dangerous-global",
    "NON_ALLOWLISTED_GLOBAL": "static.pickle.unknown-global",
    "S203": "static.pickle.unknown-global",
    "MALFORMED_STACK_GLOBAL": "static.pickle.malformed",
    "STRUCTURAL_TAMPER": "static.pickle.malformed",
    "PICKLE_EXPANSION": "static.pickle.resource-limit",
    "EXTENSION_REF": "static.pickle.extension-ref",
    "S213": "static.pickle.nested-pickle",
    "S601": "static.pickle.nested-pickle",
    "S602": "static.pickle.nested-pickle",
    "PERSISTENT_ID": "static.pickle.persistent-id",
    "SUSPICIOUS_STRING": "static.pickle.suspicious-string",
}
# Engine codes that describe the same fact as one of our own findings, so the two merge.
_SINGLE_SUBJECT = {"PERSISTENT_ID": "persid", "EXTENSION_REF": "ext", "MALFORMED_STACK_GLOBAL": "stack-global"}
_RULE_SEVERITY = {
    "static.pickle.dangerous-call": Severity.CRITICAL,
    "static.pickle.dangerous-global": Severity.CRITICAL,
    "static.pickle.unknown-global": Severity.MEDIUM,
    "static.pickle.unknown-call": Severity.HIGH,
    "static.pickle.malformed": Severity.HIGH,
    "static.pickle.resource-limit": Severity.HIGH,
    "static.pickle.extension-ref": Severity.HIGH,
    "static.pickle.persistent-id": Severity.LOW,
    "static.pickle.suspicious-string": Severity.LOW,
}


_NESTED_SUMMARIES = frozenset({"S213", "S601", "S602"})


def _nested_severity(code: str, details: dict[str, Any], location: str) -> Severity | None:
    """Severity of an engine finding about a string or bytes literal that looks like a pickle; None if it is not.

    Loading never unpickles a literal: only what would run if an application did matters. Globals inside keep
    their own rules (the caller grades them); a literal holding a whole pickle with calls needs review (medium);
    bytes that only partly parse as one, or parse as one without any call (random data: RNG states, hashes,
    weights — about 1 in 150 saved RNG states holds such a chance pickle), and the engine's remarks on such
    fragments are INFO.
    """
    if code in _NESTED_SUMMARIES:
        inner = details.get("nested_details") or details  # a pickle found inside a nested one: judge the inner
        data_only = inner.get("analysis_incomplete") or inner.get("nested_has_execution_opcode") is False
        return Severity.INFO if data_only else Severity.MEDIUM
    if "nested_encoding" in details or "(nested " in location:
        return Severity.INFO
    return None


def _only_literals_unfinished(report: PickleReport, a: StreamAnalysis) -> bool:
    """The engine stopped short only inside pickle-looking literals, while the stream itself parsed to its end
    in our simulation: the stream is analysed, so its status is not a reason to call the file unchecked."""
    codes = [str(n.to_dict().get("code", "")) for n in report.notices]
    return (not report.errors and a.error is None and not a.truncated and "nested_pickle_incomplete" in codes
            and all(c.startswith("nested_") for c in codes))


def _report_engine(report: PickleReport, p: Payload, a: StreamAnalysis, out: _Findings, *,
                   judge_status: bool = True, pos_map: Callable[[int], int] = lambda pos: pos) -> None:
    """Re-judge the engine's findings with our policy; an unfinished engine scan is itself a finding.

    ``pos_map`` turns offsets in the bytes the engine saw into offsets in the payload.
    """
    permitted = {ref for ref, use in a.globals.items() if judge_use(use) == "allow"}
    for f in report.findings:
        code = f.rule_code or "UNKNOWN"
        details = dict(f.details)
        module, name = str(details.get("module") or ""), str(details.get("name") or "")
        m = _ENGINE_POS.search(f.location or "")
        pos = pos_map(int(m.group(1))) + p.offset if m else None
        rule = _ENGINE_RULES.get(code, "static.pickle.engine-finding")
        global_ref: str | None = None
        if module and code in {"NON_ALLOWLISTED_GLOBAL", "S203", "DANGEROUS_GLOBAL", "DANGEROUS_CALL",
                               "POST_BUDGET_GLOBAL"}:
            verdict = classify_global(module, name)
            permitted_here = verdict == "allow" or (f"{module}.{name}" if name else module) in permitted
            if permitted_here and code in {"NON_ALLOWLISTED_GLOBAL", "S203"}:
                continue  # ours says an ordinary checkpoint needs it (or calls it only in an allowed shape)
            if verdict == "deny" and rule == "static.pickle.unknown-global":
                rule = "static.pickle.dangerous-global"
            if module == "__main__" and verdict == "unknown":
                rule = "static.pickle.unknown-global"  # the loading script's own class: needs review, not code
            subject = global_ref = f"{module}.{name}" if name else module
            if subject.endswith(".__call__"):  # the engine's name for calling the result of a call
                subject = global_ref = subject[: -len(".__call__")]
                rule = "static.pickle.dangerous-call"
        else:
            subject = _SINGLE_SUBJECT.get(code, f"{code}:{f.message}")
        nested = _nested_severity(code, details, f.location or "") if global_ref is None else None
        if nested is not None:
            rule = "static.pickle.nested-pickle"
        if rule == "static.pickle.persistent-id" and (p.torch_context or a.legacy_torch):
            continue
        severity = nested or _RULE_SEVERITY.get(rule)
        if severity is None:  # nested pickles and codes we do not know: follow the engine's own severity
            severity = Severity.CRITICAL if f.severity.value == "critical" else Severity.MEDIUM
        out.add(rule, severity, f"{f.message} [engine {code}]", member=p.member, subject=subject, position=pos,
                source="picklescan-engine", engine_rule=code, engine_location=f.location,
                **_global_ref_evidence(global_ref))
    from modelaudit_picklescan import ScanStatus

    if judge_status and report.status != ScanStatus.COMPLETE and not _only_literals_unfinished(report, a):
        reasons = [e.message for e in report.errors][:3] or [n.message for n in report.notices][:3]
        out.add("static.pickle.scan-incomplete", Severity.HIGH,
                f"the pickle engine could not finish ({report.status.value}): "
                f"{'; '.join(reasons) or 'no reason given'}; the stream is not known to be safe",
                member=p.member, subject="engine", source="picklescan-engine", engine_status=report.status.value,
                engine_verdict=report.verdict.value, engine_errors=[e.to_dict()["category"] for e in report.errors])


# --- containers ----------------------------------------------------------------------------------------

_COMPRESSED = frozenset({"gzip", "bz2", "xz", "lzma", "zlib", "joblib-zfile"})
_NESTED = _COMPRESSED | {"zip", "tar"}
_WALKED = _NESTED | {"pickle"}
"""Kinds of ``target.magic`` that the walk opens (besides npy)."""
_CHUNK = 1 << 20
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
"""Extracted members up to this size stay in memory; larger ones are spooled to a temporary file."""
_NPY_MAX_HEADER = 1024 * 1024
"""Longest ``.npy`` header parsed (numpy's own default is 10 000 bytes, lifted by ``allow_pickle=True``)."""
_NPY_PREAMBLE = 12
_ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_ZIP_DATA_DESCRIPTOR = 0x08
_ZIP_ENCRYPTED = 0x01
_ZIP_UTF8 = 0x800
_ZIP64_SIZE = 0xFFFFFFFF

# What zipfile raises on hostile archives: unsupported versions/methods, encryption, bad CRCs, lying sizes.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError)
_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, ValueError, zlib.error, zipfile.BadZipFile)


class LimitExceeded(ValueError):
    """A bound of the walk was hit; the message names the limit."""


def _kind(head: bytes) -> str | None:
    """Container or pickle kind by content (``target.magic``); None when nothing here says it holds a pickle."""
    kind = magic(head)
    if kind == "numpy":
        return "npy"
    return kind if kind in _WALKED else None


def _may_hold_pickle(head: bytes) -> bool:
    """False when no loader can unpickle these bytes: no known container, and the first byte is no opcode
    (``pickle.load`` raises on it before doing anything)."""
    return _kind(head) is not None or bool(head[:1] and head[0] in _VALID_FIRST_BYTES)


class _ZipMemberReader:
    """A stored or deflated zip member read from its local header the way ``torch.load``'s reader does: the CRC
    is computed, not enforced (torch ignores it, so a bad CRC must not hide a payload), and no more than the
    central directory's size is produced."""

    def __init__(self, fh: BinaryIO, data_start: int, info: zipfile.ZipInfo) -> None:
        self._fh = fh
        self._pos = data_start
        self._raw_left = info.compress_size
        self._out_left = info.file_size
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
        self.crc = 0
        self.complete = False

    def _raw(self, n: int) -> bytes:
        self._fh.seek(self._pos)
        data = self._fh.read(min(n, self._raw_left))
        self._pos += len(data)
        self._raw_left = self._raw_left - len(data) if data else 0
        return data

    def read(self, n: int = -1) -> bytes:
        n = self._out_left if n is None or n < 0 else min(n, self._out_left)
        out = bytearray()
        while len(out) < n:
            if self._inflate is None:
                data = self._raw(n - len(out))
            else:
                if self._inflate.eof:
                    break
                raw = self._inflate.unconsumed_tail or self._raw(1 << 16)
                data = self._inflate.decompress(raw, n - len(out)) if raw else self._inflate.flush()
                if not raw and not data:
                    break
            if not data:
                break
            out += data
        self._out_left -= len(out)
        self.crc = zlib.crc32(out, self.crc)
        if not out and n:
            self.complete = self._out_left == 0
        elif self._out_left == 0:
            self.complete = True
        return bytes(out)

    def __enter__(self) -> _ZipMemberReader:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _ZlibReader:
    """Streaming reader over one raw zlib stream (joblib's ``compress=("zlib", n)``), bounded like gzip's."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self._d = zlib.decompressobj()

    def read(self, n: int = -1) -> bytes:
        n = (1 << 62) if n is None or n < 0 else n
        out = bytearray()
        while len(out) < n and not self._d.eof:
            data = self._d.unconsumed_tail or self._f.read(1 << 16)
            if not data:
                out += self._d.flush()
                break
            out += self._d.decompress(data, n - len(out))
        return bytes(out)

    def __enter__(self) -> _ZlibReader:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _zfile_reader(fileobj: BinaryIO) -> _ZlibReader:
    """joblib < 0.10's ``ZF`` file: a fixed-size length header, then one zlib stream."""
    fileobj.seek(JOBLIB_ZFILE_HEADER, io.SEEK_CUR)
    return _ZlibReader(fileobj)


_OPENERS: dict[str, Callable[[BinaryIO], Any]] = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f), "bz2": bz2.BZ2File, "xz": lzma.LZMAFile,
    "lzma": lambda f: lzma.LZMAFile(f, format=lzma.FORMAT_ALONE), "zlib": _ZlibReader, "joblib-zfile": _zfile_reader}


class _Walker:
    """Walks one file's containers down to its pickle streams, within ``PickleLimits``.

    Members are streamed into spool files (memory up to ``_SPOOL_IN_MEMORY``, then disk), so no archive can make
    the scan hold more than ``max_payload_bytes`` of one pickle in memory.
    """

    def __init__(self, entry: FileEntry, out: _Findings, limits: PickleLimits) -> None:
        self.entry = entry
        self.out = out
        self.limits = limits
        self.budget = limits.max_total_bytes

    # -- helpers
    def limit(self, member: str | None, message: str, **evidence: Any) -> None:
        self.out.add("static.pickle.resource-limit", Severity.HIGH, message, member=member,
                     subject=f"limit:{message[:40]}", **evidence)

    def incomplete(self, member: str | None, message: str, **evidence: Any) -> None:
        self.out.add("static.pickle.scan-incomplete", Severity.HIGH, message, member=member,
                     subject=f"walk:{message[:60]}", **evidence)

    def tampered(self, member: str, message: str, **evidence: Any) -> None:
        self.out.add("static.pickle.archive-tampered", Severity.HIGH, message, member=member,
                     subject=f"zip:{message[:40]}", **evidence)

    def read_head(self, stream: Any, member: str) -> tuple[bytes, bool]:
        """The first bytes of a (decompressing) stream, as many as it gives before an error, and whether it broke
        off (reported here: the part before the break is still checked, since the unpickler runs it)."""
        read = getattr(stream, "read1", stream.read)
        head = b""
        try:
            while len(head) < _HEAD and (chunk := read(_HEAD - len(head))):
                head += chunk
        except _DECOMPRESS_ERRORS as exc:
            self.incomplete(member, f"{member} cannot be decompressed to the end ({type(exc).__name__}: {exc}); "
                            f"only its first {len(head)} bytes were checked", checked_bytes=len(head))
            return head, True
        return head, False

    def spool(self, head: bytes, stream: Any, member: str,
              *, declared: int | None = None) -> IO[bytes] | None:
        """Copy a (decompressing) stream into a spool file, or report a bomb and return None when it is too big.

        A stream that breaks off half-way is still returned with what it gave: the unpickler runs every opcode
        before the point where its reader fails.
        """
        cap = min(self.limits.max_member_bytes, self.budget)
        if declared is not None and declared > cap:
            self.limit(member, f"{member} declares {declared} bytes, over the {cap}-byte extraction limit; "
                       "it was not checked", declared_bytes=declared, limit_bytes=cap)
            return None
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - returned open
        spool.write(head)
        total = len(head)
        try:
            while chunk := stream.read(min(_CHUNK, cap + 1 - total)):
                spool.write(chunk)
                total += len(chunk)
                if total > cap:
                    spool.close()
                    self.limit(member, f"{member} extracts to more than {cap} bytes (archive bomb?), over the "
                               "extraction limit; it was not checked", limit_bytes=cap)
                    return None
        except _DECOMPRESS_ERRORS as exc:
            self.incomplete(member, f"{member} cannot be decompressed to the end ({type(exc).__name__}: {exc}); "
                            f"only its first {total} bytes were checked", checked_bytes=total)
        self.budget -= total
        spool.seek(0)
        return spool

    @staticmethod
    def join(parent: str | None, name: str) -> str:
        return f"{parent}/{name}" if parent else name

    # -- dispatch
    def visit(self, fh: IO[bytes], size: int, member: str | None, depth: int, *, name_hint: str,
              required: bool, torch_context: bool = False) -> None:
        """Scan one seekable blob (the file, or a spooled member): a nested archive, a compressed stream, an
        ``.npy`` or a pickle. ``depth`` counts the containers already opened around it."""
        head = fh.read(_HEAD)
        fh.seek(0)
        kind = _kind(head)
        inner = depth if member is None else depth + 1
        if kind in _NESTED and member is not None and depth >= self.limits.max_depth:
            self.limit(member, f"containers nested deeper than {self.limits.max_depth} levels; {member} was not "
                       "opened", max_depth=self.limits.max_depth)
        elif kind == "zip" or (member is None and self.entry.content_type in {"zip", "zip-corrupt", "pytorch-zip"}):
            self.walk_zip(cast(BinaryIO, fh), member, inner)
        elif kind in _COMPRESSED:
            self.walk_compressed(cast(BinaryIO, fh), kind, member, inner, name_hint=name_hint)
        elif kind == "tar" or (member is None and self.entry.content_type == "tar"):
            self.walk_tar(cast(BinaryIO, fh), member, inner)
        elif kind == "npy":
            self.walk_npy(cast(BinaryIO, fh), size, member)
        elif kind == "pickle" or (head[:1] and head[0] in _VALID_FIRST_BYTES):
            self.scan_pickle(cast(BinaryIO, fh), size, member, offset=0, required=required,
                             torch_context=torch_context)

    def visit_member(self, head: bytes, stream: Any, member: str, depth: int, *, name: str,
                     declared: int | None = None, torch_context: bool = False) -> None:
        """Spool one archive member whose head may hold a pickle, then visit it."""
        spool = self.spool(head, stream, member, declared=declared)
        if spool is None:
            return
        with spool:
            size = spool.seek(0, io.SEEK_END)
            spool.seek(0)
            suffix = PurePosixPath(name).suffix.lower()
            required = suffix in PICKLE_SUFFIXES - {".bin"} or name.endswith("data.pkl")
            self.visit(spool, size, member, depth, name_hint=name, required=required, torch_context=torch_context)

    # -- zip
    def walk_zip(self, fh: BinaryIO, parent: str | None, depth: int) -> None:
        try:
            zf = zipfile.ZipFile(fh)
        except _ZIP_ERRORS as exc:
            where = parent or self.entry.path
            self.incomplete(parent, f"{where} looks like a zip but cannot be opened ({exc}); other readers "
                            "(torch's own) may still load pickles from it")
            return
        with zf:
            infos = zf.infolist()
        if len(infos) > self.limits.max_members:
            self.limit(parent, f"archive has {len(infos)} members, over the {self.limits.max_members} limit; "
                       "only the first ones were checked", members=len(infos))
            infos = infos[: self.limits.max_members]
        is_torch = any(PurePosixPath(i.filename).name == "data.pkl" for i in infos)
        for info in infos:
            if info.filename.endswith("/") or info.file_size == 0:  # a folder (is_dir() fails on an empty name)
                continue
            if is_torch and _STORAGE_MEMBER.search(info.filename):
                continue  # raw tensor bytes: torch.load reads them as data, never unpickles them
            self.walk_zip_member(fh, info, self.join(parent, info.filename), depth,
                                 torch_context=is_torch and PurePosixPath(info.filename).name == "data.pkl")

    def walk_zip_member(self, fh: BinaryIO, info: zipfile.ZipInfo, member: str, depth: int, *,
                        torch_context: bool) -> None:
        try:
            reader = self.open_zip_member(fh, info, member)
        except _ZIP_ERRORS as exc:
            self.incomplete(member, f"zip member {member} cannot be read ({type(exc).__name__}: {exc}); it is "
                            "unchecked")
            return
        if reader is None:
            return
        head, broken = self.read_head(reader, member)
        if _may_hold_pickle(head):
            self.visit_member(head, io.BytesIO() if broken else reader, member, depth, name=info.filename,
                              declared=info.file_size, torch_context=torch_context)
        if isinstance(reader, _ZipMemberReader) and reader.complete and reader.crc != info.CRC:
            self.tampered(member, f"zip member {member} fails its CRC check (stored {info.CRC:#010x}, computed "
                          f"{reader.crc:#010x}); torch.load ignores the CRC and loads it anyway, so it was checked, "
                          "but the archive was altered after it was written", stored_crc=info.CRC,
                          computed_crc=reader.crc)

    def open_zip_member(self, fh: BinaryIO, info: zipfile.ZipInfo, member: str) -> Any:
        """A reader of one member's bytes after its local header has been checked against the central directory.

        Stored and deflated members (all torch writes) are read by us without enforcing the CRC; other methods
        go through ``zipfile``, which enforces it.
        """
        fh.seek(info.header_offset)
        raw = fh.read(_ZIP_LOCAL_HEADER.size)
        if len(raw) < _ZIP_LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
            self.tampered(member, f"zip member {member} has no local header where the central directory points; "
                          "it cannot be read the way loaders read it")
            self.incomplete(member, f"zip member {member} cannot be located; it is unchecked")
            return None
        _sig, _ver, flags, method, _t, _d, crc, csize, usize, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(raw)
        name = fh.read(name_len)
        self.compare_local_header(info, member, flags=flags, method=method, crc=crc, csize=csize, usize=usize,
                                  name=name)
        if flags & _ZIP_ENCRYPTED or info.flag_bits & _ZIP_ENCRYPTED:
            self.incomplete(member, f"zip member {member} is encrypted; it is unchecked")
            return None
        if info.compress_type in {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}:
            return _ZipMemberReader(fh, info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len, info)
        return zipfile.ZipFile(fh).open(info)  # the archive object only reads ``fh``, which stays ours

    def compare_local_header(self, info: zipfile.ZipInfo, member: str, *, flags: int, method: int, crc: int,
                             csize: int, usize: int, name: bytes) -> None:
        """Report a local header that disagrees with the central directory: readers differ in which they trust,
        so what one scanner checks need not be what a loader loads."""
        central_name = info.orig_filename.encode("utf-8" if info.flag_bits & _ZIP_UTF8 else "cp437", "replace")
        diffs: dict[str, tuple[object, object]] = {}
        if name != central_name:
            diffs["name"] = (name.decode("utf-8", "replace"), info.orig_filename)
        if method != info.compress_type:
            diffs["method"] = (method, info.compress_type)
        if (flags ^ info.flag_bits) & _ZIP_ENCRYPTED:
            diffs["encrypted"] = (bool(flags & _ZIP_ENCRYPTED), bool(info.flag_bits & _ZIP_ENCRYPTED))
        # With a data descriptor (torch's writer sets it) the local fields are zero; any other value must agree.
        unset = 0 if flags & _ZIP_DATA_DESCRIPTOR else None
        for key, local, central, wide in (("crc", crc, info.CRC, False), ("compressed_size", csize, info.compress_size,
                                          True), ("size", usize, info.file_size, True)):
            if local not in {central, unset} and not (wide and local == _ZIP64_SIZE):
                diffs[key] = (local, central)
        if diffs:
            fields = ", ".join(f"{k} {local!r} vs {central!r}" for k, (local, central) in diffs.items())
            self.tampered(member, f"zip member {member}: local header disagrees with the central directory "
                          f"({fields}); readers that trust one or the other see different files",
                          fields=sorted(diffs))

    # -- tar and compressed streams
    def walk_tar(self, fileobj: BinaryIO, parent: str | None, depth: int) -> None:
        try:
            with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
                count = 0
                for info in tf:
                    count += 1
                    if count > self.limits.max_members:
                        self.limit(parent, f"tar has more than {self.limits.max_members} members; the rest were "
                                   "not checked")
                        break
                    if not info.isfile() or info.size == 0:
                        continue
                    member = self.join(parent, info.name)
                    fh = tf.extractfile(info)
                    if fh is None:
                        continue
                    head, broken = self.read_head(fh, member)
                    if _may_hold_pickle(head):
                        self.visit_member(head, io.BytesIO() if broken else fh, member, depth, name=info.name,
                                          declared=info.size)
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            self.incomplete(parent, f"tar archive cannot be read ({exc}); its members are unchecked")

    def walk_compressed(self, fileobj: BinaryIO, kind: str, parent: str | None, depth: int, *,
                        name_hint: str) -> None:
        inner_name = re.sub(r"\.(gz|gzip|bz2|xz|lzma|z|zlib)$", "", PurePosixPath(name_hint).name) or "<decompressed>"
        inner_name = re.sub(r"\.tgz$", ".tar", inner_name)
        member = self.join(parent, inner_name) if parent else f"<{kind}>/{inner_name}"
        try:
            with _OPENERS[kind](fileobj) as stream:
                head, broken = self.read_head(stream, member)
                if _may_hold_pickle(head):
                    self.visit_member(head, io.BytesIO() if broken else stream, member, depth, name=inner_name)
        except _DECOMPRESS_ERRORS as exc:
            self.incomplete(member, f"{kind} stream cannot be decompressed ({exc}); its content is unchecked")

    # -- npy and pickles
    def walk_npy(self, fh: BinaryIO, size: int, member: str | None) -> None:
        try:
            header = read_npy_header(fh, size)
        except LimitExceeded as exc:
            self.limit(member, f"{member or self.entry.path}: {exc}; np.load(allow_pickle=True) would still read "
                       "it and unpickle an object array", limit_bytes=_NPY_MAX_HEADER)
            return
        if header is not None and header[1]:
            self.scan_pickle(fh, size, member, offset=header[0], required=True)

    def scan_pickle(self, fh: BinaryIO, size: int, member: str | None, *, offset: int, required: bool,
                    torch_context: bool = False) -> None:
        """A pickle stream in a seekable file: find where its pickles end first, so a legacy torch file's raw
        storages are never read into memory, and hand at most ``max_payload_bytes`` to the engine."""
        fh.seek(offset)
        analysis = analyse_stream(fh, limits=self.limits)
        if not required and not _looks_like_pickle(analysis):
            return  # a .bin of other data
        cap = self.limits.max_payload_bytes
        length = size - offset
        if analysis.legacy_torch or (analysis.junk_tail and length > cap):
            length = analysis.end  # the unpickler never reads past the last pickle
        if length > cap:
            where = member or self.entry.path
            self.limit(member, f"pickle stream {where} is {length} bytes, over the {cap}-byte limit for analysis "
                       "in memory; it was not checked", size_bytes=length, limit_bytes=cap)
            return
        fh.seek(offset)
        data = fh.read(length)
        scan_payload(Payload(data, member, offset=offset, required=required, torch_context=torch_context),
                     self.out, limits=self.limits, analysis=analysis)

    # -- top level
    def walk_file(self, path: Path) -> None:
        with open(path, "rb") as fh:
            required = self.entry.content_type in {"pickle", "numpy"}
            self.visit(fh, self.entry.size, None, 0, name_hint=self.entry.path, required=required)


def read_npy_header(fh: BinaryIO, size: int) -> tuple[int, bool] | None:
    """(offset of the array data, dtype holds Python objects) for an ``.npy`` stream; None if ``np.load`` would
    reject it before unpickling anything.

    Raises:
        LimitExceeded: the header is longer than ``_NPY_MAX_HEADER`` bytes.
    """
    start = fh.tell()
    pre = fh.read(_NPY_PREAMBLE)
    if not pre.startswith(b"\x93NUMPY") or len(pre) < 10:
        return None
    major = pre[6]
    if major == 1:
        (hlen,), begin = struct.unpack("<H", pre[8:10]), 10
    elif major in (2, 3) and len(pre) >= 12:
        (hlen,), begin = struct.unpack("<I", pre[8:12]), 12
    else:
        return None
    if begin + hlen > size:
        return None  # truncated: np.load fails reading the header
    if hlen > _NPY_MAX_HEADER:
        raise LimitExceeded(f".npy header is {hlen} bytes, over the {_NPY_MAX_HEADER}-byte parsing limit")
    fh.seek(start + begin)
    raw = fh.read(hlen)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin-1"))
        descr = header["descr"]
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError, MemoryError, RecursionError):
        return None
    return begin + hlen, _descr_has_object(descr)


def parse_npy_header(data: bytes) -> tuple[int, bool] | None:
    """``read_npy_header`` of an ``.npy`` held in memory.

    Raises:
        LimitExceeded: the header is longer than ``_NPY_MAX_HEADER`` bytes.
    """
    return read_npy_header(io.BytesIO(data), len(data))


def _descr_has_object(descr: Any) -> bool:
    """True when an ``.npy`` dtype description holds Python objects, as numpy itself reads it.

    numpy's ``descr_to_dtype`` runs on the parsed literal (never on the file), so every spelling (``'O'``,
    ``'object'``, ``('|O', (2,))``, structured fields) is judged like ``np.load`` judges it. A description numpy
    rejects is still checked structurally, so a scan never depends on one numpy version's parser.
    """
    from numpy.lib.format import descr_to_dtype

    try:
        if descr_to_dtype(descr).hasobject:
            return True
    except Exception:  # noqa: BLE001 - np.load raises on it too; fall through to the structural check
        pass
    return _descr_mentions_object(descr)


def _descr_mentions_object(descr: Any, depth: int = 0) -> bool:
    """Structural fallback: any typestr in the description (fields, subarrays) that names objects."""
    if depth > 32:
        return True  # deeper than any real dtype: treat as objects rather than guess
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O") or descr.strip().lower().startswith("object")
    if isinstance(descr, (tuple, list)):
        return any(_descr_mentions_object(d, depth + 1) for d in descr)
    return False


# --- the check -----------------------------------------------------------------------------------------

def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_HEAD)


def wants_scan(root: Path, entry: FileEntry) -> bool:
    """Whether a file may hold a pickle: by its bytes, or by a pickle-ish extension unless its bytes say otherwise."""
    if entry.content_type in _CONTAINER_TYPES:
        return True
    if entry.content_type in _NEVER_PICKLE:
        return False
    return Path(entry.path).suffix.lower() in PICKLE_SUFFIXES


def scan_file(root: Path, entry: FileEntry, *, limits: PickleLimits = DEFAULT_LIMITS) -> list[Finding]:
    """All pickle findings for one inventoried file (empty when it holds no pickle or only safe ones).

    Raises:
        OSError: the file cannot be read (the runner records it and lowers coverage).
    """
    out = _Findings(entry.path)
    path = root / entry.path
    if entry.content_type not in _CONTAINER_TYPES:
        if not _may_hold_pickle(_head(path)):
            return []
        if entry.content_type in {"text", "python"}:
            with open(path, "rb") as fh:
                probe = analyse_stream(fh, limits=limits)
            if not _looks_like_pickle(probe):
                return []  # plain text that merely starts with an opcode letter
    _Walker(entry, out, limits).walk_file(path)
    return out.findings()


def iter_findings(ctx: StaticContext, *, limits: PickleLimits = DEFAULT_LIMITS) -> Iterator[Finding]:
    """Findings for every file of the context that may hold a pickle."""
    for entry in ctx.files:
        if wants_scan(ctx.root, entry):
            yield from scan_file(ctx.root, entry, limits=limits)


@static_check("static.pickle", rules=RULES,
              description="Code execution and tampering in pickles, in any container (zip, tar, gzip, npy)")
def check_pickles(ctx: StaticContext) -> Iterator[Finding]:
    """Scan every pickle the model ships with the engine and our own opcode simulation, under our policy."""
    yield from iter_findings(ctx)
