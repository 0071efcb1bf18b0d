"""Reading Python source without running it: constant strings, deep trees, and tokens.

``custom_code.py`` decides what is dangerous; this module answers two narrower questions in ways a
shipped file cannot turn into a crash or a hang: "what text does this expression spell" (so
``getattr(os, "sys" + "tem")`` is seen as ``os.system``) and "which names does this file use" when
its syntax tree cannot be built. Every helper here is iterative or depth-bounded, because a model may
nest an expression thousands deep precisely to knock the analysis over.
"""

from __future__ import annotations

import ast
import io
import re
import string
import tokenize
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

MAX_FOLD_DEPTH = 24
"""Deepest expression a constant string is folded through; deeper ones are treated as unknown."""
MAX_FOLDED_CHARS = 4096
"""Longest folded string kept: attribute and module names are short, a longer result is not one."""
MAX_WALK_NODES = 20_000
"""Nodes a helper inspects below one expression, so nested calls cannot make the scan quadratic."""
MAX_TOKEN_RESTARTS = 64
"""Times the token scan resumes after a line it cannot tokenize before it gives up on the rest."""
MAX_IMPORT_TOKENS = 4096
"""Tokens kept from one import statement (an import is short; a longer one is cut, not stored)."""

_PERCENT = re.compile(r"%(.)", re.DOTALL)
_STR_METHODS: dict[str, Callable[[str], str]] = {
    "decode": lambda s: s, "lower": str.lower, "upper": str.upper, "strip": str.strip}


# --------------------------------------------------------------------------------------------------
# Trees


def walk_with_parents(tree: ast.AST) -> Iterator[tuple[ast.AST, ast.AST | None]]:
    """Every node in source order with its parent, using an explicit stack (no recursion limit)."""
    stack: list[tuple[ast.AST, ast.AST | None]] = [(tree, None)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        children = list(ast.iter_child_nodes(node))
        stack.extend((child, node) for child in reversed(children))


def walk_bounded(node: ast.AST, limit: int = MAX_WALK_NODES) -> Iterator[ast.AST]:
    """``ast.walk`` that stops after ``limit`` nodes: helpers look near a call, not at a whole file."""
    for count, sub in enumerate(ast.walk(node)):
        if count >= limit:
            return
        yield sub


# --------------------------------------------------------------------------------------------------
# Constant strings


def fold_str(node: ast.AST, names: Mapping[str, str], depth: int = 0) -> str | None:
    """The string a constant expression evaluates to, or None when it depends on anything at run time.

    Covers the spellings used to hide a name from a plain literal match: concatenation, ``%s`` and
    ``str.format`` with positional fields, f-strings, ``sep.join([...])``, ``[::-1]``, ``chr(115)``,
    ``b"..".decode()`` and names bound to such strings (``names``). Nothing is evaluated: each form is
    rebuilt here from literals, and results longer than ``MAX_FOLDED_CHARS`` are dropped.
    """
    if depth > MAX_FOLD_DEPTH:
        return None
    value = _fold(node, names, depth + 1)
    return value if value is None or len(value) <= MAX_FOLDED_CHARS else None


def _fold(node: ast.AST, names: Mapping[str, str], depth: int) -> str | None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return node.value
        return node.value.decode("latin-1") if isinstance(node.value, bytes) else None
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.BinOp):
        return _fold_binop(node, names, depth)
    if isinstance(node, ast.JoinedStr):
        return _fold_fstring(node, names, depth)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        return _fold_reverse(node, names, depth)
    if isinstance(node, ast.Call):
        return _fold_call(node, names, depth)
    return None


def _fold_binop(node: ast.BinOp, names: Mapping[str, str], depth: int) -> str | None:
    left = fold_str(node.left, names, depth)
    if left is None:
        return None
    if isinstance(node.op, ast.Add):
        right = fold_str(node.right, names, depth)
        return None if right is None else left + right
    if isinstance(node.op, ast.Mod):
        items = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
        args = [fold_str(item, names, depth) for item in items]
        return None if any(a is None for a in args) else _percent_s(left, [a for a in args if a is not None])
    return None


