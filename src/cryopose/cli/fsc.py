"""Fourier shell correlation between two maps, with resolutions at 0.143 and 0.5.

Example usage::

    cryopose fsc half1.mrc half2.mrc --mask mask.mrc --plot fsc.png --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app
from cryopose.errors import InputError


@app.command()
def fsc(
    map1: Annotated[Path, typer.Argument(help="First map (.mrc).")],
    map2: Annotated[Path, typer.Argument(help="Second map (.mrc), same box and pixel size.")],
    mask: Annotated[Path | None, typer.Option(help="Real-space mask applied to both.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the FSC curve as a PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """FSC curve and resolution between MAP1 and MAP2.

    Example: cryopose fsc half1.mrc half2.mrc --plot fsc.png
    """
    from cryopose.evaluation.fsc import fsc as fsc_curve
    from cryopose.evaluation.fsc import pcc, plot_fsc, resolution_at, shell_frequencies
    from cryopose.io.mrc import read_map

    v1, a1 = read_map(map1)
    v2, a2 = read_map(map2)
    if v1.shape != v2.shape:
        raise InputError(map2, f"box {tuple(v2.shape)} differs from {map1}'s {tuple(v1.shape)}")
    if abs(a1 - a2) > 1e-3 * a1:
        raise InputError(map2, f"pixel size {a2} A differs from {map1}'s {a1} A")
    m = None
    if mask is not None:
        m, _ = read_map(mask)
        if m.shape != v1.shape:
            raise InputError(mask, f"box {tuple(m.shape)} differs from the maps' {tuple(v1.shape)}")
    curve = fsc_curve(v1, v2, mask=m)
    box = v1.shape[-1]
    freq = shell_frequencies(box, a1)
    result = {
        "resolution_fsc_0.143": resolution_at(curve, box, a1, 0.143),
        "resolution_fsc_0.5": resolution_at(curve, box, a1, 0.5),
        "pcc": pcc(v1, v2, mask=m),
        "angpix": a1,
        "frequency_per_angstrom": [float(f) for f in freq],
        "fsc": [float(c) for c in curve],
    }
    if plot is not None:
        plot_fsc({f"{map1.name} vs {map2.name}": (freq, curve)}, plot)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"FSC resolution {result['resolution_fsc_0.143']:.2f} A at 0.143, "
        f"{result['resolution_fsc_0.5']:.2f} A at 0.5; real-space PCC {result['pcc']:.4f}"
    )
    for f, c in zip(freq.tolist()[1:], curve.tolist()[1:], strict=True):
        typer.echo(f"  {1 / f:8.2f} A  {c:7.4f}")
    if plot is not None:
        typer.echo(f"wrote {plot}")
