"""Run a new experiment from picked particles to gold-standard maps in one command.

Network poses (the model trained on a previous experiment), pruning, local refinement against
the reference map, then half maps, full map and their FSC: what ``cryopose infer``, ``prune``,
``refine`` and ``reconstruct --halves`` do in turn, in one process and without intermediate
files. OUTPUT gets ``particles.star``, ``map.mrc``, ``map_half1.mrc``, ``map_half2.mrc``,
``map_fsc.json`` and ``pipeline.json`` (seconds per stage, particles/s, resolutions).

Example usage::

    cryopose pipeline ligand/particles.star --model model/ --reference apo.mrc -o ligand_run/ \
        --score cryoposeRefineZScore --threshold -1.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def pipeline(
    star: Annotated[Path, typer.Argument(help="Particles of the new experiment (.star).")],
    model: Annotated[Path, typer.Option("--model", help="Pose model folder (cryopose train).")],
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Map for local refinement (.mrc).")
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path(
        "pipeline_output"
    ),
    threshold: Annotated[
        float | None, typer.Option(help="Keep particles with --score >= this.")
    ] = None,
    junk_fraction: Annotated[
        float | None, typer.Option(help="Or drop this fraction, lowest score first.")
    ] = None,
    score: Annotated[
        str,
        typer.Option(
            help="Pruning score: cryoposeDirectionalZScore (network) or cryoposeRefineZScore "
            "(refinement, needs --reference)."
        ),
    ] = "cryoposeDirectionalZScore",
    symmetry: Annotated[
        str | None, typer.Option(help="Point group of the maps (default: the model's).")
    ] = None,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="Skip local refinement.")] = False,
    particles_dir: Annotated[
        Path | None, typer.Option(help="Folder to look for the stacks in first.")
    ] = None,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: one per core).")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    tta: Annotated[
        int,
        typer.Option(help="Average the network over 1, 2 or 4 quarter turns of each image."),
    ] = 1,
) -> None:
    """Infer, prune, refine and reconstruct the particles in STAR into OUTPUT.

    Example: cryopose pipeline new.star --model model/ --reference apo.mrc -o run/
    """
    import torch

    from cryopose.pose.pipeline import PipelineConfig, run_experiment
    from cryopose.pose.refine import RefineConfig

    if threads > 0:
        torch.set_num_threads(threads)
    config = PipelineConfig(
        threshold=threshold,
        junk_fraction=junk_fraction,
        score=score,
        refine=None if no_refine else RefineConfig(device=device),
        device=device,
        tta=tta,
    )
    summary = run_experiment(
        star,
        model,
        None if no_refine else reference,
        output,
        config,
        symmetry=symmetry,
        particles_dir=particles_dir,
    )
    typer.echo(
        f"kept {summary['n_kept']}/{summary['n_input']} particles in {summary['total_s']:.1f} s "
        f"({summary['particles_per_second']:.1f} particles/s: inference "
        f"{summary['inference_s']:.1f} s, refinement {summary['refinement_s']:.1f} s, "
        f"reconstruction {summary['reconstruction_s']:.1f} s); half-map FSC "
        f"{summary['resolution_fsc_0.143']:.2f} A (0.143), "
        f"{summary['resolution_fsc_0.5']:.2f} A (0.5); wrote {output}"
    )
