"""SmolLM2-135M end to end: a real GGUF file scans clean and loads through the safe loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelaudit.api import ScanConfig, scan
from modelaudit.findings import Verdict
from modelaudit.loading import load_model

pytestmark = pytest.mark.slow


def test_gguf_file_scans_and_passes_static_checks(smollm2_gguf: Path) -> None:
    report = scan(str(smollm2_gguf), config=ScanConfig(stages=("static",)))
    assert report.target.kind == "file"
    assert report.target.files[0].content_type == "gguf"
    assert report.verdict is Verdict.PASS, [(f.rule_id, f.message) for f in report.findings]


def test_gguf_loads_dequantized_and_generates(smollm2_gguf: Path) -> None:
    lm = load_model(smollm2_gguf, device="cpu")
    assert lm.weights_format == "gguf"
    assert lm.model.config.num_hidden_layers == 30
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = lm.model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text
