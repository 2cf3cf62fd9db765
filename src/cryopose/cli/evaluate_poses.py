"""Angular and shift errors of predicted poses against true ones, modulo symmetry.

Particles are matched by rlnImageName (by order when names repeat). ``--json`` prints one
object with mean_deg, weighted_mean_deg (weights: the prediction's
rlnMaxValueProbDistribution), median_deg, within_5_deg, within_10_deg, n and
shift_error_angst.

Example usage::

    cryopose evaluate-poses true.star predicted.star --symmetry D7 --plot errors.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command("evaluate-poses")
def evaluate_poses(
    true_star: Annotated[Path, typer.Argument(help="Particles with the true poses (.star).")],
    pred_star: Annotated[Path, typer.Argument(help="Particles with predicted poses (.star).")],
    symmetry: Annotated[str, typer.Option(help="Point group: C1, Cn, Dn, T, O, I.")] = "C1",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a histogram of the errors (.png).")
    ] = None,
) -> None:
    """Compare the poses of PRED_STAR with those of TRUE_STAR.

    Example: cryopose evaluate-poses true.star predicted.star --symmetry D2 --json
    """
    from cryopose.evaluation.angular import plot_error_histogram, pose_errors

    errors = pose_errors(true_star, pred_star, symmetry)
    summary = errors.summary()
    if plot is not None:
        plot_error_histogram(errors, plot)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    shift = summary["shift_error_angst"]
    rows = [
        ("particles", f"{summary['n']}"),
        ("symmetry", symmetry),
        ("mean angular error", f"{summary['mean_deg']:.3f} deg"),
        ("confidence-weighted mean", f"{summary['weighted_mean_deg']:.3f} deg"),
        ("median angular error", f"{summary['median_deg']:.3f} deg"),
        ("within 5 deg", f"{100 * summary['within_5_deg']:.1f} %"),
        ("within 10 deg", f"{100 * summary['within_10_deg']:.1f} %"),
        ("mean shift error", "n/a" if shift is None else f"{shift:.3f} A"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")
    if plot is not None:
        typer.echo(f"wrote {plot}")
