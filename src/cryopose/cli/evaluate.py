"""Evaluate predicted poses against the ground truth with CESPED's gold-standard protocol.

Matches particles by ``rlnImageName``, reports angular errors (mean, confidence-weighted,
median) under the point group, reconstructs half maps from predicted and from true poses and
compares them (PCC, FSC resolution, deltas). Writes ``report.json``, ``report.md``,
``report.html``, ``fsc.png`` and ``errors.png`` into the report folder.

Example usage::

    cryopose evaluate --pred predicted.star --truth particles.star --symmetry D7 -o report/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def evaluate(
    pred: Annotated[
        list[Path],
        typer.Option(
            "--pred", help="Predicted poses (.star); give twice for CESPED's two half-set files."
        ),
    ],
    truth: Annotated[Path, typer.Option("--truth", help="Ground-truth particles (.star).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder.")],
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Mask (.mrc) applied before PCC and FSC.")
    ] = None,
    symmetry: Annotated[str, typer.Option(help="Point group: C1, Cn, Dn, T, O, I.")] = "C1",
    prediction_type: Annotated[
        str, typer.Option("--type", help="What was predicted: S2, SO3 or SO3xR2.")
    ] = "SO3",
    relion: Annotated[
        bool,
        typer.Option("--relion", help="Cross-check the map with relion_reconstruct --ctf --sym."),
    ] = False,
    save_maps: Annotated[
        bool, typer.Option("--save-maps", help="Also write V0, V1, V, GT0, GT1, GT (.mrc).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Evaluate predicted poses against the ground truth (CESPED protocol).

    Example: cryopose evaluate --pred pred.star --truth particles.star --symmetry D7 -o report/
    """
    from cryopose.errors import InputError
    from cryopose.evaluation.gold_standard import PREDICTION_TYPES, evaluate_gold_standard

    if prediction_type not in PREDICTION_TYPES:
        raise InputError(
            None,
            f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}",
            where="option --type",
        )
    if len(pred) not in (1, 2):
        raise InputError(None, f"expected one or two --pred files, got {len(pred)}")
    report = evaluate_gold_standard(
        pred[0] if len(pred) == 1 else (pred[0], pred[1]),
        truth,
        symmetry=symmetry,
        prediction_type=prediction_type,  # type: ignore[arg-type]
        mask=mask,
        out_dir=output,
        device=device,
        progress=not as_json,
        save_maps=save_maps,
        relion=relion,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(
        f"{report.n_particles} particles, {report.symmetry}, {report.prediction_type}: "
        f"angular error mean {report.mean_error_deg:.2f}, weighted "
        f"{report.weighted_mean_error_deg:.2f}, median {report.median_error_deg:.2f} deg"
    )
    typer.echo(
        f"resolution GT0/GT1 {report.gt_halves.resolution_0143:.2f} A, V0/V1 "
        f"{report.half_maps.resolution_0143:.2f} A; dPCC {report.delta_pcc:.4f}, "
        f"dFSC {report.delta_fsc:.2f} A"
    )
    if report.relion_pcc is not None:
        typer.echo(f"PCC with relion_reconstruct: {report.relion_pcc:.5f}")
    typer.echo(f"report: {output / 'report.json'} ({output / 'report.html'})")
