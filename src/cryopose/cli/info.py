"""Summarise cryo-EM files: STAR, MRC/MRCS maps and stacks, PDB/mmCIF models, cryoSPARC .cs.

Example usage::

    cryopose info particles.star map.mrc model.pdb --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cryopose.cli.main import app


@app.command()
def info(
    paths: Annotated[list[Path], typer.Argument(help="Files to summarise.", show_default=False)],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, one object per file.")
    ] = False,
) -> None:
    """Print a human summary of each file (``--json`` for machines).

    Example: cryopose info particles.star map.mrc model.pdb
    """
    from cryopose.io.describe import describe

    summaries = [describe(path) for path in paths]
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
        return
    console = Console(highlight=False)
    for summary in summaries:
        _print_summary(console, summary)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return " x ".join(_fmt(v) for v in value) if value else "-"
    if value is None:
        return "-"
    return str(value)


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    console.rule(f"[bold]{s['path']}[/bold]  ({s['kind']})")
    kind = s["kind"]
    if kind == "mrc":
        what = "stack" if s.get("is_stack") else "map"
        console.print(f"{what}: shape (z, y, x) {_fmt(s['shape'])}, dtype {s['dtype']}")
        console.print(
            f"voxel size (x, y, z): {_fmt(s['voxel_size'])} A; origin {_fmt(s['origin'])} A"
        )
        console.print(
            "values: min {} max {} mean {} std {}".format(
                *(_fmt(s.get(k)) for k in ("min", "max", "mean", "std"))
            )
        )
    elif kind == "star":
        blocks = ", ".join(
            f"{b['name'] or '(unnamed)'} ({b['rows']} rows)"
            if b["loop"]
            else f"{b['name'] or '(unnamed)'} (values)"
            for b in s["blocks"]
        )
        console.print(f"blocks: {blocks}")
        if s.get("particles") is None:
            console.print(s.get("note") or "not a particle file")
            return
        console.print(f"particles: {s['particles']}  (RELION {s['relion_version']} layout)")
        table = Table(
            "optics group",
            "name",
            "pixel (A)",
            "voltage (kV)",
            "Cs (mm)",
            "amp. contrast",
            "image size",
        )
        for g in s["optics_groups"]:
            table.add_row(
                *(
                    _fmt(g.get(k))
                    for k in (
                        "group",
                        "name",
                        "pixel_size",
                        "voltage_kv",
                        "cs_mm",
                        "amplitude_contrast",
                        "image_size",
                    )
                )
            )
        console.print(table)
        has = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in s["has"].items())
        console.print(f"columns present: {has}")
        unknown = s.get("unknown_columns") or []
        console.print(f"columns unknown to RELION 3.1: {', '.join(unknown) if unknown else 'none'}")
    elif kind == "structure":
        console.print(
            f"{s['format']}: {s['models']} model(s), {s['chains']} chains, "
            f"{s['residues']} residues, {s['atoms']} atoms ({s['waters']} waters dropped)"
        )
        console.print(
            f"mass {s['mass_kda']:.1f} kDa (with estimated hydrogens "
            f"{s['mass_kda_with_hydrogens']:.1f} kDa)"
        )
        console.print(
            f"extent {_fmt(s['extent_angstrom'])} A, max diameter "
            f"{s['max_diameter_angstrom']:.1f} A"
        )
        if s.get("method") or s.get("resolution_angstrom"):
            console.print(
                f"method {s.get('method') or '-'}, resolution "
                f"{_fmt(s.get('resolution_angstrom'))} A"
            )
        source = "assembly 1" if s.get("assemblies") else "the model as deposited"
        console.print(f"point group: {s.get('point_group') or '-'} (of {source})")
        for a in s.get("assemblies") or []:
            console.print(
                f"assembly {a['name']}: {a['operators']} operator(s), {a['chains']} chains, "
                f"{a['atoms']} atoms, {a['mass_kda']:.1f} kDa, point group {a['point_group']}"
            )
    elif kind == "cryosparc":
        console.print(f"particles: {s['particles']}")
        console.print(f"fields: {', '.join(s['fields'])}")
