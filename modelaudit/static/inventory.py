"""File-level checks on the inventory: executables, escaping symlinks, lying extensions, pickle-only weights.

These need no parsing beyond the sniffed content type, so they are cheap and run on every file. Links the
inventory refused to follow (``target.symlink_escape`` decides) reach this check only through
``StaticContext.unread``; it reports them and opens nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from modelaudit.findings import Finding, Location, Severity
from modelaudit.static.base import StaticContext, static_check
from modelaudit.target import LINK_OUTSIDE, symlink_escape

# What each extension promises, for extensions whose promise we can check by bytes.
# (.safetensors is checked by the safetensors check, which also parses the header.)
_EXPECTED = {
    ".gguf": {"gguf"},
    ".json": {"json"},
    ".npy": {"numpy"},
    ".npz": {"zip"},
    ".bin": {"pickle", "pytorch-zip", "binary"},
    ".pt": {"pickle", "pytorch-zip"},
    ".pth": {"pickle", "pytorch-zip"},
    ".ckpt": {"pickle", "pytorch-zip"},
    ".pkl": {"pickle"},
    ".pickle": {"pickle"},
}
_NATIVE_CODE = {"elf": "ELF executable or shared library", "pe": "Windows PE executable or DLL",
                "macho": "Mach-O executable or library"}
_SCRIPT_SUFFIXES = {".sh", ".bash", ".bat", ".cmd", ".ps1", ".exe", ".dll", ".so", ".dylib", ".js", ".vbs"}
_PICKLE_TYPES = {"pickle", "pytorch-zip"}
_SAFE_WEIGHT_TYPES = {"safetensors", "gguf"}


@static_check("static.files", rules={
    "static.files.native-code": "A native executable or shared library ships with the model",
    "static.files.script": "A script file ships with the model",
    "static.files.extension-mismatch": "A file's bytes contradict its extension",
    "static.files.symlink-escape": "A symbolic link points outside the model folder (never read)",
    "static.files.broken-link": "A symbolic link that dangles or loops",
    "static.files.not-hashed": "A file over a read limit was not hashed; the report has no digest for it",
    "static.files.pickle-only-weights": "Weights exist only in a pickle-based format",
    "static.files.empty": "An empty file where a model file is expected",
})
def check_files(ctx: StaticContext) -> Iterator[Finding]:
    """Flag files that have no business in a model repository or that lie about what they are."""
    for entry in ctx.files:
        loc = Location(path=entry.path)
        suffix = Path(entry.path).suffix.lower()
        if entry.content_type in _NATIVE_CODE:
            yield Finding("static.files.native-code", Severity.HIGH,
                          f"{entry.path} is a {_NATIVE_CODE[entry.content_type]}; a model needs no native code",
                          location=loc, evidence={"content_type": entry.content_type, "sha256": entry.sha256})
        elif suffix in _SCRIPT_SUFFIXES or entry.content_type == "script":
            what = f"a {suffix} file" if suffix in _SCRIPT_SUFFIXES else "a script (its first line names an interpreter)"
            yield Finding("static.files.script", Severity.MEDIUM,
                          f"{entry.path} is {what}; review it before anything runs it",
                          location=loc, evidence={"suffix": suffix, "content_type": entry.content_type})
        expected = _EXPECTED.get(suffix)
        if entry.content_type == "empty":
            if suffix in _EXPECTED or suffix == ".safetensors":
                yield Finding("static.files.empty", Severity.MEDIUM, f"{entry.path} is empty",
                              location=loc, evidence={"size": 0})
        elif expected is not None and entry.content_type not in expected:
            severity = Severity.HIGH if entry.content_type in _PICKLE_TYPES | {"elf", "pe", "macho"} else Severity.MEDIUM
            yield Finding("static.files.extension-mismatch", severity,
                          f"{entry.path} has extension {suffix} but its bytes are {entry.content_type}",
                          location=loc, evidence={"extension": suffix, "content_type": entry.content_type})
        if entry.sha256 is None:
            yield Finding("static.files.not-hashed", Severity.MEDIUM,
                          f"{entry.path} ({entry.size} bytes) has no digest in this report: {entry.unread}; "
                          "raise the read limit to verify it", location=loc,
                          evidence={"size": entry.size, "reason": entry.unread})
    yield from _unread_links(ctx)
    weight_types = {f.content_type for f in ctx.files}
    if weight_types & _PICKLE_TYPES and not weight_types & _SAFE_WEIGHT_TYPES:
        pickles = [f.path for f in ctx.files if f.content_type in _PICKLE_TYPES]
        yield Finding("static.files.pickle-only-weights", Severity.LOW,
                      "weights ship only in pickle-based formats; loading them needs weights_only=True and "
                      "a clean pickle scan (prefer safetensors)",
                      location=Location(path=pickles[0]), evidence={"files": pickles})


def _unread_links(ctx: StaticContext) -> Iterator[Finding]:
    """Links out of the folder are critical: any loader following one reads a host file (``/etc/shadow``) as
    model data, so the model stages do not load the model; dangling and looping links are only named."""
    for entry in ctx.unread:
        loc = Location(path=entry.path)
        if entry.content_type == LINK_OUTSIDE:
            try:
                target = symlink_escape(ctx.root, entry.path)
            except (OSError, RuntimeError):
                target = None
            yield Finding("static.files.symlink-escape", Severity.CRITICAL,
                          f"{entry.path} is a symbolic link to {target or 'a path'} outside the model folder; "
                          "it was not read, and loading the model would read that file",
                          location=loc, evidence={"target": target})
        else:
            yield Finding("static.files.broken-link", Severity.LOW, f"{entry.path}: {entry.unread}",
                          location=loc, evidence={"content_type": entry.content_type})
