"""Offline pose-estimation benchmark: simulated CESPED-style entries and a leaderboard.

Builds the entries (one per symmetry: C1, D7, O, C6 or D4, from bundled atomic models) when
they are missing, evaluates every ``predictions/<method>/<entry>.star`` plus two references
(ground-truth poses, the best possible; random poses, the worst) with the gold-standard
protocol and writes ``leaderboard.md`` and ``leaderboard.json``.

Example usage::

    cryopose benchmark -o bench/ --entries C1 --entries D7 --n 2000 --predictions runs/
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def benchmark(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Benchmark folder (entries, results).")
    ] = Path("cryopose_benchmark"),
    entries: Annotated[
        list[str] | None,
        typer.Option("--entries", help="Entries (repeat or comma-separate): C1, D7, O, C6, D4."),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Particles per entry.")] = 2000,
    box: Annotated[int, typer.Option(help="Image box in pixels.")] = 64,
    snr: Annotated[float, typer.Option(help="Signal-to-noise ratio of the images.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed of the simulation.")] = 0,
    predictions: Annotated[
        Path | None,
        typer.Option(help="Folder with predictions/<method>/<entry>.star (default: -o)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Build missing benchmark entries, evaluate all methods, write the leaderboard.

    Example: cryopose benchmark -o bench/ --entries C1,D7 --n 500
    """
    from cryopose.evaluation.benchmark_suite import (
        DEFAULT_ENTRIES,
        leaderboard_markdown,
        run_benchmark,
    )

    names = (
        tuple(x.strip() for e in entries for x in e.split(",") if x.strip())
        if entries
        else DEFAULT_ENTRIES
    )
    rows = run_benchmark(
        output,
        names,
        n_particles=n,
        box=box,
        snr=snr,
        seed=seed,
        predictions_dir=predictions,
        device=device,
        progress=True,
    )
    typer.echo(leaderboard_markdown(rows), nl=False)
    typer.echo(f"leaderboard: {output / 'leaderboard.md'} and {output / 'leaderboard.json'}")
