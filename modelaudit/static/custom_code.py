"""Custom code shipped with a model: what ``trust_remote_code=True`` would run, read with ``ast`` only.

A model folder can carry Python that ``transformers`` imports when a caller passes
``trust_remote_code=True`` (``auto_map`` in config.json / tokenizer_config.json names the module). That
is arbitrary code execution by design, so shipping it is already worth a medium finding; on top of
that, each ``.py`` file is parsed (never imported) and calls or imports that execute processes, talk to
the network, delete or write files outside the model, or execute dynamically built code are reported
with their line. Names are resolved through the file's imports, so ``import subprocess as sp;
sp.run(...)`` and ``from os import system`` are caught as well as the plain spelling, and through the
usual hiding places (``posix.system``, ``getattr(os, "sys" + "tem")``, ``vars(os)[...]``,
``sys.modules["os"]``, ``from os import *``, ``s = os.system``). A file whose syntax tree cannot be built
(nested past the parser's limits) fails closed at high, and a token scan still reports the dangerous
names it shows.
"""

from __future__ import annotations

import ast
import base64
import binascii
import builtins
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from modelaudit.findings import FileEntry, Finding, Location, Severity
from modelaudit.static.base import StaticContext, static_check
from modelaudit.static.pysource import fold_str, scan_tokens, walk_bounded, walk_with_parents

RULE_PREFIX = "static.custom-code"
R_TRUST = f"{RULE_PREFIX}.trust-remote-code"
R_REMOTE_REPO = f"{RULE_PREFIX}.remote-repo"
R_MISSING = f"{RULE_PREFIX}.missing-module"
R_BAD_MAP = f"{RULE_PREFIX}.invalid-auto-map"
R_SYNTAX = f"{RULE_PREFIX}.syntax-error"
R_PROCESS = f"{RULE_PREFIX}.process-exec"
R_NETWORK = f"{RULE_PREFIX}.network"
R_FS = f"{RULE_PREFIX}.filesystem"
R_DYNAMIC = f"{RULE_PREFIX}.dynamic-exec"
R_DESER = f"{RULE_PREFIX}.deserialization"
R_NATIVE = f"{RULE_PREFIX}.native-code"
R_OBFUSCATED = f"{RULE_PREFIX}.obfuscated-blob"
R_EXFIL = f"{RULE_PREFIX}.credential-exfiltration"
R_PARSE_LIMIT = f"{RULE_PREFIX}.parse-limit"

RULES = {
    R_TRUST: "Loading the model needs trust_remote_code=True: its own Python code would run",
    R_REMOTE_REPO: "auto_map pulls code from another hub repository, which this scan cannot see",
    R_MISSING: "auto_map or a relative import names a module file that is not in the model folder",
    R_BAD_MAP: "auto_map is malformed, so the code it would load cannot be determined",
    R_SYNTAX: "A Python file cannot be parsed, so it could not be analysed",
    R_PROCESS: "Python code starts processes (os.system, subprocess, os.exec*, pty.spawn, ...)",
    R_NETWORK: "Python code opens network connections (socket, urllib, requests, httpx, ...)",
    R_FS: "Python code deletes files or writes outside the model folder",
    R_DYNAMIC: "Python code executes dynamically built code (exec, eval, compile, __import__, ...)",
    R_DESER: "Python code deserialises pickle/marshal data, which can execute code",
    R_NATIVE: "Python code loads native libraries (ctypes, cffi)",
    R_OBFUSCATED: "Python code carries a long encoded blob (base64/hex), a common way to hide a payload",
    R_EXFIL: "Python code reads credentials from the environment in a file that also uses the network",
    R_PARSE_LIMIT: "A Python file is nested beyond what the parser can build; only its tokens could be checked",
}