def _percent_s(template: str, args: list[str]) -> str | None:
    """``template % args`` for ``%s`` and ``%%`` only (widths could make huge strings; other codes need numbers)."""
    pieces = iter(args)
    try:
        out = _PERCENT.sub(lambda m: "%" if m.group(1) == "%" else _next_s(m.group(1), pieces), template)
    except ValueError:
        return None
    return None if next(pieces, None) is not None else out


def _next_s(code: str, pieces: Iterator[str]) -> str:
    value = next(pieces, None)
    if code != "s" or value is None:
        raise ValueError(code)
    return value


def _fold_fstring(node: ast.JoinedStr, names: Mapping[str, str], depth: int) -> str | None:
    parts: list[str] = []
    for value in node.values:
        if isinstance(value, ast.FormattedValue):
            if value.format_spec is not None or value.conversion not in (-1, ord("s")):
                return None
            text = fold_str(value.value, names, depth)
        else:
            text = fold_str(value, names, depth)
        if text is None:
            return None
        parts.append(text)
    return "".join(parts)


def _fold_reverse(node: ast.Subscript, names: Mapping[str, str], depth: int) -> str | None:
    """``"metsys"[::-1]``: only the full reversal, the one slice used to hide names."""
    piece = node.slice
    assert isinstance(piece, ast.Slice)
    step = piece.step
    if piece.lower is not None or piece.upper is not None:
        return None
    minus_one = (isinstance(step, ast.Constant) and step.value == -1) or (
        isinstance(step, ast.UnaryOp) and isinstance(step.op, ast.USub) and isinstance(step.operand, ast.Constant)
        and step.operand.value == 1)
    if minus_one:
        text = fold_str(node.value, names, depth)
        return None if text is None else text[::-1]
    return None


def _fold_call(node: ast.Call, names: Mapping[str, str], depth: int) -> str | None:
    func = node.func
    if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
        code = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
        return chr(code) if isinstance(code, int) and 0 <= code < 0x110000 else None
    if isinstance(func, ast.Name) and func.id == "str" and len(node.args) == 1:
        return fold_str(node.args[0], names, depth)
    if not isinstance(func, ast.Attribute) or node.keywords:
        return None
    owner = fold_str(func.value, names, depth)
    if owner is None:
        return None
    if func.attr == "join" and len(node.args) == 1:
        items = _fold_items(node.args[0], names, depth)
        return None if items is None else owner.join(items)
    if func.attr == "format":
        args = [fold_str(a, names, depth) for a in node.args]
        return None if any(a is None for a in args) else _format_positional(owner, [a or "" for a in args])
    if func.attr in _STR_METHODS and not node.args:
        return _STR_METHODS[func.attr](owner)
    return None


