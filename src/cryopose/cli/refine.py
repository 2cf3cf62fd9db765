"""Refine particle poses and origins locally by projection matching against a reference map.

When STAR has the network's top-k grid poses (cryoposeTopKIndices, written by
``cryopose infer``), each particle is first matched against its pose and its first
``--candidates`` of them, and the search starts from the best (``--candidates 0``: from the
pose). Each particle's pose is searched within ``--range`` degrees (grid ``--step``), then
within ``--fine-range`` degrees of the winner (grid ``--fine-step``; ``--no-fine`` skips it),
and its origin within ``--max-shift`` Angstrom, matching
CTF-modulated projections of the map by Fourier cross-correlation. Writes the refined star
file (all columns kept, plus cryoposeRefineCC, cryoposeRefineScore, cryoposeRefinePeakZ,
cryoposeRefineZScore and, with candidates, cryoposeRefineCandidate) and
``OUT_refine.json`` with the settings and summary.

Example usage::

    cryopose refine predicted.star --reference map.mrc -o refined.star
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def refine(
    star: Annotated[Path, typer.Argument(help="Particles with poses (.star).")],
    reference: Annotated[
        Path, typer.Option("--reference", help="Reference map (.mrc), particles' box/pixel.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Refined star file to write.")],
    range_deg: Annotated[
        float, typer.Option("--range", help="Angular search radius, degrees.")
    ] = 6.0,
    step: Annotated[float, typer.Option("--step", help="Angular grid step, degrees.")] = 3.0,
    max_shift: Annotated[
        float, typer.Option("--max-shift", help="Shift search radius around the origin, A.")
    ] = 10.0,
    fine: Annotated[
        bool, typer.Option("--fine/--no-fine", help="Second pass around the winner.")
    ] = True,
    fine_range: Annotated[float, typer.Option(help="Fine pass radius, degrees.")] = 2.0,
    fine_step: Annotated[float, typer.Option(help="Fine pass step, degrees.")] = 1.0,
    resolution: Annotated[
        float | None, typer.Option(help="Low-pass for matching, Angstrom (default Nyquist).")
    ] = None,
    no_ctf: Annotated[
        bool, typer.Option("--no-ctf", help="Do not apply the particles' CTF.")
    ] = False,
    rescale_map: Annotated[
        bool, typer.Option("--rescale-map", help="Resample a map at another pixel size.")
    ] = False,
    symmetry: Annotated[str, typer.Option(help="Point group (recorded only).")] = "C1",
    particles_dir: Annotated[
        Path | None, typer.Option(help="Folder to look for the stacks in first.")
    ] = None,
    candidates: Annotated[
        int,
        typer.Option(
            help="Network top-k poses tried as starts (0: only the pose; default as "
            "`cryopose pipeline`)."
        ),
    ] = 100,
    batch_size: Annotated[int, typer.Option(help="Particles matched at once.")] = 16,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Refine poses and origins in STAR against a reference map.

    Example: cryopose refine predicted.star --reference map.mrc -o refined.star
    """
    from cryopose.pose.refine import RefineConfig, refine_star

    config = RefineConfig(
        range_deg=range_deg,
        step_deg=step,
        fine=fine,
        fine_range_deg=fine_range,
        fine_step_deg=fine_step,
        max_shift_angst=max_shift,
        resolution_angst=resolution,
        ctf=not no_ctf,
        batch_size=batch_size,
        device=device,
        rescale_map=rescale_map,
        symmetry=symmetry,
        candidates=candidates,
    )
    result = refine_star(star, reference, output, config, particles_dir=particles_dir)
    s = result.summary()
    coarse, fine_k = result.n_local_poses
    poses = f"{coarse} + {fine_k}" if fine_k else f"{coarse}"
    if result.n_candidates:
        poses = f"{result.n_candidates + 1} starts, " + poses
    typer.echo(
        f"wrote {output}: {result.n_particles} particles, {poses} local poses each; "
        f"median pose change {s['median_angle_change_deg']:.2f} deg, "
        f"median shift change {s['median_shift_change_angst']:.2f} A, "
        f"mean CC {s['mean_cc']:.3f}, {s['particles_per_second']:.1f} particles/s"
    )
