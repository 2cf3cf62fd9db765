"""Train a supervised pose network (Image2Sphere) on pre-aligned particles.

Writes a pose model folder (``config.json``, ``half1.pt``/``half2.pt`` or ``full.pt``,
``validation_half{h}.pt``, ``train_log.csv``, ``checkpoints/``); rerunning the same command
resumes from the checkpoints.

Example usage::

    cryopose train particles.star -o model --symmetry D7 --image-size 64 --max-minutes 60
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app


@app.command()
def train(
    star: Annotated[Path, typer.Argument(help="Particles with poses (.star).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    symmetry: Annotated[str, typer.Option(help="Point group: C1, Cn, Dn, T, O, I.")] = "C1",
    image_size: Annotated[int, typer.Option(help="Network input box, pixels.")] = 64,
    max_epochs: Annotated[int, typer.Option(help="Epochs per model (over resumed runs).")] = 50,
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget per model, minutes.")
    ] = None,
    pretrain_map: Annotated[
        Path | None, typer.Option(help="Map to pre-train on simulated particles first.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads per process (default: one per core; 1 on a busy machine)."),
    ] = None,
    pretrain_particles: Annotated[
        int, typer.Option(help="Fresh particles simulated per pre-training epoch.")
    ] = 4096,
    pretrain_epochs: Annotated[int, typer.Option(help="Epochs of pre-training.")] = 10,
    pretrain_minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget of pre-training, minutes.")
    ] = None,
    pretrain_snr: Annotated[
        float | None,
        typer.Option(help="Final SNR of the simulated particles (default: measured on STAR)."),
    ] = None,
    angpix: Annotated[
        float | None,
        typer.Option(help="Target pixel size, A (default: the whole box in --image-size)."),
    ] = None,
    particle_diameter: Annotated[
        float | None, typer.Option(help="Mask diameter, A (default: estimated from images).")
    ] = None,
    ctf_correction: Annotated[
        str | None,
        typer.Option(
            help="none, phase_flip or concat_phase_flip (default: concat when CTF columns)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Particles per step and process.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Initial RAdam learning rate.")] = 3e-3,
    lr_patience: Annotated[
        int, typer.Option(help="Epochs without a better validation median before halving.")
    ] = 5,
    lr_schedule: Annotated[
        str,
        typer.Option(
            help="plateau (halve after --lr-patience epochs without progress) or cosine "
            "(half-cosine decay over each stage's budget; fine-tuning restarts at 0.1x)."
        ),
    ] = "plateau",
    patience: Annotated[
        int,
        typer.Option(
            help="Epochs without a better validation median before stopping (0: never; "
            "the budget is then used up and the best epoch kept)."
        ),
    ] = 15,
    epoch_size: Annotated[
        int | None, typer.Option(help="Particles per epoch (default: all).")
    ] = None,
    half_sets: Annotated[
        bool,
        typer.Option(
            "--half-sets/--no-half-sets", help="Two gold-standard half models, or one on all."
        ),
    ] = True,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Pose-aware augmentation.")
    ] = True,
    output_order: Annotated[int, typer.Option(help="HEALPix SO(3) order of the output.")] = 3,
    encoder_width: Annotated[int, typer.Option(help="Base width of the encoder.")] = 16,
    lmax: Annotated[int, typer.Option(help="Largest harmonic degree.")] = 6,
    activation_order: Annotated[
        int, typer.Option(help="HEALPix SO(3) order of the grid of the ReLU.")
    ] = 2,
    devices: Annotated[int, typer.Option(help="Devices (processes) per node.")] = 1,
    num_nodes: Annotated[int, typer.Option(help="Nodes.")] = 1,
    strategy: Annotated[str, typer.Option(help="Lightning strategy (auto, ddp...).")] = "auto",
    num_workers: Annotated[int, typer.Option(help="Data loader workers per process.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of splits, shuffling, weights.")] = 0,
    keep_checkpoints: Annotated[
        bool,
        typer.Option("--keep-checkpoints/--delete-checkpoints", help="Keep full checkpoints."),
    ] = True,
) -> None:
    """Train pose networks on the particles in STAR and write the model folder.

    Example: cryopose train particles.star -o model --symmetry D7 --max-minutes 60
    """
    from cryopose.data.preprocess import channel_names
    from cryopose.errors import InputError
    from cryopose.io.particles import read_particles
    from cryopose.models.image2sphere import Image2SphereConfig
    from cryopose.training import TrainConfig, default_preprocess, train_pose_model

    # Options first: a bad one fails before the particles are read.
    config = TrainConfig(
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_patience=lr_patience,
        lr_schedule=lr_schedule,
        early_stopping_patience=None if patience == 0 else patience,
        max_epochs=max_epochs,
        epoch_size=epoch_size,
        max_minutes=max_minutes,
        seed=seed,
        num_workers=num_workers,
        device=device,
        threads=threads,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        half_sets=half_sets,
        augment=augment,
        keep_checkpoints=keep_checkpoints,
        pretrain_particles=pretrain_particles,
        pretrain_epochs=pretrain_epochs,
        pretrain_minutes=pretrain_minutes,
        pretrain_snr=pretrain_snr,
    )
    table = read_particles(star)
    if not table.has_poses:
        # Before estimating the mask from the images: fail on the real problem first.
        raise InputError(
            star, "expected particles with poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)"
        )
    preprocess = default_preprocess(table, image_size, angpix, particle_diameter, ctf_correction)
    network = Image2SphereConfig(
        in_channels=len(channel_names(preprocess)),
        image_size=image_size,
        encoder_width=encoder_width,
        lmax=lmax,
        activation_order=activation_order,
        output_order=output_order,
    )
    result = train_pose_model(
        table, output, network, preprocess, symmetry, config, pretrain_map, progress=True
    )
    if result.pretrain is not None:
        p = result.pretrain
        typer.echo(
            f"pre-training: {p.epochs} epochs, real-particle validation median error "
            f"{p.best_median_deg:.2f} deg, {p.images_per_second:.1f} images/s"
        )
    for half, r in result.halves.items():
        typer.echo(
            f"half {half}: {r.epochs} epochs, validation median error "
            f"{r.best_median_deg:.2f} deg (mean {r.best_mean_deg:.2f}), "
            f"{r.images_per_second:.1f} images/s, {r.wall_seconds:.0f} s"
        )
    typer.echo(f"wrote the pose model to {output}")
