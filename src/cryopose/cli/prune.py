"""Remove junk particles by a score: the network's or the local refinement's z-score.

``--score cryoposeDirectionalZScore`` (default) reads the output of ``cryopose infer``;
``--score cryoposeRefineZScore`` the output of ``cryopose refine``, whose robust z-score of the
refinement peak separates junk much better (see ``cryopose.pose.pruning``). The threshold is
given (``--threshold``), set to remove a fraction (``--junk-fraction``), or chosen to separate
the particles from known junk (``--junk-star``, scored with ``--model`` when it has no
network z-scores) by Youden's J.

Example usage::

    cryopose prune refined.star -o clean.star --score cryoposeRefineZScore --junk-fraction 0.15
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def prune(
    star: Annotated[Path, typer.Argument(help="Particles with z-scores (cryopose infer).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Star file to write.")],
    threshold: Annotated[float | None, typer.Option(help="Keep z >= this.")] = None,
    junk_fraction: Annotated[
        float | None, typer.Option(help="Remove this fraction, lowest z first.")
    ] = None,
    junk_star: Annotated[
        Path | None, typer.Option(help="Known junk (.star) to choose the threshold.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Model folder to score the junk star.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (scoring the junk star).")] = "cpu",
    score: Annotated[
        str,
        typer.Option(
            help="Score column: cryoposeDirectionalZScore (infer) or cryoposeRefineZScore (refine)."
        ),
    ] = "cryoposeDirectionalZScore",
) -> None:
    """Keep the particles of STAR whose score reaches the threshold.

    Example: cryopose prune refined.star -o clean.star --score cryoposeRefineZScore
    --threshold -1
    """
    from cryopose.pose.pruning import prune_star

    result = prune_star(
        star,
        output,
        threshold=threshold,
        junk_fraction=junk_fraction,
        junk_star=junk_star,
        model_dir=model,
        device=device,
        score_column=score,
    )
    typer.echo(
        f"wrote {output}: kept {result.n_kept} of {result.n_input} particles "
        f"({score} >= {result.threshold:.4f})"
    )
