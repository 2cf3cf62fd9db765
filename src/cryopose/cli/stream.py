"""Follow a folder of new particle files: infer, prune, refine, and keep the maps up to date.

New star files (and the stacks they name) are read only once they are complete and settled;
half maps, the full map and their FSC in OUT are rewritten every ``--update-every`` particles.
Stop it with Ctrl-C or by creating WATCH_DIR/STOP; rerunning the same command resumes without
counting any file twice.

``--score cryoposeDirectionalZScore`` (default) prunes by the network's z-score before
refinement; ``--score cryoposeRefineZScore`` refines every particle and prunes by the robust
z-score of its refinement peak over the particles of the same file, which separates junk much
better (see ``cryopose.pose.pruning``) but needs ``--reference`` and files of at least a few
dozen particles.

Example usage::

    cryopose stream incoming/ --model model/ --reference apo.mrc -o live/ --threshold -1

    cryopose stream incoming/ --model m/ --reference apo.mrc --score cryoposeRefineZScore
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def stream(
    watch_dir: Annotated[Path, typer.Argument(help="Folder where new star + stack files appear.")],
    model: Annotated[Path, typer.Option("--model", help="Pose model folder (cryopose train).")],
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Map for local refinement (.mrc).")
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path(
        "stream_output"
    ),
    threshold: Annotated[
        float | None, typer.Option(help="Keep particles with --score >= this.")
    ] = None,
    junk_fraction: Annotated[
        float | None, typer.Option(help="Or drop this fraction of each file, lowest z first.")
    ] = None,
    score: Annotated[
        str,
        typer.Option(
            help="Pruning score: cryoposeDirectionalZScore (network) or cryoposeRefineZScore "
            "(refinement, needs --reference)."
        ),
    ] = "cryoposeDirectionalZScore",
    symmetry: Annotated[str, typer.Option(help="Point group of the maps.")] = "C1",
    update_every: Annotated[int, typer.Option(help="Particles between map updates.")] = 1000,
    poll_seconds: Annotated[float, typer.Option(help="Seconds between looks.")] = 2.0,
    settle_seconds: Annotated[
        float, typer.Option(help="A file must be unchanged this long before it is read.")
    ] = 2.0,
    max_idle_minutes: Annotated[
        float | None, typer.Option(help="Stop after this long without new files.")
    ] = None,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="Skip local refinement.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    tta: Annotated[
        int,
        typer.Option(help="Average the network over 1, 2 or 4 quarter turns of each image."),
    ] = 1,
) -> None:
    """Stream new particles from WATCH_DIR into gold-standard maps in OUTPUT.

    Example: cryopose stream incoming/ --model model/ --reference apo.mrc -o live/
    """
    from cryopose.pose.pipeline import PipelineConfig, PosePipeline
    from cryopose.pose.refine import RefineConfig
    from cryopose.pose.stream import StreamConfig, stream_folder

    pipeline = PosePipeline(
        model,
        None if no_refine else reference,
        PipelineConfig(
            threshold=threshold,
            junk_fraction=junk_fraction,
            score=score,
            refine=None if no_refine else RefineConfig(device=device),
            device=device,
            tta=tta,
        ),
    )
    config = StreamConfig(
        symmetry=symmetry,
        update_every=update_every,
        poll_seconds=poll_seconds,
        settle_seconds=settle_seconds,
        max_idle_seconds=None if max_idle_minutes is None else 60.0 * max_idle_minutes,
        device=device,
    )
    typer.echo(f"watching {watch_dir} (stop: Ctrl-C or touch {watch_dir / config.stop_file})")
    try:
        status = stream_folder(watch_dir, output, pipeline, config, echo=typer.echo)
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume")
        raise typer.Exit(130) from None
    typer.echo(
        f"done: {status.n_accepted}/{status.n_seen} particles kept, "
        f"{status.particles_per_minute:.0f} particles/min, FSC 0.143 at "
        f"{status.resolution_143:.2f} A; maps in {output}"
    )
