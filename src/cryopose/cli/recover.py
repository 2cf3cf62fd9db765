"""Ab initio orientation recovery by distance learning: train, run, evaluate.

``train`` fits a Siamese network to the orientation distance between two projections
simulated from a map (or an atomic model); ``run`` recovers the orientations of the particles
of a star file with it and writes them into a copy of the star; ``evaluate`` compares
recovered with true orientations (E_OR, map-frame error, and with ``--map`` the FSC of the
reconstruction against the ground truth).

Example usage::

    cryopose recover train --map map.mrc -o model --angpix 7.3 --box 40 --snr 0.1 --max-minutes 20
    cryopose recover run particles.star --model model -o recovered.star
    cryopose recover evaluate particles.star recovered.star --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app

recover_app = typer.Typer(
    help="Ab initio orientation recovery: learn pairwise distances, recover poses, evaluate.",
    no_args_is_help=True,
)
app.add_typer(recover_app, name="recover")


@recover_app.command("train")
def train(
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    map_path: Annotated[
        Path | None, typer.Option("--map", help="Map to simulate projections from.")
    ] = None,
    structure: Annotated[
        Path | None, typer.Option("--structure", help="Atomic model (PDB/mmCIF) instead of a map.")
    ] = None,
    angpix: Annotated[
        float | None,
        typer.Option(help="Pixel size (A) of the training images; default the map's."),
    ] = None,
    box: Annotated[int, typer.Option(help="Box (pixels) of the training images.")] = 48,
    snr: Annotated[
        float | None,
        typer.Option(help="Lowest SNR trained on (noise drawn from 0 up to it); default none."),
    ] = None,
    max_minutes: Annotated[float, typer.Option(help="Wall-time budget of this run.")] = 20.0,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps in total.")
    ] = None,
    ctf: Annotated[bool, typer.Option("--ctf", help="Random CTFs as augmentation.")] = False,
    shift_sigma: Annotated[
        float, typer.Option(help="Random origins (A, standard deviation) as augmentation.")
    ] = 0.0,
    symmetry: Annotated[str, typer.Option(help="Point group: C1, Cn, Dn, T, O, I.")] = "C1",
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over instead of resuming a checkpoint.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train the distance network on projection pairs simulated from a map or model.

    Example: cryopose recover train --map map.mrc -o model --box 40 --snr 0.1 --max-minutes 20
    """
    from cryopose.errors import InputError
    from cryopose.io.mrc import read_map
    from cryopose.recovery.train import TrainConfig, train_distance_network

    if (map_path is None) == (structure is None):
        raise InputError(None, "give exactly one of --map and --structure", "arguments")
    if map_path is not None:
        volume, map_angpix = read_map(map_path)
    else:
        from cryopose.simulate.density import density_from_file

        assert structure is not None
        if angpix is None:
            raise InputError(None, "--structure needs --angpix (A per pixel)", "arguments")
        map_angpix = angpix
        volume = density_from_file(structure, map_angpix)
    config = TrainConfig(
        box=box,
        angpix=angpix,
        snr=snr,
        ctf=ctf,
        shift_sigma_angst=shift_sigma,
        symmetry=symmetry,
        batch_size=batch_size,
        max_minutes=max_minutes,
        max_steps=max_steps,
        seed=seed,
    )
    result = train_distance_network(
        volume, map_angpix, output, config, resume=not restart, device=device
    )
    typer.echo(
        f"wrote {output}: {result.steps} steps, validation Spearman {result.spearman:.3f}, "
        f"mean |error| {result.mean_abs_error_deg:.1f} deg"
    )


@recover_app.command("run")
def run(
    star: Annotated[Path, typer.Argument(help="Particles (.star) to find orientations for.")],
    model: Annotated[Path, typer.Option("--model", help="Model folder from 'recover train'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Star file to write.")],
    neighbours: Annotated[
        int,
        typer.Option(
            help="Near neighbours per particle for the spectral start and refinement "
            "(0: random pairs and restarts, as under a point group)."
        ),
    ] = 20,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 2000,
    restarts: Annotated[int, typer.Option(help="Random pairs: independent random starts.")] = 4,
    k_per_node: Annotated[
        int, typer.Option(help="Random pairs: partners per particle (repair graph).")
    ] = 20,
    batch_size: Annotated[int, typer.Option(help="Pairs per optimisation step.")] = 1 << 14,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    polish_rounds: Annotated[
        int,
        typer.Option(
            help="C1: rounds of polishing by projection matching against the reconstruction "
            "from the recovered orientations (0: orientations from distances alone)."
        ),
    ] = 3,
    particles_dir: Annotated[
        Path | None, typer.Option(help="Folder to look for the stacks in first.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Recover the orientations of the particles in STAR and write them to a copy.

    Example: cryopose recover run particles.star --model model -o recovered.star
    """
    from cryopose.recovery.polish import PolishSettings
    from cryopose.recovery.run import RunSettings, recover_star

    settings = RunSettings(
        neighbours=neighbours,
        k_per_node=k_per_node,
        steps=steps,
        batch_size=batch_size,
        restarts=restarts,
        seed=seed,
        polish=PolishSettings(rounds=polish_rounds, seed=seed) if polish_rounds > 0 else None,
    )
    result = recover_star(
        star,
        output,
        model_dir=model,
        settings=settings,
        particles_dir=particles_dir,
        device=device,
    )
    loss = float(result.recovery.final_loss[result.recovery.best_restart])
    typer.echo(
        f"wrote {output}: {result.quaternions.shape[0]} orientations, final loss {loss:.4f} rad^2"
    )


@recover_app.command("evaluate")
def evaluate(
    true_star: Annotated[Path, typer.Argument(help="Star file with the true angles.")],
    pred_star: Annotated[Path, typer.Argument(help="Star file with recovered angles.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    map_path: Annotated[
        Path | None,
        typer.Option("--map", help="Ground-truth map: also reconstruct and report the FSC."),
    ] = None,
    particles_dir: Annotated[
        Path | None, typer.Option(help="Folder to look for the stacks in first.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Compare recovered with true orientations: E_OR and the map-frame error.

    Example: cryopose recover evaluate particles.star recovered.star --json
    """
    from cryopose.recovery.run import evaluate_recovery

    result = evaluate_recovery(
        true_star,
        pred_star,
        map_path=map_path,
        particles_dir=particles_dir,
        device=device,
        progress=not as_json,
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    typer.echo(f"particles: {result.n}")
    typer.echo(f"E_OR (O(4) alignment): {result.e_or_deg:.2f} deg")
    mirror = " (mirrored map)" if result.flip else ""
    typer.echo(f"mean error after map rotation{mirror}: {result.so3_error_deg:.2f} deg")
    if result.resolution_fsc_05 is not None and result.resolution_fsc_0143 is not None:
        typer.echo(
            f"FSC to the true map: {result.resolution_fsc_05:.2f} A (0.5), "
            f"{result.resolution_fsc_0143:.2f} A (0.143)"
        )