def _fold_items(node: ast.AST, names: Mapping[str, str], depth: int) -> list[str] | None:
    """Items ``"".join`` receives: a literal list/tuple, a string, or ``reversed(...)`` of either."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "reversed" \
            and len(node.args) == 1:
        items = _fold_items(node.args[0], names, depth + 1)
        return None if items is None else items[::-1]
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [fold_str(e, names, depth) for e in node.elts]
        return None if any(v is None for v in values) else [v or "" for v in values]
    text = fold_str(node, names, depth)
    return None if text is None else list(text)


def _format_positional(template: str, args: list[str]) -> str | None:
    """``template.format(*args)`` for bare ``{}`` / ``{0}`` fields only (specs could make huge strings)."""
    out: list[str] = []
    auto = 0
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    for literal, name, spec, conversion in parsed:
        out.append(literal)
        if name is None:
            continue
        if spec or conversion or not (name == "" or name.isdigit()):
            return None
        index = auto if name == "" else int(name)
        auto += 1
        if index >= len(args):
            return None
        out.append(args[index])
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Tokens: what can still be seen when the syntax tree cannot be built


@dataclass
class TokenScan:
    """Names a file uses, read from its tokens (no syntax tree needed)."""

    names: list[tuple[str, int, bool]] = field(default_factory=list)
    """Dotted names as written, with their line and whether a call follows (``os.system`` then ``(``)."""
    imports: list[tuple[str, str | None, str | None, int]] = field(default_factory=list)
    """Import statements: (module, imported name or None for ``import m``, bound alias, line)."""
    problems: list[str] = field(default_factory=list)
    """Lines the tokenizer could not read (the scan resumed after each, up to MAX_TOKEN_RESTARTS)."""


_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}


def scan_tokens(source: str) -> TokenScan:
    """Dotted names and imports from the token stream, resuming after lines that do not tokenize."""
    scan = TokenScan()
    reader = _ChainReader(scan)
    lines = source.splitlines(keepends=True)
    start = 0
    for _ in range(MAX_TOKEN_RESTARTS + 1):
        try:
            for tok in tokenize.generate_tokens(io.StringIO("".join(lines[start:])).readline):
                reader.feed(tok, start)
            reader.flush()
            return scan
        except (tokenize.TokenError, SyntaxError) as exc:
            reader.flush()
            row = exc.lineno if isinstance(exc, SyntaxError) else exc.args[1][0]
            bad = start + max(int(row or 1), 1)
            scan.problems.append(f"line {bad}: {exc.args[0]}")
            if bad >= len(lines):
                return scan
            start = bad  # resume on the line after the one the tokenizer stopped at
    scan.problems.append(f"gave up after {MAX_TOKEN_RESTARTS} unreadable lines")
    return scan


class _ChainReader:
    """Turns tokens into dotted-name chains (``a . b . c`` then maybe ``(``) and import statements."""

    def __init__(self, scan: TokenScan) -> None:
        self.scan = scan
        self.chain: list[str] = []
        self.line = 0
        self.dot = False
        self.statement: list[str] | None = None  # tokens of an import statement being read
        self.statement_line = 0
        self.at_start = True
        self.skip_next = False

    def feed(self, tok: tokenize.TokenInfo, offset: int) -> None:
        if tok.type in _SKIP:
            return
        line = tok.start[0] + offset
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or tok.string == ";":
            self.flush()
            self.at_start = True
            return
        if self.at_start and tok.type == tokenize.NAME and tok.string in ("import", "from"):
            self.statement, self.statement_line = [], line
        self.at_start = False
        if self.statement is not None:
            if len(self.statement) < MAX_IMPORT_TOKENS:
                self.statement.append(tok.string)
            return
        self._name_token(tok, line)

    def _name_token(self, tok: tokenize.TokenInfo, line: int) -> None:
        if tok.type == tokenize.NAME:
            if self.skip_next:  # the name after def/class is a definition, not a use
                self.skip_next = False
                return
            if tok.string in ("def", "class"):
                self._emit(False)
                self.skip_next = True
            elif self.dot and self.chain:
                self.chain.append(tok.string)
                self.dot = False
            else:
                self._emit(False)
                self.chain, self.line = [tok.string], line
        elif tok.string == "." and self.chain and not self.dot:
            self.dot = True
        else:
            self._emit(tok.string == "(")

    def _emit(self, called: bool) -> None:
        if self.chain:
            self.scan.names.append((".".join(self.chain), self.line, called))
        self.chain, self.dot = [], False

    def flush(self) -> None:
        self._emit(False)
        if self.statement is not None:
            self.scan.imports.extend(_parse_import(self.statement, self.statement_line))
        self.statement = None
        self.skip_next = False


def _parse_import(words: list[str], line: int) -> list[tuple[str, str | None, str | None, int]]:
    """``import a.b as c, d`` and ``from m import x as y, *`` from their token strings."""
    words = [w for w in words if w not in ("(", ")")]
    if words[:1] == ["from"] and "import" in words:
        cut = words.index("import")
        module = "".join(words[1:cut])
        if module.startswith("."):
            return []
        return [(module, name, alias, line) for name, alias in _names(words[cut + 1:])]
    if words[:1] == ["import"]:
        return [(name, None, alias, line) for name, alias in _names(words[1:])]
    return []


def _names(words: list[str]) -> Iterator[tuple[str, str | None]]:
    """Split ``a . b as c , d`` into (dotted, alias) pairs."""
    text = " ".join(words).replace(" . ", ".")
    for item in text.split(","):
        parts = item.split()
        if not parts:
            continue
        alias = parts[2] if len(parts) == 3 and parts[1] == "as" else None
        yield parts[0], alias
