"""Run cryopose's demo on the data bundled with the package: the drug-discovery story.

Simulate an apo data set of the bundled 1u6g complex -> train a small pose network on it (CPU,
``--minutes``) -> simulate a ligand-bound set with junk -> infer, prune, refine, reconstruct ->
angular errors, pruning ROC AUC, FSC and the difference map that shows the ligand; writes
``report.md`` and ``summary.json`` (about 8 minutes on a 2-core CPU with the defaults).

Example usage::

    cryopose demo -o demo_output --minutes 7
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path(
        "demo_output"
    ),
    minutes: Annotated[
        float, typer.Option(help="Training budget in minutes (pre-training + fine-tuning).")
    ] = 7.0,
    n_apo: Annotated[int, typer.Option(help="Particles of the apo (training) set.")] = 2000,
    n_ligand: Annotated[int, typer.Option(help="Particles of the ligand-bound set.")] = 2000,
    box: Annotated[int, typer.Option(help="Particle box in pixels.")] = 64,
    angpix: Annotated[float, typer.Option(help="Pixel size in Angstrom.")] = 3.0,
    image_size: Annotated[int, typer.Option(help="Network input in pixels.")] = 32,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: one per core).")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train on apo particles, find the ligand in new particles, and write a report.

    Example: cryopose demo -o demo_output --minutes 7
    """
    from cryopose.demo import DemoConfig, run_demo

    config = DemoConfig(
        n_apo=n_apo,
        n_ligand=n_ligand,
        box=box,
        angpix=angpix,
        image_size=image_size,
        minutes=minutes,
        threads=None if threads == 0 else threads,
        seed=seed,
    )
    summary = run_demo(output, config)
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"report: {summary['outputs']['report.md']}")