# Config files whose ``auto_map`` (or ``custom_pipelines``) tells transformers which module to import.
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                  "feature_extractor_config.json", "image_processor_config.json", "video_preprocessor_config.json")
MAX_SOURCE_BYTES = 10 * 1024 * 1024
MAX_NESTED_DEPTH = 3
MAX_DECODED_BYTES = 1024 * 1024
MAX_RESOLVE_DEPTH = 16
"""Deepest ``getattr(getattr(...))`` / attribute chain a name is resolved through (deeper is dynamic)."""
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_BLOB = re.compile(r"^[A-Za-z0-9+/=_-]{256,}$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# A SyntaxError that is the parser's nesting limit, not a mistake in the code.
_PARSE_LIMIT = re.compile(r"too many nested|too many levels|too many statically nested|recursion|too complex", re.I)


# --------------------------------------------------------------------------------------------------
# What counts as dangerous: fully qualified names (after alias resolution) -> (rule, severity, why).
# A key ending in ".*" matches every attribute of that module.

@dataclass(frozen=True)
class Danger:
    """How one dangerous callable or module is reported."""

    rule: str
    severity: Severity
    why: str


_PROC = Danger(R_PROCESS, Severity.CRITICAL, "starts a process")
_NET = Danger(R_NETWORK, Severity.HIGH, "opens a network connection")
_DEL = Danger(R_FS, Severity.HIGH, "deletes or moves files")
_EXEC = Danger(R_DYNAMIC, Severity.HIGH, "executes dynamically built code")
_IMPORT = Danger(R_DYNAMIC, Severity.HIGH, "imports a module chosen at run time")
_DESER = Danger(R_DESER, Severity.HIGH, "deserialises data that can execute code")
_NATIVE = Danger(R_NATIVE, Severity.HIGH, "loads native code")

DANGEROUS_CALLS: dict[str, Danger] = {
    **{f"os.{n}": _PROC for n in ("system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve",
                                   "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                                   "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "fork",
                                   "forkpty", "startfile")},
    "subprocess.*": _PROC, "pty.spawn": _PROC, "pty.fork": _PROC, "commands.*": _PROC, "popen2.*": _PROC,
    "asyncio.create_subprocess_exec": _PROC, "asyncio.create_subprocess_shell": _PROC,
    "multiprocessing.Process": Danger(R_PROCESS, Severity.HIGH, "starts a process"),
    "socket.*": _NET, "urllib.request.*": _NET, "urllib2.*": _NET, "urllib3.*": _NET, "requests.*": _NET,
    "http.client.*": _NET, "httplib.*": _NET, "httpx.*": _NET, "aiohttp.*": _NET, "ftplib.*": _NET,
    "smtplib.*": _NET, "telnetlib.*": _NET, "paramiko.*": _NET, "websocket.*": _NET, "websockets.*": _NET,
    "xmlrpc.client.*": _NET, "poplib.*": _NET, "imaplib.*": _NET, "pycurl.*": _NET,
    "shutil.rmtree": _DEL, "shutil.move": _DEL, "os.remove": _DEL, "os.unlink": _DEL, "os.rmdir": _DEL,
    "os.removedirs": _DEL, "os.rename": _DEL, "os.replace": _DEL, "os.truncate": _DEL,
    "os.chmod": Danger(R_FS, Severity.HIGH, "changes file permissions"),
    "os.chown": Danger(R_FS, Severity.HIGH, "changes file ownership"),
    "os.symlink": Danger(R_FS, Severity.HIGH, "creates symbolic links"),
    "exec": _EXEC, "eval": _EXEC, "compile": _EXEC, "execfile": _EXEC,
    "builtins.exec": _EXEC, "builtins.eval": _EXEC, "builtins.compile": _EXEC,
    "__import__": _IMPORT, "builtins.__import__": _IMPORT, "importlib.import_module": _IMPORT,
    "importlib.__import__": _IMPORT, "importlib.util.spec_from_file_location": _IMPORT,
    "importlib.machinery.SourceFileLoader": _IMPORT, "imp.load_source": _IMPORT, "imp.load_module": _IMPORT,
    "runpy.run_path": _EXEC, "runpy.run_module": _EXEC, "code.InteractiveInterpreter": _EXEC,
    "types.FunctionType": _EXEC, "types.CodeType": _EXEC,
    "marshal.loads": _DESER, "marshal.load": _DESER, "pickle.loads": _DESER, "pickle.load": _DESER,
    "pickle.Unpickler": _DESER, "_pickle.loads": _DESER, "cPickle.loads": _DESER, "cPickle.load": _DESER,
    "dill.*": _DESER, "cloudpickle.*": _DESER, "joblib.load": _DESER, "shelve.open": _DESER,
    "ctypes.*": _NATIVE, "cffi.*": _NATIVE, "_ctypes.*": _NATIVE,
    "pydoc.pipepager": _PROC, "pydoc.tempfilepager": _PROC, "_posixsubprocess.*": _PROC,
    "_winapi.CreateProcess": _PROC,
    "torch.hub.load": Danger(R_DYNAMIC, Severity.HIGH, "downloads a repository's hubconf.py and runs it"),
}
# Modules that are another spelling of one in the tables: posix/nt are what os re-exports.
MODULE_ALIASES = {"posix": "os", "nt": "os", "__builtins__": "builtins"}
# Modules with dangerous attributes: getattr(os, name) with a computed name can reach any of them.
DANGEROUS_MODULES = {k.rsplit(".", 1)[0] for k in DANGEROUS_CALLS if "." in k} | {"builtins"}
_KNOWN_ROOTS = {k.split(".")[0] for k in DANGEROUS_CALLS} | {"os", "sys", "builtins", "importlib"}
_IMPORTERS = {"__import__", "builtins.__import__", "importlib.import_module", "importlib.__import__"}

# Attributes that walk from any object to a function's globals or to every class of the interpreter.
_ESCAPE = Danger(R_DYNAMIC, Severity.HIGH, "walks object internals to reach globals, builtins or every loaded "
                 "class (a sandbox-escape pattern)")
_ESCAPE_ATTRS = {"__globals__", "__builtins__"}
_HIERARCHY_ATTRS = {"__base__", "__bases__", "__mro__", "__subclasses__"}
# Without a tree the receiver of __subclasses__ is unknown, so the token scan reports it on sight.
_TOKEN_ESCAPE_ATTRS = _ESCAPE_ATTRS | {"__subclasses__"}

# The process environment, and how a single variable is read from it.
ENV_NAMES = {"os.environ", "os.environb"}
ENV_READERS = {"os.getenv", "os.getenvb"}
_ENV_ONE_VARIABLE = {"get", "setdefault", "pop", "update", "__getitem__", "__contains__", "__setitem__"}
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,99}$")
_CREDENTIAL = re.compile(r"(^|_)(TOKENS?|KEYS?|SECRETS?|PASSWORD|PASSWD|CREDENTIALS?|APIKEY|AUTH)(_|$)|^AWS_")

# Modules whose mere import is reported when no call into them was seen (calls are more precise).
DANGEROUS_IMPORTS: dict[str, Danger] = {
    "subprocess": Danger(R_PROCESS, Severity.HIGH, "imports a process-execution module"),
    "pty": Danger(R_PROCESS, Severity.HIGH, "imports a process-execution module"),
    "commands": Danger(R_PROCESS, Severity.HIGH, "imports a process-execution module"),
    **{m: Danger(R_NETWORK, Severity.MEDIUM, "imports a networking module")
       for m in ("socket", "urllib.request", "urllib2", "urllib3", "requests", "http.client", "httplib", "httpx",
                 "aiohttp", "ftplib", "smtplib", "telnetlib", "paramiko", "websocket", "websockets",
                 "xmlrpc.client", "pycurl")},
    **{m: Danger(R_DESER, Severity.MEDIUM, "imports a code-executing deserialiser")
       for m in ("marshal", "pickle", "_pickle", "cPickle", "dill", "cloudpickle")},
    "_posixsubprocess": Danger(R_PROCESS, Severity.HIGH, "imports a process-execution module"),
    "ctypes": Danger(R_NATIVE, Severity.HIGH, "imports a native-code loader"),
    "_ctypes": Danger(R_NATIVE, Severity.HIGH, "imports a native-code loader"),
    "cffi": Danger(R_NATIVE, Severity.HIGH, "imports a native-code loader"),
    "builtins": Danger(R_DYNAMIC, Severity.MEDIUM, "imports builtins, usually to reach exec/eval indirectly"),
}

