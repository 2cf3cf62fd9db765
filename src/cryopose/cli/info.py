"""Summarise cryo-EM files: STAR, MRC/MRCS maps and stacks, PDB/mmCIF models, cryoSPARC .cs.

Example usage::

    cryopose info particles.star map.mrc model.pdb --json
"""

from __future__ import annotations

from pathlib import Path

import typer

from cryopose.cli.main import app


@app.command()
def info(
    paths: list[Path] = typer.Argument(..., help="Files to summarise."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file."),
) -> None:
    """Print a human summary of each file (``--json`` for machines).

    Example: cryopose info particles.star map.mrc model.pdb
    """
    raise NotImplementedError("info is being written")
