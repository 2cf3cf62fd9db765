"""Turn an atomic model (PDB/mmCIF, optionally gzipped) into a density map.

The map is the Coulomb potential from Peng's electron scattering factors, centred on the
model's centre of mass at voxel N // 2, optionally low-pass filtered to a resolution.

Example usage::

    cryopose density 6z6u.pdb.gz --angpix 1.5 --box 128 --resolution 4 -o apoferritin.mrc
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app
from cryopose.errors import InputError


@app.command()
def density(
    model: Annotated[Path, typer.Argument(help="PDB or mmCIF file (.gz allowed).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Map to write (.mrc).")],
    angpix: Annotated[float, typer.Option(help="Voxel size in Angstrom.")],
    box: Annotated[
        int | None, typer.Option(help="Box edge in voxels (default: fits the model + 20%).")
    ] = None,
    resolution: Annotated[
        float | None, typer.Option(help="Gaussian low-pass resolution in Angstrom.")
    ] = None,
    assembly: Annotated[
        str | None, typer.Option(help="Build this biological assembly first (e.g. 1).")
    ] = None,
) -> None:
    """Compute a density map from an atomic model.

    Example: cryopose density 6z6u.pdb.gz --angpix 1.5 --box 128 -o apoferritin.mrc
    """
    if not angpix > 0:
        raise InputError(None, f"--angpix must be positive, got {angpix}")
    if box is not None and box < 2:
        raise InputError(None, f"--box must be at least 2 voxels, got {box}")
    # Heavy imports (torch) happen when a command runs, so `cryopose --help` stays instant.
    from cryopose.io.mrc import write_map
    from cryopose.simulate.density import density_from_file

    volume = density_from_file(
        model, angpix=angpix, box=box, resolution=resolution, assembly=assembly
    )
    write_map(output, volume, angpix)
    typer.echo(f"wrote {output}: {tuple(volume.shape)} voxels at {angpix} A/voxel")