# Calls that turn an encoded literal into bytes/text: exec() of their result is a hidden payload.
DECODERS = {
    "base64.b64decode", "base64.b32decode", "base64.b16decode", "base64.a85decode", "base64.b85decode",
    "base64.decodebytes", "base64.standard_b64decode", "base64.urlsafe_b64decode", "binascii.a2b_base64",
    "binascii.unhexlify", "binascii.a2b_hex", "codecs.decode", "zlib.decompress", "gzip.decompress",
    "bz2.decompress", "lzma.decompress", "bytes.fromhex", "marshal.loads", "pickle.loads",
}
_PATH_METHODS = {"write_text", "write_bytes", "unlink", "rmdir", "rename", "touch", "chmod", "symlink_to"}
_EXEC_SINKS = {"exec", "eval", "compile", "builtins.exec", "builtins.eval", "builtins.compile", "execfile"}
_WRITE_MODES = re.compile(r"[wax+]")
_SENSITIVE_PATH = re.compile(r"(^|/)(\.ssh|\.bashrc|\.profile|\.zshrc|\.bash_profile|\.config/autostart|"
                             r"\.aws|\.netrc|\.pypirc|\.gitconfig|crontab|cron\.d|sudoers|authorized_keys)"
                             r"|^/(etc|usr|bin|sbin|lib|lib64|boot|root|home|var/spool)?(/|$)|^~/?$")


# --------------------------------------------------------------------------------------------------
# auto_map


@dataclass
class CodeRef:
    """One class reference from an ``auto_map`` (or ``custom_pipelines``) entry."""

    config: str
    """Config file holding the reference."""
    key: str
    """Auto class (``AutoModelForCausalLM``) or pipeline task it is registered for."""
    reference: str
    """The raw reference string, e.g. ``modeling_x.MyModel`` or ``org/repo--modeling_x.MyModel``."""
    repo: str | None = None
    """Other hub repo the code comes from, for ``org/repo--module.Class`` references."""
    module: str | None = None
    """Module file stem, when the reference is well formed."""


def _iter_refs(value: Any) -> Iterator[str | Any]:
    """auto_map values are a string or a list (tokenizers: [slow, fast], either may be null)."""
    if isinstance(value, list):
        yield from (v for v in value if v is not None)
    else:
        yield value


def collect_code_refs(ctx: StaticContext) -> tuple[list[CodeRef], list[Finding]]:
    """Every code reference in the model's config files, plus findings for malformed maps."""
    refs: list[CodeRef] = []
    findings: list[Finding] = []
    for name in AUTO_MAP_FILES:
        if ctx.find(name) is None:
            continue
        try:
            data = ctx.read_json(name)
        except (ValueError, OSError):
            continue  # the config / tokenizer checks report unreadable JSON
        if not isinstance(data, dict):
            continue
        entries: list[tuple[str, Any]] = []
        auto_map = data.get("auto_map")
        if auto_map is not None:
            if not isinstance(auto_map, dict):
                findings.append(_bad_map(name, "auto_map", f"auto_map is a {type(auto_map).__name__}, not an object"))
            else:
                entries.extend((str(k), v) for k, v in auto_map.items())
        pipelines = data.get("custom_pipelines")
        if isinstance(pipelines, dict):
            entries.extend((f"pipeline:{task}", spec.get("impl")) for task, spec in pipelines.items()
                           if isinstance(spec, dict) and spec.get("impl") is not None)
        for key, value in entries:
            for raw in _iter_refs(value):
                ref = _parse_ref(name, key, raw)
                if ref is None:
                    findings.append(_bad_map(name, f"auto_map.{key}", f"entry {key!r} is not a module.Class "
                                             f"reference: {str(raw)[:200]!r}"))
                else:
                    refs.append(ref)
    return refs, findings


def _parse_ref(config: str, key: str, raw: Any) -> CodeRef | None:
    """Split ``[org/repo--]module.Class`` the way transformers' dynamic module loader does."""
    if not isinstance(raw, str):
        return None
    repo, _, rest = raw.rpartition("--") if "--" in raw else ("", "", raw)
    parts = rest.split(".")
    if len(parts) != 2 or not all(_MODULE_NAME.match(p) for p in parts):
        return None
    if repo and not _REPO_ID.match(repo):
        return None
    return CodeRef(config=config, key=key, reference=raw, repo=repo or None, module=parts[0])


def _bad_map(path: str, member: str, message: str) -> Finding:
    return Finding(R_BAD_MAP, Severity.MEDIUM, f"{path}: {message}", location=Location(path=path, member=member),
                   evidence={"problem": message})


def _auto_map_findings(ctx: StaticContext, refs: list[CodeRef]) -> Iterator[Finding]:
    """trust_remote_code per config file, code from other repos, and module files that are missing."""
    by_config: dict[str, list[CodeRef]] = {}
    for ref in refs:
        by_config.setdefault(ref.config, []).append(ref)
    for config, items in by_config.items():
        local = [r for r in items if r.repo is None]
        modules = sorted({f"{r.module}.py" for r in local})
        if local:
            yield Finding(R_TRUST, Severity.MEDIUM,
                          f"{config} maps {', '.join(sorted({r.key for r in local}))} to code shipped with the model "
                          f"({', '.join(modules)}); loading it needs trust_remote_code=True",
                          location=Location(path=config, member="auto_map"),
                          evidence={"classes": {r.key: r.reference for r in local}, "modules": modules})
        for ref in items:
            if ref.repo is not None:
                yield Finding(R_REMOTE_REPO, Severity.HIGH,
                              f"{config} maps {ref.key} to code in another repository ({ref.repo}); that code is "
                              f"downloaded and run at load time and was not scanned",
                              location=Location(path=config, member=f"auto_map.{ref.key}"),
                              evidence={"repo": ref.repo, "reference": ref.reference, "module": f"{ref.module}.py"})
    seen: set[str] = set()
    for ref in refs:
        if ref.repo is not None or ref.module is None:
            continue
        module = f"{ref.module}.py"
        if module in seen:
            continue
        seen.add(module)
        if ctx.find(module) is None:
            yield Finding(R_MISSING, Severity.MEDIUM,
                          f"{ref.config} maps {ref.key} to {module}, which is not in the model folder; the code "
                          f"that would run could not be audited",
                          location=Location(path=ref.config, member=f"auto_map.{ref.key}"),
                          evidence={"module": module, "reference": ref.reference})


