"""The stage contract: the registry is the only list of stages, and a stage that cannot run fails closed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import pytest

from modelaudit.api import ScanConfig, scan
from modelaudit.errors import UsageError
from modelaudit.findings import Finding, Severity, Verdict
from modelaudit.policy import EXIT_INCOMPLETE, Policy, exit_code
from modelaudit.registry import Evidence, StageSpec, register_stage, stage_names, stages, stages_with_evidence
from modelaudit.stages import StageContext, StageOutput


def finding_stage(ctx: StageContext) -> StageOutput:
    """A third-party stage that reports one behaviour finding."""
    return StageOutput(findings=[Finding("extra.odd", Severity.HIGH, "odd behaviour")],
                       section={"seen_static": "static" in ctx.report.coverage})


@pytest.fixture()
def extra_stage() -> Iterator[Callable[[str], str]]:
    """Register a stage named ``extra`` for one test and remove it afterwards (the registry is global)."""
    names: list[str] = []

    def register(entry: str) -> str:
        register_stage("extra", StageSpec(entry=entry, order=25, evidence=Evidence.BEHAVIOUR, reads_weights=False),
                       description="test stage", rules={"extra.odd": "odd"})
        names.append("extra")
        return "extra"

    yield register
    for name in names:
        stages._items.pop(name, None)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A config and a small real safetensors file: enough for the static stage to see a model."""
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
                                          encoding="utf-8")
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_built_in_stages_come_from_the_registry_in_run_order() -> None:
    assert stage_names() == ("static", "weights", "triggers", "probes")
    assert stages_with_evidence(Evidence.FILES) == {"static"}
    assert stages_with_evidence(Evidence.BEHAVIOUR) == {"weights", "triggers", "probes"}


def test_a_plugin_stage_runs_in_its_order_and_counts_as_behaviour(extra_stage, model_dir: Path) -> None:
    extra_stage(f"{__name__}:finding_stage")
    assert stage_names().index("extra") == 3  # order 25: after triggers (20), before probes (30)
    report = scan(model_dir, config=ScanConfig(stages=("static", "extra")))
    assert report.coverage["extra"].status == "ran"
    assert report.sections["extra"] == {"seen_static": True}
    assert report.verdict is Verdict.BACKDOORED


def test_a_stage_that_fails_to_import_fails_the_scan_closed(extra_stage, model_dir: Path) -> None:
    extra_stage("modelaudit_no_such_module.stage:run")
    policy = Policy(required_stages={"static", "extra"})
    report = scan(model_dir, config=ScanConfig(stages=("static", "extra"), policy=policy))
    cov = report.coverage["extra"]
    assert cov.status == "failed" and cov.required
    assert "could not be imported" in cov.notes[0] and "ModuleNotFoundError" in cov.notes[0]
    assert "not installed" not in cov.notes[0]
    assert [e.stage for e in report.errors] == ["extra"]
    assert report.verdict is Verdict.INCOMPLETE and exit_code(report, policy) == EXIT_INCOMPLETE


def test_a_missing_stage_function_is_named(extra_stage, model_dir: Path) -> None:
    extra_stage(f"{__name__}:no_such_function")
    report = scan(model_dir, config=ScanConfig(stages=("static", "extra")))
    assert "no_such_function" in report.coverage["extra"].notes[0]


def test_an_unknown_stage_is_a_usage_error(model_dir: Path) -> None:
    with pytest.raises(UsageError, match="unknown stage"):
        scan(model_dir, config=ScanConfig(stages=("static", "nonsense")))


def test_weights_without_base_is_a_stated_status_not_a_failure(model_dir: Path) -> None:
    report = scan(model_dir, config=ScanConfig(stages=("static", "weights")))
    assert report.coverage["weights"].status == "not-applicable"
    assert report.coverage["weights"].notes == ["no base model given (--base)"]


def crashing_stage(ctx: StageContext) -> StageOutput:
    """A stage that breaks while it runs, as a trigger search did on a hostile generation config."""
    raise RuntimeError("generation failed")


def test_a_requested_stage_that_crashes_makes_the_scan_incomplete_by_default(extra_stage, model_dir: Path) -> None:
    """Fail closed: every stage the scan was asked to run is required unless a policy says otherwise."""
    extra_stage(f"{__name__}:crashing_stage")
    report = scan(model_dir, config=ScanConfig(stages=("static", "extra")))
    assert report.coverage["extra"].status == "failed" and report.coverage["extra"].required
    assert report.verdict is Verdict.INCOMPLETE and exit_code(report, Policy()) == EXIT_INCOMPLETE
    lenient = Policy(required_stages={"static"})
    report = scan(model_dir, config=ScanConfig(stages=("static", "extra"), policy=lenient))
    assert not report.coverage["extra"].required and report.verdict is not Verdict.INCOMPLETE


def test_not_applicable_is_done_but_a_skip_after_code_execution_is_not(model_dir: Path) -> None:
    report = scan(model_dir, config=ScanConfig(stages=("static", "weights")))
    assert report.coverage["weights"].required and report.verdict is not Verdict.INCOMPLETE


@pytest.mark.parametrize("layout", ["png-file", "readme-folder", "config-only"])
def test_a_target_without_a_recognisable_model_is_incomplete(tmp_path: Path, layout: str) -> None:
    """Issue 17 item 2: a PNG given as the target passed a static scan; nothing there is a model."""
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    if layout == "png-file":
        (tmp_path / "cat.png").write_bytes(png)
        target = tmp_path / "cat.png"
    else:
        (tmp_path / "README.md").write_text("# a model\n", encoding="utf-8")
        if layout == "config-only":
            (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
        target = tmp_path
    report = scan(str(target), config=ScanConfig(stages=("static",)))
    assert report.verdict is Verdict.INCOMPLETE and report.gate.exit_code == 3
    assert any("no model weights were recognised" in n for n in report.coverage["static"].notes)
