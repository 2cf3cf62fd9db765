"""Project a map at the poses of a star file (what ``relion_project`` does).

One image per particle at its angles and origin (content at minus the origin, as RELION),
optionally multiplied by its CTF; writes the stack and a star file beside it.

Example usage::

    cryopose project map.mrc particles.star -o proj.mrcs --ctf
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def project(
    map_path: Annotated[Path, typer.Argument(metavar="MAP", help="Density map (.mrc).")],
    star: Annotated[Path, typer.Argument(help="Particles with poses (.star).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Stack to write (.mrcs).")],
    ctf: Annotated[bool, typer.Option("--ctf", help="Multiply by each particle's CTF.")] = False,
    batch_size: Annotated[int, typer.Option(help="Projections computed at once.")] = 256,
) -> None:
    """Project MAP at every pose in STAR.

    Example: cryopose project map.mrc particles.star -o proj.mrcs --ctf
    """
    from cryopose.io.mrc import read_map
    from cryopose.io.particles import read_particles
    from cryopose.simulate.project_star import project_star

    volume, angpix = read_map(map_path)
    table = read_particles(star)
    out_star = project_star(volume, angpix, table, ctf, output, batch_size=batch_size)
    typer.echo(f"wrote {len(table)} projections: {out_star.with_suffix('.mrcs')} and {out_star}")