# --------------------------------------------------------------------------------------------------
# Python source analysis


@dataclass
class Hit:
    """One dangerous construct found in a source file."""

    rule: str
    severity: Severity
    line: int
    name: str
    why: str
    extra: dict[str, Any] = field(default_factory=dict)


class _Analyzer:
    """Resolve names through the file's imports and record dangerous calls and imports.

    Resolution is deliberately simple and static: ``alias -> dotted module path`` from import statements
    and from assignments of module attributes (``s = os.system``), constant strings folded wherever a
    name is looked up by text (``getattr(os, "sys" + "tem")``, ``vars(os)["system"]``,
    ``sys.modules["os"]``), and assignments of decoder results mark a name as "decoded payload". Nothing
    is evaluated. The tree is walked with an explicit stack, so nesting depth cannot crash the scan.
    """

    def __init__(self, depth: int = 0, line_offset: int = 0) -> None:
        self.aliases: dict[str, str] = {}
        self.strings: dict[str, str] = {}
        self.star_modules: list[str] = []
        self.assigned: set[str] = set()
        self.local_defs: set[str] = set()
        self.decoded_names: set[str] = set()
        self.hits: list[Hit] = []
        self.imports: list[tuple[str, int]] = []
        self.env_refs: list[tuple[int, str, bool]] = []
        self.credential_names: dict[str, int] = {}
        self.parent: ast.AST | None = None
        self.depth = depth
        self.line_offset = line_offset

    def run(self, tree: ast.AST) -> None:
        """Visit every node in source order (iteratively) with ``self.parent`` set."""
        for node, parent in walk_with_parents(tree):
            self.parent = parent
            handler = getattr(self, f"visit_{type(node).__name__}", None)
            if handler is not None:
                handler(node)

    # -- name resolution -------------------------------------------------------------------------
    def resolve(self, node: ast.AST, depth: int = 0) -> str | None:
        """Dotted name an expression refers to, e.g. ``sp.run`` -> ``subprocess.run``; None if dynamic."""
        if depth > MAX_RESOLVE_DEPTH:
            return None
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            if len(parts) >= MAX_RESOLVE_DEPTH:
                return None
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            base = self._resolve_name(node.id, bare=not parts)
        elif isinstance(node, ast.Call):
            base = self._resolve_call(node, depth + 1)
        elif isinstance(node, ast.Subscript):
            base = self._resolve_subscript(node, depth + 1)
        else:
            base = None
        return None if base is None else _canonical(".".join([base, *reversed(parts)]))

    def _resolve_name(self, name: str, *, bare: bool) -> str | None:
        alias = self.aliases.get(name)
        if alias is not None:
            return alias
        if name in self.local_defs and bare:
            return None
        if self.star_modules and name not in self.assigned and name not in self.local_defs \
                and not hasattr(builtins, name):
            for module in self.star_modules:  # from os import *  ->  system(...)
                candidate = _canonical(f"{module}.{name}")
                if _lookup(candidate) is not None or candidate in ENV_NAMES:
                    return candidate
        return name

    def _resolve_call(self, node: ast.Call, depth: int) -> str | None:
        """``getattr(os, "system")``, ``__import__("os")``, ``importlib.import_module("os")``, ``sys.modules.get``."""
        func = self.resolve(node.func, depth)
        if func in ("getattr", "builtins.getattr") and len(node.args) >= 2:
            owner = self.resolve(node.args[0], depth)
            attr = fold_str(node.args[1], self.strings)
            return f"{owner}.{attr}" if owner and attr else None
        if func in _IMPORTERS and node.args:
            module = fold_str(node.args[0], self.strings)
            if not module or not _DOTTED.match(module):
                return None
            top_only = func in ("__import__", "builtins.__import__") and len(node.args) < 4 and \
                _kwarg(node, "fromlist") is None
            return module.split(".")[0] if top_only else module
        if func == "sys.modules.get" and node.args:
            return fold_str(node.args[0], self.strings)
        return None

    def _resolve_subscript(self, node: ast.Subscript, depth: int) -> str | None:
        """``sys.modules["os"]``, ``vars(os)["system"]``, ``os.__dict__["system"]``, ``__builtins__["eval"]``."""
        key = fold_str(node.slice, self.strings)
        if key is None or not _DOTTED.match(key):
            return None
        value = node.value
        if isinstance(value, ast.Call) and self.resolve(value.func, depth) in ("vars", "builtins.vars") \
                and len(value.args) == 1:
            owner = self.resolve(value.args[0], depth)
            return f"{owner}.{key}" if owner else None
        owner = self.resolve(value, depth)
        if owner == "sys.modules":
            return key
        if owner is not None and owner.endswith(".__dict__"):
            return f"{owner[:-len('.__dict__')]}.{key}"
        return f"builtins.{key}" if owner == "builtins" else None

    def _line(self, node: ast.AST) -> int:
        return getattr(node, "lineno", 0) + self.line_offset

    def _hit(self, danger: Danger, node: ast.AST, name: str, severity: Severity | None = None, **extra: Any) -> None:
        self.hits.append(Hit(danger.rule, severity or danger.severity, self._line(node), name, danger.why, extra))

    # -- imports -----------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top
            self.imports.append((alias.name, self._line(node)))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # relative imports are the model's own modules, checked for presence elsewhere
        for alias in node.names:
            if alias.name == "*":
                self.star_modules.append(_canonical(node.module))
                self.imports.append((node.module, self._line(node)))
                continue
            self.aliases[alias.asname or alias.name] = _canonical(f"{node.module}.{alias.name}")
            self.imports.append((f"{node.module}.{alias.name}", self._line(node)))

    # -- definitions that shadow builtins, and simple aliases ----------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.local_defs.add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.local_defs.add(node.name)

    def visit_Assign(self, node: ast.Assign) -> None:
        if self._contains_decoder(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.decoded_names.add(target.id)
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            text = fold_str(node.value, self.strings)
            if text is not None:
                self.strings[name] = text  # name = "sys" + "tem"; getattr(os, name)
            alias = self._alias_target(node.value)
            if alias is not None:
                self.aliases[name] = alias  # s = os.system; s("id")

    def _alias_target(self, value: ast.AST) -> str | None:
        """What ``name = value`` makes ``name`` stand for: a module, a module attribute or a dangerous builtin."""
        if not isinstance(value, (ast.Name, ast.Attribute, ast.Subscript, ast.Call)):
            return None
        target = self.resolve(value)
        if target is None or (isinstance(value, ast.Call) and not _is_lookup_call(value)):
            return None
        root = target.split(".")[0]
        known = root in self.aliases.values() or root in _KNOWN_ROOTS or target in _EXEC_SINKS
        return target if known else None

    # -- names that should not appear in model code -----------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.assigned.add(node.id)
        if node.id == "__builtins__":
            self._hit(Danger(R_DYNAMIC, Severity.HIGH, "reaches into __builtins__, usually to call exec/eval"),
                      node, "__builtins__")
        self._environment(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, str) and _ENV_NAME.match(value) and _CREDENTIAL.search(value):
            self.credential_names.setdefault(value, self._line(node))
        if isinstance(value, (str, bytes)) and len(value) >= 256:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if " " in text:
                return  # prose or code, not an encoded blob
            text = "".join(text.split())
            if _BLOB.match(text) and any(c.isdigit() for c in text) and any(c.isalpha() for c in text):
                self._hit(Danger(R_OBFUSCATED, Severity.MEDIUM, "carries a long encoded blob"), node,
                          "encoded literal", length=len(text))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        """``f = os.system`` hands the function on without calling it here; exact names only."""
        name = self.resolve(node)
        if name is not None and name in DANGEROUS_CALLS:
            self._hit(DANGEROUS_CALLS[name], node, name)
        if node.attr in _ESCAPE_ATTRS or _walks_class_hierarchy(node):  # f.__globals__, ().__class__.__base__
            self._hit(_ESCAPE, node, _escape_name(node.attr))
        self._environment(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        """``vars(os)["system"]`` and ``sys.modules["os"]`` are lookups by text; so is ``f.__globals__``'s dict."""
        name = self.resolve(node)
        if name is not None and name in DANGEROUS_CALLS:
            self._hit(DANGEROUS_CALLS[name], node, name)
        key = fold_str(node.slice, self.strings)
        if key in _ESCAPE_ATTRS:
            self._hit(_ESCAPE, node, _escape_name(key))
        self._environment(node)

    def _environment(self, node: ast.AST) -> None:
        """Remember reads of the process environment: a whole-environment read, or one by name."""
        name = self.resolve(node)
        if name in ENV_READERS:
            self.env_refs.append((self._line(node), name, False))
        elif name in ENV_NAMES:
            self.env_refs.append((self._line(node), name, not _reads_one_variable(node, self.parent)))

    # -- calls ----------------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        name = self.resolve(node.func)
        if name is not None:
            self._classify_call(node, name)
        elif isinstance(node.func, ast.Attribute) and node.func.attr in _PATH_METHODS:
            self._write(node, f"<path>.{node.func.attr}", node.func.value)  # Path("/etc/x").write_text(...)
        if name in ("getattr", "builtins.getattr") and node.args:
            self._getattr(node)
        self._environment(node)

    def _getattr(self, node: ast.Call) -> None:
        owner = self.resolve(node.args[0])
        if owner == "builtins":
            self._hit(Danger(R_DYNAMIC, Severity.HIGH, "fetches a builtin by name, usually exec/eval"),
                      node, f"getattr({_spelled(node.args[0])}, ...)")
        attr = fold_str(node.args[1], self.strings) if len(node.args) >= 2 else None
        if attr in _ESCAPE_ATTRS or attr in _HIERARCHY_ATTRS:
            self._hit(_ESCAPE, node, _escape_name(attr or ""))
        target = self.resolve(node)  # getattr(os, "system") used later, not called here
        if target is not None and target in DANGEROUS_CALLS:
            self._hit(DANGEROUS_CALLS[target], node, target)
        elif attr is None and len(node.args) >= 2 and owner in DANGEROUS_MODULES and owner != "builtins":
            self._hit(Danger(R_DYNAMIC, Severity.HIGH, f"fetches an attribute of {owner} chosen at run time, so any of "
                             f"its dangerous functions can be reached"),
                      node, f"getattr({owner}, ...)")

    def _classify_call(self, node: ast.Call, name: str) -> None:
        danger = _lookup(name)
        if name in _EXEC_SINKS:
            self._exec_sink(node, name)
            return
        if danger is not None:
            if danger is _IMPORT and node.args and fold_str(node.args[0], self.strings) is not None:
                target = _canonical(fold_str(node.args[0], self.strings) or "")
                inner = DANGEROUS_IMPORTS.get(target) or _lookup(f"{target}.x")
                if inner is None:
                    self._hit(danger, node, name, Severity.MEDIUM, module=target)
                else:
                    self._hit(inner, node, name, max(inner.severity, Severity.HIGH, key=lambda s: s.rank),
                              module=target)
                return
            where = _outside_path(node.args[0], self.resolve) if danger.rule == R_FS and node.args else None
            if where is not None and _SENSITIVE_PATH.search(where):
                self._hit(danger, node, name, Severity.CRITICAL, path=where)
            else:
                extra: dict[str, Any] = {"path": where} if where else {}
                self._hit(danger, node, name, **extra)
            return
        if name in ("open", "io.open", "builtins.open", "codecs.open"):
            self._open_call(node, name)
        elif name.rsplit(".", 1)[-1] in _PATH_METHODS and isinstance(node.func, ast.Attribute):
            self._write(node, name, node.func.value)
        elif name in ("torch.load",) and not _kw_true(node, "weights_only"):
            self._hit(Danger(R_DESER, Severity.MEDIUM, "loads a pickle with torch.load without weights_only=True"),
                      node, name)
        elif name in ("numpy.load", "np.load") and _kw_true(node, "allow_pickle"):
            self._hit(Danger(R_DESER, Severity.MEDIUM, "loads a pickle with numpy.load(allow_pickle=True)"),
                      node, name)

    def _exec_sink(self, node: ast.Call, name: str) -> None:
        arg = node.args[0] if node.args else None
        if arg is not None and (self._contains_decoder(arg) or self._uses_decoded_name(arg)):
            self._hit(Danger(R_DYNAMIC, Severity.CRITICAL, "executes a decoded (hidden) payload"), node, name)
        else:
            self._hit(_EXEC, node, name)
        if arg is not None:
            self._analyse_payload(arg, node)

    def _analyse_payload(self, arg: ast.AST, node: ast.Call) -> None:
        """exec("...") and exec(b64decode("...")) with literals: parse the payload and analyse it too."""
        if self.depth >= MAX_NESTED_DEPTH:
            return
        source = _literal_payload(arg, self.resolve)
        if source is None:
            return
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
        nested = _Analyzer(depth=self.depth + 1, line_offset=self._line(node) - 1)
        nested.run(tree)
        for hit in nested.all_hits():
            hit.extra.setdefault("inside", "exec payload")
            self.hits.append(hit)

    def _open_call(self, node: ast.Call, name: str) -> None:
        mode = _const_arg(node, 1, "mode")
        if not isinstance(mode, str) or not _WRITE_MODES.search(mode):
            return
        self._write(node, name, node.args[0] if node.args else _kwarg(node, "file"))

    def _write(self, node: ast.Call, name: str, target: ast.AST | None) -> None:
        """Writes count only when the path is absolute or in the home folder: writing beside the model is normal."""
        where = _outside_path(target, self.resolve) if target is not None else None
        if where is None:
            return
        severity = Severity.CRITICAL if _SENSITIVE_PATH.search(where) else Severity.HIGH
        self._hit(Danger(R_FS, severity, "writes or deletes a file outside the model folder"), node, name,
                  path=where)

    def _contains_decoder(self, node: ast.AST) -> bool:
        for sub in walk_bounded(node):
            if isinstance(sub, ast.Call):
                name = self.resolve(sub.func)
                if name in DECODERS or (name or "").split(".")[-1] in {"b64decode", "unhexlify", "decompress"}:
                    return True
        return False

    def _uses_decoded_name(self, node: ast.AST) -> bool:
        return any(isinstance(sub, ast.Name) and sub.id in self.decoded_names for sub in walk_bounded(node))

    # -- results -----------------------------------------------------------------------------------
    def all_hits(self) -> list[Hit]:
        """Call-level hits, import-level ones for modules no call was seen for, and credential exfiltration."""
        hits = _with_import_hits(self.hits, self.imports)
        exfil = _exfiltration(hits, self.env_refs, self.credential_names)
        return hits + ([exfil] if exfil is not None else [])


def _with_import_hits(hits: list[Hit], imports: list[tuple[str, int]], **extra: Any) -> list[Hit]:
    """Add a hit for each dangerous import unless a call into that module was already reported."""
    out = list(hits)
    called = {h.name for h in hits}
    for module, line in imports:
        danger = _import_danger(_canonical(module))
        if danger is None:
            continue
        root = next(m for m in _prefixes(_canonical(module)) if m in DANGEROUS_IMPORTS)
        if any(c == root or c.startswith(root + ".") for c in called):
            continue
        out.append(Hit(danger.rule, danger.severity, line, module, danger.why, {"import": True, **extra}))
    return out


def _exfiltration(hits: list[Hit], env_refs: list[tuple[int, str, bool]],
                  credential_names: dict[str, int]) -> Hit | None:
    """Credential-looking environment reads (or the whole environment) in a file that also uses the network."""
    network = sorted({h.name for h in hits if h.rule == R_NETWORK})
    whole = [ref for ref in env_refs if ref[2]]
    if not network or not env_refs or not (whole or credential_names):
        return None
    line, name, _ = (whole or env_refs)[0]
    names = ", ".join(sorted(credential_names)[:5])
    what = "the whole environment" if whole else f"credential-like variables ({names})"
    return Hit(R_EXFIL, Severity.HIGH, line, name,
               f"reads {what} and the same file uses the network ({', '.join(network[:3])}), so they can be sent away",
               {"variables": sorted(credential_names)[:20], "whole_environment": bool(whole),
                "network": network[:10]})


def _reads_one_variable(node: ast.AST, parent: ast.AST | None) -> bool:
    """``os.environ["X"]``, ``os.environ.get("X")``, ``"X" in os.environ``, ``env = os.environ``: not a bulk read."""
    if isinstance(parent, ast.Subscript) and parent.value is node:
        return True
    if isinstance(parent, ast.Attribute):
        return parent.attr in _ENV_ONE_VARIABLE
    return isinstance(parent, (ast.Compare, ast.Assign))


def _walks_class_hierarchy(node: ast.Attribute) -> bool:
    """``().__class__.__base__`` or ``x.__class__.__mro__[1].__subclasses__``: climbing to ``object``.

    ``cls.__subclasses__()`` alone is a normal registry idiom and is not matched; reaching it through
    ``__class__``/``__base__``/``__mro__`` or starting from a literal or ``object`` is the sandbox escape.
    """
    if node.attr not in _HIERARCHY_ATTRS:
        return False
    chain: list[str] = []
    value: ast.AST = node.value
    for _ in range(MAX_RESOLVE_DEPTH):
        if isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        elif isinstance(value, (ast.Subscript, ast.Call)):
            value = value.value if isinstance(value, ast.Subscript) else value.func
        else:
            break
    literal = isinstance(value, (ast.Constant, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.JoinedStr))
    if node.attr == "__subclasses__":
        return bool(set(chain) & (_HIERARCHY_ATTRS | {"__class__"})) or literal or \
            (isinstance(value, ast.Name) and value.id in ("object", "type"))
    return chain[:1] == ["__class__"] and literal


def _escape_name(attr: str) -> str:
    return attr if attr in _ESCAPE_ATTRS else "class-hierarchy traversal"


def _spelled(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else type(node).__name__


def _is_lookup_call(node: ast.Call) -> bool:
    """Calls ``resolve`` can see through: getattr, __import__/import_module, sys.modules.get."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in ("getattr", "__import__", "import_module", "get")


def _canonical(dotted: str) -> str:
    """``posix.system`` and ``nt.system`` are ``os.system``; ``__builtins__.eval`` is ``builtins.eval``."""
    root, dot, rest = dotted.partition(".")
    return MODULE_ALIASES[root] + dot + rest if root in MODULE_ALIASES else dotted


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _lookup(name: str) -> Danger | None:
    """Exact match first, then ``module.*`` wildcards from the most to the least specific module."""
    if name in DANGEROUS_CALLS:
        return DANGEROUS_CALLS[name]
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        danger = DANGEROUS_CALLS.get(".".join(parts[:i]) + ".*")
        if danger is not None:
            return danger
    return None


def _import_danger(module: str) -> Danger | None:
    return next((DANGEROUS_IMPORTS[m] for m in _prefixes(module) if m in DANGEROUS_IMPORTS), None)


def _kwarg(node: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _kw_true(node: ast.Call, name: str) -> bool:
    value = _kwarg(node, name)
    return isinstance(value, ast.Constant) and value.value is True


def _const_arg(node: ast.Call, index: int, name: str) -> Any:
    value = node.args[index] if len(node.args) > index else _kwarg(node, name)
    return value.value if isinstance(value, ast.Constant) else None


def _outside_path(node: ast.AST, resolve: Any) -> str | None:
    """Literal text of a path that is absolute or under the home folder; None for relative or computed paths."""
    for sub in walk_bounded(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            text = sub.value
            if text.startswith(("/", "~", "\\\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
                return text
        elif isinstance(sub, ast.Call):
            name = resolve(sub.func) or ""
            if name in ("os.path.expanduser", "pathlib.Path.home", "Path.home"):
                args = [a.value for a in sub.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                return f"{name}({', '.join(args)})"
    return None


def _literal_payload(arg: ast.AST, resolve: Any, depth: int = 0) -> str | None:
    """Source text of ``"..."`` or ``base64.b64decode("...")`` (decoded here: decoding a string runs nothing)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, (str, bytes)):
        value = arg.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "decode":
        return _literal_payload(arg.func.value, resolve, depth + 1) if depth < MAX_RESOLVE_DEPTH else None
    if isinstance(arg, ast.Call) and arg.args and isinstance(arg.args[0], ast.Constant):
        name = resolve(arg.func) or ""
        data = arg.args[0].value
        if not isinstance(data, (str, bytes)) or len(data) > 4 * MAX_DECODED_BYTES:
            return None
        try:
            if name.endswith("b64decode") or name == "base64.decodebytes":
                raw = base64.b64decode(data)
            elif name in ("binascii.unhexlify", "bytes.fromhex", "binascii.a2b_hex"):
                raw = bytes.fromhex(data.decode() if isinstance(data, bytes) else data)
            else:
                return None
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        return raw[:MAX_DECODED_BYTES].decode("utf-8", "replace")
    return None


@dataclass
class FileAnalysis:
    """Result of analysing one Python file."""

    path: str
    hits: list[Hit]
    error: str | None = None
    line: int | None = None
    relative_imports: list[str] = field(default_factory=list)
    error_rule: str = R_SYNTAX
    """Rule the error is reported under: a syntax error, or a parse limit (fails closed at high)."""
    error_severity: Severity = Severity.MEDIUM


def analyse_source(source: str, path: str) -> FileAnalysis:
    """Parse ``source`` with ``ast`` (never executing it) and collect dangerous constructs.

    When no syntax tree can be built, what the tokens show is still reported (``_token_analysis``); a
    file nested past the parser's limits is itself a high finding, since Python versions differ in
    those limits and the scan must not pass what it could not read.
    """
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        if _PARSE_LIMIT.search(str(exc.msg)):
            return _token_analysis(source, path, f"is nested too deeply to parse ({exc.msg})", exc.lineno)
        return _token_analysis(source, path, f"syntax error: {exc.msg}", exc.lineno, limit=False)
    except (RecursionError, MemoryError) as exc:
        return _token_analysis(source, path, f"is nested too deeply to parse ({type(exc).__name__})", None)
    except ValueError as exc:
        return _token_analysis(source, path, f"cannot be parsed: {exc}", None, limit=False)
    analyzer = _Analyzer()
    try:
        analyzer.run(tree)
    except RecursionError:  # every helper is bounded; kept so a missed one still fails closed
        return _token_analysis(source, path, "is nested too deeply to analyse", None)
    rel = sorted({(node.module or "").split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module})
    return FileAnalysis(path, analyzer.all_hits(), relative_imports=rel)


def _token_analysis(source: str, path: str, error: str, line: int | None, *, limit: bool = True) -> FileAnalysis:
    """Dangerous names that the token stream shows, for a file whose syntax tree could not be built."""
    scan = scan_tokens(source)
    aliases: dict[str, str] = {}
    stars: list[str] = []
    imports: list[tuple[str, int]] = []
    relative: set[str] = set()
    for module, name, alias, at in scan.imports:
        if module.startswith("."):
            relative.update([module.lstrip(".").split(".")[0]] if module.strip(".") else [])
            continue
        if name is None:
            aliases[alias or module.split(".")[0]] = module if alias else module.split(".")[0]
        elif name == "*":
            stars.append(_canonical(module))
        else:
            aliases[alias or name] = _canonical(f"{module}.{name}")
        imports.append((module if name in (None, "*") else f"{module}.{name}", at))
    hits = []
    for dotted, at, called in scan.names:
        danger, name = _token_danger(dotted, called, aliases, stars)
        if danger is not None:
            hits.append(Hit(danger.rule, danger.severity, at, name, danger.why, {"via": "tokens"}))
    if scan.problems:
        error = f"{error}; tokens unreadable at {', '.join(scan.problems[:3])}"
    return FileAnalysis(path, _with_import_hits(hits, imports, via="tokens"), error=error, line=line,
                        relative_imports=sorted(relative), error_rule=R_PARSE_LIMIT if limit else R_SYNTAX,
                        error_severity=Severity.HIGH if limit else Severity.MEDIUM)


def _token_danger(dotted: str, called: bool, aliases: dict[str, str], stars: list[str]) -> tuple[Danger | None, str]:
    """Classify one dotted name from the token stream; bare builtins count only when called."""
    parts = dotted.split(".")
    if set(parts) & _TOKEN_ESCAPE_ATTRS:
        return _ESCAPE, next(p for p in parts if p in _TOKEN_ESCAPE_ATTRS)
    first = aliases.get(parts[0])
    if first is None and stars and not hasattr(builtins, parts[0]):
        first = next((f"{m}.{parts[0]}" for m in stars if _lookup(_canonical(f"{m}.{parts[0]}"))), None)
    name = _canonical(".".join([first or parts[0], *parts[1:]]))
    danger = _lookup(name)
    if danger is None or not (called or name in DANGEROUS_CALLS) or (len(parts) == 1 and first is None and not called):
        return None, name
    return danger, name


def _python_files(ctx: StaticContext) -> list[FileEntry]:
    """.py files, and extension-less files whose shebang names python (``target.sniff`` tells them apart)."""
    return [e for e in ctx.files if e.path.lower().endswith(".py") or e.content_type == "python"]


def _read_source(ctx: StaticContext, entry: FileEntry) -> tuple[str | None, str | None]:
    if entry.size > MAX_SOURCE_BYTES:
        return None, f"is larger than {MAX_SOURCE_BYTES} bytes"
    try:
        raw = ctx.path(entry.path).read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return None, "is not valid UTF-8"


def _hit_findings(analysis: FileAnalysis, referenced: set[str]) -> Iterator[Finding]:
    seen: set[tuple[str, int, str]] = set()
    for hit in sorted(analysis.hits, key=lambda h: (h.line, h.rule, h.name, -h.severity.rank)):
        key = (hit.rule, hit.line, hit.name)
        if key in seen:
            continue
        seen.add(key)
        what = f"imports {hit.name}" if hit.extra.get("import") else f"uses {hit.name}"
        yield Finding(hit.rule, hit.severity,
                      f"{analysis.path} line {hit.line} {what}: {hit.why}",
                      location=Location(path=analysis.path, line=hit.line or None),
                      evidence={"name": hit.name, "reason": hit.why,
                                "runs_on_load": analysis.path in referenced, **hit.extra})


@static_check("static.custom-code", rules=RULES,
              description="auto_map code references and Python files analysed with ast (never imported)")
def check_custom_code(ctx: StaticContext) -> Iterator[Finding]:
    """Report what trust_remote_code would run, and dangerous calls in every Python file."""
    refs, map_findings = collect_code_refs(ctx)
    yield from map_findings
    yield from _auto_map_findings(ctx, refs)
    referenced = {f"{r.module}.py" for r in refs if r.repo is None and r.module}
    analyses: dict[str, FileAnalysis] = {}
    for entry in _python_files(ctx):
        source, problem = _read_source(ctx, entry)
        if source is None:
            analyses[entry.path] = FileAnalysis(entry.path, [], error=str(problem))
        else:
            analyses[entry.path] = analyse_source(source, entry.path)
    runs_on_load = _closure(referenced, analyses)
    for path, analysis in analyses.items():
        if analysis.error is not None:
            yield _error_finding(analysis, path in runs_on_load)
        yield from _hit_findings(analysis, runs_on_load)
    yield from _missing_relative_imports(ctx, runs_on_load, analyses)


def _error_finding(analysis: FileAnalysis, runs_on_load: bool) -> Finding:
    if analysis.error_rule == R_PARSE_LIMIT:
        consequence = ("its syntax tree could not be built, so only the names in its tokens were checked and "
                       "whatever it hides in that structure is unseen")
    else:
        consequence = "it could not be analysed (names in its tokens were still checked)"
    return Finding(analysis.error_rule, analysis.error_severity, f"{analysis.path}: {analysis.error}; {consequence}",
                   location=Location(path=analysis.path, line=analysis.line),
                   evidence={"problem": analysis.error, "runs_on_load": runs_on_load})


def _closure(referenced: set[str], analyses: dict[str, FileAnalysis]) -> set[str]:
    """Files that run on load: those auto_map names plus what they import relatively (as transformers copies)."""
    done: set[str] = set()
    todo = list(referenced)
    while todo:
        path = todo.pop()
        if path in done:
            continue
        done.add(path)
        analysis = analyses.get(path)
        if analysis is not None:
            parent = PurePosixPath(path).parent
            todo.extend(str(parent / f"{m}.py") for m in analysis.relative_imports)
    return done


def _missing_relative_imports(ctx: StaticContext, runs_on_load: set[str],
                              analyses: dict[str, FileAnalysis]) -> Iterable[Finding]:
    """A module that runs on load importing a sibling that is absent: unseen code (or a broken model)."""
    for path in sorted(runs_on_load):
        analysis = analyses.get(path)
        if analysis is None:
            continue
        parent = PurePosixPath(path).parent
        for module in analysis.relative_imports:
            rel = str(parent / f"{module}.py")
            if ctx.find(rel) is None and ctx.find(str(parent / module / "__init__.py")) is None:
                yield Finding(R_MISSING, Severity.MEDIUM,
                              f"{path} imports .{module}, but {rel} is not in the model folder; transformers "
                              f"would fetch or fail on code this scan did not see",
                              location=Location(path=path), evidence={"module": rel, "imported_by": path})
