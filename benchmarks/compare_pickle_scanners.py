"""Compare our pickle check with the ``picklescan`` and ``modelscan`` CLIs on the shared sample set.

Writes every sample of ``tests/pickle_samples.py`` (one model folder per sample), runs our ``static.pickle``
check on each, and, when given the path of a throwaway virtual environment holding the tool, the other
scanners' command lines. Prints a Markdown matrix (sample x scanner); ``--json`` also saves the raw results.
The other tools are never installed into the project's venv: they get their own, e.g.

    python3 -m venv /tmp/venv-picklescan && /tmp/venv-picklescan/bin/pip install picklescan
    python3 -m venv /tmp/venv-modelscan && /tmp/venv-modelscan/bin/pip install modelscan
    .venv/bin/python benchmarks/compare_pickle_scanners.py --picklescan-venv /tmp/venv-picklescan \\
        --modelscan-venv /tmp/venv-modelscan

Cells: ``flagged`` (the tool's failing outcome; ours shows the worst severity), ``warn`` (picklescan found only
"suspicious" globals, exit code 0), ``passed``, ``not scanned`` (the tool found no file it supports), ``error``.
A malicious sample is answered right only by ``flagged``; a benign one by anything but ``flagged``/``error``
(the exit code of this script is stricter for ours: every benign sample must be ``passed``).
Nothing here loads a sample; the other tools only read them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pickle_samples  # noqa: E402

from modelaudit.findings import Severity  # noqa: E402
from modelaudit.static.base import StaticContext  # noqa: E402
from modelaudit.static.pickles import iter_findings  # noqa: E402
from modelaudit.target import inventory  # noqa: E402


@dataclass
class Cell:
    """One scanner's outcome on one sample."""

    outcome: str
    """flagged, warn, passed, not scanned, error."""
    detail: str = ""
    """Short reason: worst severity and rule for ours, the tool's own words for the others."""
    seconds: float = 0.0
    """Wall clock of this one run (the CLIs include their interpreter start-up)."""


def run_ours(folder: Path) -> Cell:
    """Our static.pickle check on the folder; flagged when a finding is at least high, warn at low/medium."""
    start = time.perf_counter()
    ctx = StaticContext(root=folder, files=inventory(folder))
    findings = list(iter_findings(ctx))
    seconds = time.perf_counter() - start
    if not findings:
        return Cell("passed", "", seconds)
    worst = max(findings, key=lambda f: f.severity.rank)
    outcome = "flagged" if worst.severity >= Severity.HIGH else ("warn" if worst.severity >= Severity.LOW else "passed")
    return Cell(outcome, f"{worst.severity.value}: {worst.rule_id.removeprefix('static.pickle.')}", seconds)


def _run(cmd: list[str], timeout: float = 300.0) -> tuple[int, str, float]:
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.perf_counter() - start
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def run_picklescan(venv: Path, folder: Path) -> Cell:
    """picklescan exits 1 on dangerous globals, 2 on scan errors; 'Scanned files: 0' means nothing it reads."""
    rc, out, seconds = _run([str(venv / "bin" / "picklescan"), "-p", str(folder)])
    scanned = re.search(r"Scanned files: (\d+)", out)
    suspicious = re.search(r"Suspicious globals: (\d+)", out)
    dangerous = re.findall(r"dangerous import '([^']+)'", out)
    if rc == 1:
        return Cell("flagged", ", ".join(sorted(set(dangerous)))[:60] or "infected", seconds)
    if rc not in (0, 1) or scanned is None:
        last = next((line for line in reversed(out.strip().splitlines()) if line.strip()), "")
        return Cell("error", f"rc={rc} {last[:60]}", seconds)
    if scanned.group(1) == "0":
        return Cell("not scanned", "", seconds)
    if suspicious and suspicious.group(1) != "0":
        return Cell("warn", f"{suspicious.group(1)} suspicious", seconds)
    return Cell("passed", "", seconds)


