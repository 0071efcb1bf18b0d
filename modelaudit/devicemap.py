"""Placing a model that does not fit one GPU: a device map planned by accelerate on an empty model.

``loading.load_model`` asks here when it loads onto CUDA (``plan_if_needed`` with ``cuda_budgets``): the
weights' bytes (from the config, on an empty "meta" model that allocates nothing) against each device's
budget. A model that fits GPU 0 loads
there as before. One that does not is spread with ``accelerate.infer_auto_device_map`` over the GPUs
first, then CPU memory, then a temporary folder on disk (accelerate's order); the model's decoder layers
are never split. Weights outside the GPUs are offloaded (moved to the GPU for each forward pass), which
makes the behaviour stages much slower, so such a scan says so in its coverage notes.

Each GPU's budget keeps back memory for the batches (``ACTIVATION_RESERVE_FRACTION``, at least
``MIN_ACTIVATION_RESERVE``): a plan that filled the GPUs with weights would leave no room to run them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Device = int | str
"""A device as accelerate names it: a GPU index, ``"cpu"`` or ``"disk"``."""

ACTIVATION_RESERVE_FRACTION = 0.2
"""Share of each GPU's free memory kept for batch activations, the KV cache and logits when planning."""
MIN_ACTIVATION_RESERVE = 2 * 2**30
"""At least this much of each GPU is kept for them (a 7B model's batches of a few thousand tokens)."""
CPU_FRACTION = 0.8
"""Share of the available CPU memory that offloaded weights may take (the rest: tokenizer, reports, Python)."""


@dataclass(frozen=True)
class DevicePlan:
    """Where each part of a model goes when it does not fit one device."""

    device_map: dict[str, Device]
    """Module name -> device, as ``from_pretrained(device_map=...)`` and ``accelerate.dispatch_model`` take it."""
    max_memory: dict[Device, int]
    """The budget in bytes each device was planned with."""
    weight_bytes: int
    """The model's weights at the loading dtype."""

    @property
    def devices(self) -> list[Device]:
        """The devices the plan uses, in the order of the model's modules."""
        return list(dict.fromkeys(self.device_map.values()))

    @property
    def offloaded(self) -> list[str]:
        """Modules whose weights live off the device that runs them: on disk, or in CPU memory while a GPU runs."""
        gpu = any(isinstance(d, int) for d in self.devices)
        return [m for m, d in self.device_map.items() if d == "disk" or (d == "cpu" and gpu)]

    def note(self) -> str | None:
        """A coverage note for a scan that runs with offloaded weights (None when none are)."""
        where = sorted({str(self.device_map[m]) for m in self.offloaded})
        if not where:
            return None
        gpu = any(isinstance(d, int) for d in self.devices)
        size = (f"{self.weight_bytes / 2**30:.1f} GiB" if self.weight_bytes >= 2**30
                else f"{self.weight_bytes / 2**20:.1f} MiB")
        places = " and ".join("CPU memory" if w == "cpu" else w for w in where)
        return (f"the model's {size} of weights did not fit {'the GPU memory' if gpu else 'the memory it was allowed'}, "
                f"so {len(self.offloaded)} of its parts ran from {places} (offloaded), which makes the behaviour "
                f"stages much slower" + ("; a GPU with more memory, or several, avoids it" if gpu else ""))


def empty_model(config: Any) -> Any:
    """The causal LM of ``config`` on the meta device: shapes and module structure, no memory, no remote code."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    model.tie_weights()
    return model


def weight_bytes(model: Any, dtype: Any) -> int:
    """Bytes of the (possibly empty) model's parameters at ``dtype``, tied weights counted once."""
    import torch

    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        size = torch.empty((), dtype=dtype).element_size() if p.is_floating_point() else p.element_size()
        total += p.numel() * size
    return total


def plan_device_map(model: Any, *, dtype: Any, max_memory: Mapping[Device, int]) -> DevicePlan:
    """Plan ``model`` (an empty one from ``empty_model``, or a loaded one) onto the devices of ``max_memory``
    (bytes each; GPUs by index, then ``"cpu"``; what fits nowhere goes to ``"disk"``)."""
    from accelerate import infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    placed = infer_auto_device_map(model, max_memory=dict(max_memory), no_split_module_classes=no_split, dtype=dtype)
    return DevicePlan(device_map=dict(placed), max_memory=dict(max_memory), weight_bytes=weight_bytes(model, dtype))


def budgets_from_free(gpu_free: Sequence[int], cpu_available: int) -> dict[Device, int]:
    """Each GPU's free bytes less the activation reserve, and the CPU's share of its available memory."""
    budgets: dict[Device, int] = {}
    for i, free in enumerate(gpu_free):
        budgets[i] = max(0, int(free - max(MIN_ACTIVATION_RESERVE, ACTIVATION_RESERVE_FRACTION * free)))
    budgets["cpu"] = int(cpu_available * CPU_FRACTION)
    return budgets


def cuda_budgets() -> dict[Device, int]:
    """``budgets_from_free`` for this machine's GPUs and CPU memory, as accelerate reads them (each GPU's
    free memory, the CPU's available memory). CUDA only; untested without a GPU."""
    from accelerate.utils import get_max_memory

    free = get_max_memory()
    gpus = sorted(k for k in free if isinstance(k, int))
    return budgets_from_free([int(free[i]) for i in gpus], int(free.get("cpu", 0)))


def plan_if_needed(model: Any, *, dtype: Any, max_memory: Mapping[Device, int]) -> DevicePlan | None:
    """None when ``model``'s weights fit the budget of GPU 0 (an ordinary load onto it), else the plan over
    every device of ``max_memory``."""
    if weight_bytes(model, dtype) <= max_memory.get(0, 0):
        return None
    return plan_device_map(model, dtype=dtype, max_memory=max_memory)
