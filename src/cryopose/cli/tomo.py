"""Cryo-ET: simulate SHREC-style tomograms and score particle picks with the SHREC 2020 rules.

Example usage::

    cryopose tomo simulate -o tomo0 --size 256 --seed 0
    cryopose tomo evaluate picks.txt --truth tomo0 --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app

tomo_app = typer.Typer(
    help="Cryo-ET: SHREC-style tomograms, picking and the SHREC 2020 metrics.",
    no_args_is_help=True,
)
app.add_typer(tomo_app, name="tomo")


@tomo_app.command("simulate")
def simulate(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    size: Annotated[int, typer.Option(help="In-plane size in voxels (1 nm); SHREC: 512.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    snr: Annotated[float, typer.Option(help="Tilt-series SNR (SHREC 2020: 0.004).")] = 0.004,
    n_tilts: Annotated[int, typer.Option(help="Number of tilts over +-60 degrees.")] = 40,
    n_particles: Annotated[
        int | None, typer.Option(help="Particles to place (default scales with the volume).")
    ] = None,
) -> None:
    """Simulate one SHREC-style tomogram folder (reconstruction, ground truth, particle list).

    Example: cryopose tomo simulate -o tomo0 --size 256 --seed 0
    """
    from cryopose.simulate.tomogram import simulate_tomogram

    folder = simulate_tomogram(
        output, size=size, seed=seed, snr=snr, n_tilts=n_tilts, n_particles=n_particles
    )
    typer.echo(
        f"wrote {folder}: reconstruction.mrc, grandmodel.mrc, class_mask.mrc, "
        "occupancy_mask.mrc, particle_locations.txt"
    )


@tomo_app.command("evaluate")
def evaluate(
    picks: Annotated[Path, typer.Argument(help="Picks: SHREC text (pdb x y z ...) or .star.")],
    truth: Annotated[Path, typer.Option(help="SHREC tomogram folder with the ground truth.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    confusion_plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the confusion matrix as a PNG.")
    ] = None,
) -> None:
    """Score picks against a SHREC ground truth (localisation, per-class and size-group F1).

    Example: cryopose tomo evaluate picks.txt --truth tomo0 --json
    """
    from cryopose.evaluation.shrec import evaluate_picks, format_tables, load_truth
    from cryopose.io.picks import read_picks

    result = evaluate_picks(read_picks(picks), load_truth(truth))
    if confusion_plot is not None:
        from cryopose.report.confusion import plot_confusion

        labels, matrix = result.confusion
        plot_confusion(labels, matrix, confusion_plot, title=f"{picks.name} vs {truth.name}")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_tables(result))
