"""Predict particle poses with a trained pose model (gold-standard halves swapped).

Writes the input star file with the neighbour-averaged, symmetrised poses, the top-1
probability (rlnMaxValueProbDistribution), the pruning score (cryoposeTop10Score), the
neighbourhood probability, the ``--top-k`` most probable grid cells (cryoposeTopKIndices and
cryoposeGridOrder, the starts ``cryopose refine`` tries) and, when the model has directional
statistics, the directional z-score (cryoposeDirectionalZScore) used by ``cryopose prune``.

Example usage::

    cryopose infer particles.star --model model_dir -o predicted.star --batch-size 128
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def infer(
    star: Annotated[Path, typer.Argument(help="Particles to predict (.star).")],
    model: Annotated[Path, typer.Option("--model", help="Pose model folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Star file to write.")],
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Particles per network pass.")] = 64,
    top1: Annotated[
        bool, typer.Option("--top1", help="Write the top-1 grid pose, not the averaged one.")
    ] = False,
    num_workers: Annotated[int, typer.Option(help="Image-reading worker processes.")] = 0,
    top_k: Annotated[
        int,
        typer.Option(
            help="Most probable grid cells written (cryoposeTopKIndices): the starts "
            "`cryopose refine` tries. 100 as in `cryopose pipeline`; with 10 a young "
            "network's maps are worse (6.9 instead of 4.4 A in benchmarks/bench_pipeline.py)."
        ),
    ] = 100,
    tta: Annotated[
        int,
        typer.Option(
            help="Average the network over 1, 2 or 4 quarter turns of each image "
            "(more accurate, that many times slower)."
        ),
    ] = 1,
) -> None:
    """Predict the pose of every particle in STAR with the model folder MODEL.

    Example: cryopose infer particles.star --model model_dir -o predicted.star
    """
    from cryopose.pose.infer import infer_poses

    result = infer_poses(
        star,
        model,
        output,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        write_top1=top1,
        top_k=top_k,
        turns=tta,
    )
    n = len(result.probability)
    extra = "" if result.zscore is None else ", directional z-scores"
    typer.echo(f"wrote {output}: {n} poses{extra} ({result.particles_per_second:.1f} particles/s)")
