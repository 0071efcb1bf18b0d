"""The rule catalogue: every rule id the registered checks and stages can emit, with what to do about it.

Which rules exist comes from the code (each static check and stage declares ``rules=`` when it registers),
so the catalogue can never list a rule that nothing emits or miss one that something does. The longer
text (the severities a rule is emitted at, why it matters, how to fix it) lives in
``modelaudit/data/rules.json`` keyed by rule id; a unit test keeps the two in step. ``modelaudit rules``,
the SARIF rule help and the HTML report all read it from here, so they say the same thing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from modelaudit import registry
from modelaudit.errors import UsageError
from modelaudit.findings import Severity
from modelaudit.prompts import load_json

DATA_FILE = "rules.json"
"""Long rule text in ``modelaudit/data/``, keyed by rule id."""
MAX_SUGGESTIONS = 3
"""Nearest rule ids offered for a misspelt one."""
SUGGESTION_CUTOFF = 0.6
"""How similar (``difflib`` ratio) a rule id must be to be suggested."""
STATIC_STAGE = "static"
"""Stage whose rules are declared per static check rather than by the stage itself."""


@dataclass(frozen=True)
class RuleInfo:
    """One rule: what the code declares, plus the catalogue's explanation."""

    id: str
    summary: str
    """One line, as declared by the check or stage that emits the rule."""
    stage: str
    """Scan stage whose findings carry the rule (``static``, ``weights``, ``triggers``, ``probes``)."""
    source: str
    """The registered check or stage that declares it (``static.pickle``, ``triggers``...)."""
    severities: tuple[Severity, ...] = ()
    """Severities the rule is emitted at, worst first; empty when the catalogue has no entry (a plugin's rule)."""
    why: str = ""
    fix: str = ""

    @property
    def severity_text(self) -> str:
        """``high``, or ``high/medium`` (worst first) when the severity depends on what was found."""
        return "/".join(s.value for s in self.severities) or "undocumented"

    @property
    def suppress(self) -> str:
        """How to accept the rule's findings in a policy file (a deliberate, reviewed decision)."""
        return (f'Add it to the policy file (--policy modelaudit.toml): [policy] allow_rules = ["{self.id}"]; '
                f'a prefix such as "{self.id.rsplit(".", 1)[0]}" accepts every rule under it.')

    def help_text(self) -> str:
        """Plain-text help: meaning, why it matters, how to fix, how to suppress."""
        parts = [f"{self.summary}.",
                 f"Severity: {self.severity_text}. Stage: {self.stage} ({self.source})."]
        if self.why:
            parts.append(f"Why it matters: {self.why}")
        if self.fix:
            parts.append(f"How to fix: {self.fix}")
        parts.append(f"How to suppress: {self.suppress}")
        return "\n\n".join(parts)

    def help_markdown(self) -> str:
        """The same help as Markdown (SARIF ``help.markdown``; GitHub shows it beside an alert)."""
        parts = [f"**{self.id}**: {self.summary}", f"Severity: `{self.severity_text}` · stage `{self.stage}` "
                 f"(`{self.source}`)"]
        if self.why:
            parts.append(f"**Why it matters.** {self.why}")
        if self.fix:
            parts.append(f"**How to fix.** {self.fix}")
        parts.append(f"**How to suppress.** Add it to the policy file: `allow_rules = [\"{self.id}\"]` "
                     "under `[policy]` (a dotted prefix accepts every rule under it).")
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "severity": [s.value for s in self.severities], "stage": self.stage,
                "source": self.source, "summary": self.summary, "why": self.why, "fix": self.fix,
                "suppress": self.suppress}


def declared_rules() -> dict[str, tuple[str, str, str]]:
    """Rule id -> (summary, stage, declaring plugin), from every registry (the first declaration wins)."""
    out: dict[str, tuple[str, str, str]] = {}
    for reg in vars(registry).values():
        if not isinstance(reg, registry.Registry):
            continue
        for plugin in reg:
            for rule_id, text in plugin.rules.items():
                if reg is registry.stages:
                    stage = plugin.name
                elif reg is registry.static_checks:
                    stage = STATIC_STAGE
                else:
                    stage = rule_id.split(".", 1)[0]
                out.setdefault(rule_id, (text, stage, plugin.name))
    return out


def catalogue_text() -> dict[str, dict[str, object]]:
    """The shipped long text per rule id (severity list, why, fix)."""
    data: dict[str, dict[str, object]] = load_json(DATA_FILE)
    return data


def _info(rule_id: str, declared: tuple[str, str, str], text: dict[str, dict[str, object]]) -> RuleInfo:
    summary, stage, source = declared
    entry = text.get(rule_id, {})
    listed = entry.get("severity", [])
    severities = tuple(Severity(str(s)) for s in listed) if isinstance(listed, list) else ()
    return RuleInfo(id=rule_id, summary=summary.rstrip("."), stage=stage, source=source, severities=severities,
                    why=str(entry.get("why", "")), fix=str(entry.get("fix", "")))


def catalogue() -> dict[str, RuleInfo]:
    """Every rule the installed checks and stages can emit, sorted by id."""
    text = catalogue_text()
    return {rule_id: _info(rule_id, declared, text) for rule_id, declared in sorted(declared_rules().items())}


def rule_text(rule_id: str, fallback: dict[str, str]) -> str:
    """A rule's full help for a report; ``fallback`` (a writer's ``rules`` map) for a rule no check declares."""
    declared = declared_rules().get(rule_id)
    return _info(rule_id, declared, catalogue_text()).help_text() if declared else fallback.get(rule_id, "")


def lookup(rule_id: str) -> RuleInfo:
    """The catalogue entry of one rule.

    Raises:
        UsageError: no check or stage declares ``rule_id`` (the message names the nearest ids).
    """
    rules = catalogue()
    if rule_id in rules:
        return rules[rule_id]
    near = difflib.get_close_matches(rule_id, list(rules), n=MAX_SUGGESTIONS, cutoff=SUGGESTION_CUTOFF)
    near = near or [r for r in rules if rule_id and rule_id in r][:MAX_SUGGESTIONS]
    hint = f"; did you mean {', '.join(near)}?" if near else "; `modelaudit rules` lists them all"
    raise UsageError(f"unknown rule {rule_id!r}{hint}")
