"""Config and model-card check: real config.json files (saved by transformers), real safetensors, real cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelaudit.findings import Finding, Severity
from modelaudit.static.base import StaticContext, run_static_checks
from modelaudit.static.config_card import absurd_values, check_config_card, claimed_base_model, read_card
from modelaudit.target import inventory

CARD = """---
license: apache-2.0
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
base_model_relation: finetune
tags:
  - text-generation
---

# tiny-chat

This model is a fine-tuned version of
[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct).
"""


def _llama_config(folder: Path, **overrides: object) -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    config.save_pretrained(folder)
    if overrides:
        data = json.loads((folder / "config.json").read_text())
        data.update(overrides)
        (folder / "config.json").write_text(json.dumps(data))


def _model(folder: Path, *, card: str | None = CARD, weights: bool = True, **overrides: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _llama_config(folder, **overrides)
    if weights:
        save_file({"model.embed_tokens.weight": torch.zeros(64, 16)}, str(folder / "model.safetensors"))
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def _ctx(folder: Path) -> StaticContext:
    return StaticContext(root=folder, files=inventory(folder))


def _scan(folder: Path) -> list[Finding]:
    return list(check_config_card(_ctx(folder)))


def _rules(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.rule_id, []).append(f)
    return out


def test_benign_model_only_records_the_base_model(tmp_path: Path) -> None:
    findings = _scan(_model(tmp_path))
    assert [(f.rule_id, f.severity) for f in findings] == [("static.config-card.base-model", Severity.INFO)]
    assert findings[0].evidence["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert findings[0].evidence["relation"] == "finetune"
    json.dumps([f.evidence for f in findings])


def test_claimed_base_model_sources(tmp_path: Path) -> None:
    assert claimed_base_model(_ctx(_model(tmp_path / "card"))) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    body_only = _model(tmp_path / "body", card=CARD.split("---\n", 2)[2])
    assert claimed_base_model(_ctx(body_only)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    adapter = _model(tmp_path / "adapter", card=None)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base-7b"}))
    assert claimed_base_model(_ctx(adapter)) == "org/base-7b"
    assert claimed_base_model(_ctx(_model(tmp_path / "none", card=None))) is None


def test_config_missing_invalid_and_not_an_object(tmp_path: Path) -> None:
    missing = _model(tmp_path / "missing")
    (missing / "config.json").unlink()
    assert [f.severity for f in _rules(_scan(missing))["static.config-card.config-missing"]] == [Severity.LOW]
    invalid = _model(tmp_path / "invalid")
    (invalid / "config.json").write_text("{not json")
    (finding,) = _rules(_scan(invalid))["static.config-card.config-invalid"]
    assert finding.severity is Severity.MEDIUM and finding.location.path == "config.json"
    array = _model(tmp_path / "array")
    (array / "config.json").write_text("[1, 2, 3]")
    (finding,) = _rules(_scan(array))["static.config-card.config-invalid"]
    assert "list" in finding.message


def test_gguf_only_target_needs_no_config(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16)
    rules = _rules(_scan(tmp_path))
    assert "static.config-card.config-missing" not in rules
    assert set(rules) == {"static.config-card.license-missing", "static.config-card.no-provenance"}


def test_architecture_without_weights(tmp_path: Path) -> None:
    (finding,) = _rules(_scan(_model(tmp_path, weights=False)))["static.config-card.missing-weights"]
    assert finding.severity is Severity.MEDIUM and finding.location.member == "architectures"


def test_index_with_missing_and_escaping_shards(tmp_path: Path) -> None:
    folder = _model(tmp_path, weights=False)
    torch.save({"a": torch.zeros(2)}, folder / "pytorch_model-00001-of-00002.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin",
        "c": "../../outside/evil.bin"}}))
    rules = _rules(_scan(folder))
    (missing,) = rules["static.config-card.missing-weights"]
    assert missing.evidence["missing"] == ["pytorch_model-00002-of-00002.bin"]
    (escape,) = rules["static.config-card.weight-path-escape"]
    assert escape.severity is Severity.HIGH and escape.evidence["shards"] == ["../../outside/evil.bin"]


def test_safetensors_index_problems_are_reported_once(tmp_path: Path) -> None:
    folder = _model(tmp_path, weights=False)
    save_file({"a": torch.zeros(2)}, str(folder / "model-00001-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    rules = _rules(run_static_checks(_ctx(folder)).findings)
    assert [f.rule_id for f in rules.get("static.safetensors.index-missing-shard", [])] == \
        ["static.safetensors.index-missing-shard"]
    assert "static.config-card.missing-weights" not in rules  # one shard is present and the index is the owner's


def test_bin_weights_of_unknown_format(tmp_path: Path) -> None:
    folder = _model(tmp_path, weights=False)
    (folder / "pytorch_model.bin").write_bytes(bytes(range(256)) * 4)
    rules = _rules(_scan(folder))
    (finding,) = rules["static.config-card.unknown-weight-format"]
    assert finding.location.path == "pytorch_model.bin" and finding.evidence["content_type"] == "binary"
    assert "static.config-card.missing-weights" in rules  # a blob of no known format is no loadable weight file


def test_unknown_model_type_and_architecture(tmp_path: Path) -> None:
    folder = _model(tmp_path, model_type="totally-new-arch", architectures=["EvilForCausalLM"])
    rules = _rules(_scan(folder))
    assert rules["static.config-card.unknown-model-type"][0].severity is Severity.LOW
    assert rules["static.config-card.unknown-architecture"][0].evidence["architecture"] == "EvilForCausalLM"


def test_architecture_of_another_model_type(tmp_path: Path) -> None:
    (finding,) = _rules(_scan(_model(tmp_path, architectures=["BertForMaskedLM"])))[
        "static.config-card.architecture-mismatch"]
    assert finding.evidence["model_type"] == "llama" and "bert" in finding.evidence["expected_model_types"]


def test_auto_map_is_noted_and_custom_types_are_info(tmp_path: Path) -> None:
    folder = _model(tmp_path, model_type="tiny-custom", architectures=["TinyForCausalLM"],
                    auto_map={"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    rules = _rules(_scan(folder))
    assert rules["static.config-card.remote-code"][0].severity is Severity.INFO
    assert rules["static.config-card.unknown-model-type"][0].severity is Severity.INFO
    assert "static.config-card.unknown-architecture" not in rules


@pytest.mark.parametrize("key, value", [
    ("vocab_size", -5), ("hidden_size", 0), ("num_hidden_layers", 10 ** 9), ("vocab_size", 1e12),
    ("num_attention_heads", "8"), ("intermediate_size", True),
])
def test_absurd_values(tmp_path: Path, key: str, value: object) -> None:
    (finding,) = [f for f in _rules(_scan(_model(tmp_path, **{key: value})))["static.config-card.absurd-value"]
                  if f.evidence["key"] == key]
    assert finding.severity is Severity.MEDIUM
    json.dumps(finding.evidence)


def test_absurd_parameter_count_and_nested_configs() -> None:
    found = {k for k, _, _ in absurd_values({"hidden_size": 900_000, "num_hidden_layers": 9_000,
                                             "text_config": {"vocab_size": -1}, "head_dim": None})}
    assert found == {"(parameters)", "text_config.vocab_size"}
    assert list(absurd_values({"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256,
                               "max_position_embeddings": 131072, "head_dim": None})) == []


def test_card_claims_one_base_config_says_another(tmp_path: Path) -> None:
    folder = _model(tmp_path, _name_or_path="meta-llama/Llama-3.2-1B")
    (finding,) = _rules(_scan(folder))["static.config-card.base-model-mismatch"]
    assert finding.severity is Severity.MEDIUM
    assert finding.evidence["claimed"] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert finding.evidence["other"] == "meta-llama/Llama-3.2-1B"
    agreeing = _model(tmp_path / "ok", _name_or_path="huggingfacetb/smollm2-135m-instruct")
    assert "static.config-card.base-model-mismatch" not in _rules(_scan(agreeing))
    local_path = _model(tmp_path / "local", _name_or_path="/home/me/checkpoints/step-100")
    assert "static.config-card.base-model-mismatch" not in _rules(_scan(local_path))


def test_card_text_contradicts_card_metadata(tmp_path: Path) -> None:
    card = CARD.replace("base_model: HuggingFaceTB/SmolLM2-135M-Instruct", "base_model: org/other-model")
    (finding,) = _rules(_scan(_model(tmp_path, card=card)))["static.config-card.base-model-mismatch"]
    assert finding.evidence["other_source"] == "card text"


def test_own_repo_id_in_name_or_path_is_not_a_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "models--me--tiny-chat" / "snapshots" / ("a" * 40)
    folder = _model(root, _name_or_path="me/tiny-chat")
    assert "static.config-card.base-model-mismatch" not in _rules(_scan(folder))


def test_no_card_no_licence_no_provenance(tmp_path: Path) -> None:
    rules = _rules(_scan(_model(tmp_path, card=None)))
    assert rules["static.config-card.no-provenance"][0].severity is Severity.LOW
    assert rules["static.config-card.license-missing"][0].severity is Severity.LOW


def test_licence_file_satisfies_the_licence_rule(tmp_path: Path) -> None:
    folder = _model(tmp_path, card="# a card without metadata\n")
    assert "static.config-card.license-missing" in _rules(_scan(folder))
    (folder / "LICENSE").write_text("MIT License\n")
    rules = _rules(_scan(folder))
    assert "static.config-card.license-missing" not in rules
    assert "static.config-card.no-provenance" not in rules  # a card exists, even if it names no base


@pytest.mark.parametrize("card, problem", [
    ("---\nlicense: [unclosed\n---\n# x\n", "not valid YAML"),
    ("---\n- a\n- b\n---\n", "not a mapping"),
    ("---\nlicense: mit\n", "never ends"),
    ("---\nlicense: !!python/object/apply:os.system ['id']\n---\n", "not valid YAML"),
])
def test_invalid_front_matter_is_low_and_never_executes(tmp_path: Path, card: str, problem: str) -> None:
    (finding,) = _rules(_scan(_model(tmp_path, card=card)))["static.config-card.card-invalid"]
    assert finding.severity is Severity.LOW and problem in finding.message


def test_yaml_alias_bomb_is_harmless(tmp_path: Path) -> None:
    lines = ["---", "license: mit", "a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
              for i in range(9)]
    folder = _model(tmp_path, card="\n".join(lines + ["base_model: org/base", "---", ""]))
    card = read_card(_ctx(folder))
    assert card.problem is None and card.base_models == ["org/base"]
    json.dumps([f.evidence for f in _scan(folder)])


def test_runs_through_the_runner(tmp_path: Path) -> None:
    folder = _model(tmp_path, vocab_size=-1)
    result = run_static_checks(_ctx(folder), only=["static.config-card"])
    assert result.errors == [] and result.coverage.checks_run == ["static.config-card"]
    assert {f.rule_id for f in result.findings} == {"static.config-card.absurd-value", "static.config-card.base-model"}
