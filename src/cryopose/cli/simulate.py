"""Simulate cryo-EM particle datasets from a map or an atomic model.

Writes a RELION 3.1 ``particles.star`` with stacks beside it, ground-truth poses, shifts and
CTF in the star, ``rlnRandomSubset`` half sets, junk flagged in ``cryoposeIsJunk``, and the
settings in ``simulation.json`` (reproducible from ``--seed``).

Example usage::

    cryopose simulate particles --structure 6z6u.pdb.gz --angpix 3 --box 64 -n 2000 --snr 0.1 -o sim
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app
from cryopose.errors import InputError

simulate_app = typer.Typer(
    help="Simulate particle datasets (and, later, tomograms).", no_args_is_help=True
)
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("particles")
def particles(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    map_path: Annotated[Path | None, typer.Option("--map", help="Density map (.mrc).")] = None,
    structure: Annotated[
        Path | None, typer.Option("--structure", help="Atomic model (.pdb/.cif, .gz allowed).")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="Number of particle images.")] = 1000,
    box: Annotated[
        int | None, typer.Option(help="Box size in pixels (default: the map's).")
    ] = None,
    angpix: Annotated[
        float | None, typer.Option(help="Pixel size in A (default: the map's).")
    ] = None,
    snr: Annotated[float, typer.Option(help="Signal-to-noise ratio (0: no noise).")] = 0.1,
    ctf: Annotated[bool, typer.Option("--ctf/--no-ctf", help="Apply RELION's CTF.")] = True,
    symmetry: Annotated[str, typer.Option(help="Point group recorded for evaluation.")] = "C1",
    junk_fraction: Annotated[float, typer.Option(help="Fraction of junk images.")] = 0.0,
    poses: Annotated[
        str, typer.Option(help="Pose distribution: uniform, top, top-side or side.")
    ] = "uniform",
    resolution: Annotated[
        float | None, typer.Option(help="Low-pass of the model's density (A), --structure only.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Simulate particles from --map or --structure into a star file and stacks.

    Example: cryopose simulate particles --structure 6z6u.pdb.gz --angpix 3 --box 64 -n 2000 -o sim
    """
    if (map_path is None) == (structure is None):
        raise InputError(None, "give exactly one of --map or --structure")
    from cryopose.simulate.particles import (
        SimulationConfig,
        simulate_from_structure,
        simulate_particles,
    )

    config = SimulationConfig(
        n=n,
        box=box,
        angpix=angpix,
        snr=snr if snr > 0 else None,
        ctf=ctf,
        symmetry=symmetry,
        junk_fraction=junk_fraction,
        pose_distribution=poses,
        seed=seed,
    )
    config.validate()
    if structure is not None:
        if angpix is None:
            raise InputError(structure, "--angpix is required with --structure")
        star = simulate_from_structure(
            structure, angpix, box, output, config=config, resolution=resolution
        )
    else:
        from cryopose.io.mrc import read_map

        assert map_path is not None
        volume, map_angpix = read_map(map_path)
        star = simulate_particles(volume, map_angpix, output, config=config)
    typer.echo(f"wrote {star} ({n} particles)")
