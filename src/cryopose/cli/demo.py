"""Run cryopose's demo on the data bundled with the package.

Apoferritin model -> density -> 2,000 simulated particles -> gold-standard reconstruction ->
FSC plot and summary, in a couple of minutes on a CPU.

Example usage::

    cryopose demo -o demo_output
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
    n: Annotated[int, typer.Option("-n", help="Number of simulated particles.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Simulate, reconstruct and evaluate on the bundled apoferritin model.

    Example: cryopose demo -o demo_output
    """
    from cryopose.demo import DemoConfig, run_demo

    summary = run_demo(output, DemoConfig(n_particles=n, seed=seed))
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"FSC plot: {summary['outputs']['fsc_plot']}")  # type: ignore[index]
