"""Reconstruct a map from particles at their poses (what ``relion_reconstruct`` does).

Streams images from the stacks in batches, so memory does not grow with the particle count.
``--halves`` also writes the two half maps (from ``rlnRandomSubset``) and their FSC.

Example usage::

    cryopose reconstruct particles.star -o map.mrc --ctf --symmetry D7 --halves
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def reconstruct(
    star: Annotated[Path, typer.Argument(help="Particles with poses (.star).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Map to write (.mrc).")],
    ctf: Annotated[bool, typer.Option("--ctf", help="Correct for each particle's CTF.")] = False,
    symmetry: Annotated[str, typer.Option(help="Point group: C1, Cn, Dn, T, O, I.")] = "C1",
    halves: Annotated[
        bool, typer.Option("--halves", help="Also write half maps and their FSC.")
    ] = False,
    particles_dir: Annotated[
        Path | None, typer.Option(help="Folder to look for the stacks in first.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images inserted at once.")] = 256,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Reconstruct a map from the particles in STAR.

    Example: cryopose reconstruct particles.star -o map.mrc --ctf --halves
    """
    from cryopose.io.particles import read_particles
    from cryopose.pose.reconstruct import reconstruct_particles, write_reconstruction

    table = read_particles(star, particles_dir=particles_dir)
    result = reconstruct_particles(
        table,
        ctf=ctf,
        symmetry=symmetry,
        halves=halves,
        batch_size=batch_size,
        regularisation="tau2" if halves else "relion",
        device=device,
    )
    summary = write_reconstruction(result, output)
    typer.echo(f"wrote {output} from {result.n_particles} particles")
    if summary:
        stem = output.with_suffix("")
        typer.echo(
            f"wrote {stem}_half1.mrc, {stem}_half2.mrc, {stem}_fsc.json: half-map FSC "
            f"resolution {summary['resolution_fsc_0.143']:.2f} A (0.143), "
            f"{summary['resolution_fsc_0.5']:.2f} A (0.5)"
        )