def run_modelscan(venv: Path, folder: Path) -> Cell:
    """modelscan exits 1 when it reports issues, 2 on errors, 3 when no file is supported."""
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        rc, out, seconds = _run([str(venv / "bin" / "modelscan"), "-p", str(folder), "-r", "json",
                                 "-o", str(report_path)])
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    errors = [e.get("description", "") for e in report.get("errors", [])]
    issues = report.get("issues", [])
    if rc == 1 or issues:
        sev = sorted({i.get("severity", "?") for i in issues})
        ops = sorted({f"{i.get('module', '')}.{i.get('operator', '')}" for i in issues})
        return Cell("flagged", f"{'/'.join(sev)} {', '.join(ops)}"[:60], seconds)
    if rc == 3 and not errors:
        return Cell("not scanned", "", seconds)
    if rc != 0 or errors:
        return Cell("error", (errors[0] if errors else f"rc={rc} {out.strip()[-60:]}")[:60], seconds)
    return Cell("passed", "", seconds)


def markdown(rows: list[dict[str, object]], scanners: list[str]) -> str:
    """The sample x scanner matrix, malicious samples first; the last rows count the right answers."""
    head = "| sample | expected | " + " | ".join(scanners) + " |"
    lines = [head, "|" + "---|" * (2 + len(scanners))]
    right = {s: 0 for s in scanners}
    for row in rows:
        expected = "malicious" if row["malicious"] else "benign"
        cells = []
        for s in scanners:
            cell: Cell = row[s]  # type: ignore[assignment]
            good = cell.outcome == "flagged" if row["malicious"] else cell.outcome not in {"flagged", "error"}
            right[s] += good
            mark = "" if good else " ✗"
            detail = f" ({cell.detail})" if cell.detail else ""
            cells.append(f"{cell.outcome}{detail}{mark}")
        lines.append(f"| `{row['name']}` {row['description']} | {expected} | " + " | ".join(cells) + " |")
    lines.append(f"| **right answers** | {len(rows)} | " + " | ".join(f"**{right[s]}/{len(rows)}**" for s in scanners)
                 + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-dir", type=Path, help="where to write the samples (default: a temp folder)")
    parser.add_argument("--picklescan-venv", type=Path, help="venv with the picklescan CLI installed")
    parser.add_argument("--modelscan-venv", type=Path, help="venv with the modelscan CLI installed")
    parser.add_argument("--skip-torch", action="store_true", help="skip samples whose builder imports torch")
    parser.add_argument("--json", type=Path, help="also write raw results as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pickle-samples-") as tmp:
        base = args.samples_dir or Path(tmp)
        written = pickle_samples.write_samples(base, include_torch=not args.skip_torch)
        scanners = ["modelaudit"]
        if args.picklescan_venv:
            scanners.append("picklescan")
        if args.modelscan_venv:
            scanners.append("modelscan")
        rows: list[dict[str, object]] = []
        for sample in sorted(pickle_samples.SAMPLES, key=lambda s: (not s.malicious, s.name)):
            if sample.name not in written:
                continue
            folder = written[sample.name].parent
            row: dict[str, object] = {"name": sample.name, "description": sample.description,
                                      "malicious": sample.malicious, "file": sample.filename}
            row["modelaudit"] = run_ours(folder)
            if args.picklescan_venv:
                row["picklescan"] = run_picklescan(args.picklescan_venv, folder)
            if args.modelscan_venv:
                row["modelscan"] = run_modelscan(args.modelscan_venv, folder)
            rows.append(row)
    print(markdown(rows, scanners))
    if args.json:
        args.json.write_text(json.dumps([{k: asdict(v) if isinstance(v, Cell) else v for k, v in r.items()}
                                         for r in rows], indent=2))
    ours_ok = all((r["modelaudit"].outcome == "flagged") == r["malicious"]  # type: ignore[union-attr]
                  and (r["malicious"] or r["modelaudit"].outcome == "passed") for r in rows)  # type: ignore[union-attr]
    return 0 if ours_ok else 1


if __name__ == "__main__":
    sys.exit(main())
