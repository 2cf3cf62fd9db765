"""Cryo-ET: simulate SHREC-style tomograms, pick particles, score picks with the SHREC 2020 rules.

Example usage::

    cryopose tomo simulate -o tomo0 --size 256 --seed 0
    cryopose tomo match tomo0/reconstruction.mrc -o picks.txt --classes 4cr2,3j9i
    cryopose tomo evaluate picks.txt --truth tomo0 --json
    cryopose tomo train tomo1 tomo2 -o unet --max-minutes 60
    cryopose tomo pick tomo0/reconstruction.mrc --model unet -o picks.txt
    cryopose tomo ensemble unet unet_seed1 --calibrate tomo9
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cryopose.cli.main import app

tomo_app = typer.Typer(
    help="Cryo-ET: SHREC-style tomograms, picking and the SHREC 2020 metrics.",
    no_args_is_help=True,
)
app.add_typer(tomo_app, name="tomo")


@tomo_app.command("simulate")
def simulate(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    size: Annotated[int, typer.Option(help="In-plane size in voxels (1 nm); SHREC: 512.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    snr: Annotated[float, typer.Option(help="Tilt-series SNR (SHREC 2020: 0.004).")] = 0.004,
    n_tilts: Annotated[int, typer.Option(help="Number of tilts over +-60 degrees.")] = 40,
    n_particles: Annotated[
        int | None, typer.Option(help="Particles to place (default scales with the volume).")
    ] = None,
    assembly: Annotated[
        str,
        typer.Option(
            help="What each PDB model contributes: 'biological' (assembly 1) or 'deposited' "
            "(the asymmetric unit, the masses SHREC's table lists)."
        ),
    ] = "biological",
) -> None:
    """Simulate one SHREC-style tomogram folder (reconstruction, ground truth, particle list).

    Example: cryopose tomo simulate -o tomo0 --size 256 --seed 0
    """
    from cryopose.simulate.tomogram import simulate_tomogram

    folder = simulate_tomogram(
        output,
        size=size,
        seed=seed,
        snr=snr,
        n_tilts=n_tilts,
        n_particles=n_particles,
        assembly=assembly,
    )
    typer.echo(
        f"wrote {folder}: reconstruction.mrc, grandmodel.mrc, class_mask.mrc, "
        "occupancy_mask.mrc, particle_locations.txt"
    )


@tomo_app.command("evaluate")
def evaluate(
    picks: Annotated[Path, typer.Argument(help="Picks: SHREC text (pdb x y z ...) or .star.")],
    truth: Annotated[Path, typer.Option(help="SHREC tomogram folder with the ground truth.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    confusion_plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the confusion matrix as a PNG.")
    ] = None,
) -> None:
    """Score picks against a SHREC ground truth (localisation, per-class and size-group F1).

    Example: cryopose tomo evaluate picks.txt --truth tomo0 --json
    """
    from cryopose.evaluation.shrec import evaluate_picks, format_tables, load_truth
    from cryopose.io.picks import read_picks

    result = evaluate_picks(read_picks(picks), load_truth(truth))
    if confusion_plot is not None:
        from cryopose.report.confusion import plot_confusion

        labels, matrix = result.confusion
        plot_confusion(labels, matrix, confusion_plot, title=f"{picks.name} vs {truth.name}")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_tables(result))


@tomo_app.command("detectability")
def detectability(
    folder: Annotated[Path, typer.Argument(help="SHREC tomogram folder (simulated).")],
    threshold: Annotated[
        float, typer.Option(help="z-score counted as detectable (about 4 in a SHREC volume).")
    ] = 4.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """How detectable the particles are: z-scores of an oracle template matcher.

    The oracle knows each particle's exact density, orientation and position (from the
    grandmodel and the occupancy mask), so its score bounds what any picker correlating with
    the particle's density can reach. Prints the median z-score and the fraction at or above
    --threshold per class and per SHREC size group.

    Example: cryopose tomo detectability tomo0 --json
    """
    from cryopose.tomo.detectability import detectability_summary, oracle_zscores_folder

    particles = oracle_zscores_folder(folder, progress=True)
    summary = detectability_summary(particles, threshold)
    if as_json:
        payload = {
            "threshold": threshold,
            "summary": summary,
            "particles": [
                {"index": p.index, "class": p.class_id, "zscore": p.zscore} for p in particles
            ],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(f"oracle matched-filter z-scores ({len(particles)} particles of {folder})")
    typer.echo(f"{'class':<8} {'n':>4} {'median z':>9} {'z >= ' + format(threshold, 'g'):>9}")
    for name, row in summary.items():
        typer.echo(
            f"{name:<8} {int(row['n']):>4} {row['median_z']:>9.2f} "
            f"{row['fraction_detectable']:>9.2f}"
        )


@tomo_app.command("match")
def match(
    tomogram: Annotated[Path, typer.Argument(help="Tomogram (MRC), protein bright.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Picks: SHREC text, pdb x y z rotZ1 rotX rotZ2.")
    ],
    classes: Annotated[
        list[str] | None,
        typer.Option(help="Class ids to search (repeat or comma-separate); default all bundled."),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="'filtered' (SHREC TM-F) or 'top' (SHREC TM-T).")
    ] = "filtered",
    threshold: Annotated[float, typer.Option(help="TM-F: least z-score kept.")] = 4.0,
    overlap: Annotated[
        float, typer.Option(help="TM-F: picks closer than overlap x (r1 + r2) clash.")
    ] = 0.5,
    n_per_class: Annotated[int, typer.Option(help="TM-T: picks per class.")] = 100,
    bin_factor: Annotated[
        int, typer.Option(help="Binning of the coarse search (2: ~4x faster, misses small ones).")
    ] = 1,
    coarse_order: Annotated[int, typer.Option(help="HEALPix SO(3) order of the coarse grid.")] = 1,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    assembly: Annotated[
        str,
        typer.Option(
            help="Templates from each model's 'biological' assembly 1 or its 'deposited' "
            "asymmetric unit (as the tomogram was simulated)."
        ),
    ] = "biological",
) -> None:
    """Find particles by template matching (FLCF, coarse-to-fine over SO(3), CTF and wedge).

    Writes the picks, strongest first, and next to them a .star file with the same picks and
    their scores (rlnAutopickFigureOfMerit) and a .json file with the parameters and costs.

    Example: cryopose tomo match tomo0/reconstruction.mrc -o picks.txt --classes 4cr2,3j9i
    """
    from cryopose.tomo.template_matching import MatchConfig, match_tomogram_file

    wanted = None if not classes else [c for item in classes for c in item.split(",") if c]
    picks, result = match_tomogram_file(
        tomogram,
        output,
        classes=wanted,
        config=MatchConfig(bin_factor=bin_factor, coarse_order=coarse_order),
        mode=mode,
        threshold=threshold,
        overlap=overlap,
        n_per_class=n_per_class,
        device=device,
        progress=lambda name: typer.echo(f"matching {name}", err=True),
        assembly=assembly,
    )
    typer.echo(f"wrote {output}: {len(picks)} picks in {result.seconds:.1f} s")


@tomo_app.command("train")
def train(
    folders: Annotated[
        list[Path], typer.Argument(help="Simulated tomogram folders (cryopose tomo simulate).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    epochs: Annotated[int, typer.Option(help="Epochs in total (resumed runs continue).")] = 30,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop after this many minutes of training.")
    ] = None,
    steps_per_epoch: Annotated[int, typer.Option(help="Batches per epoch.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Patches per batch.")] = 4,
    patch: Annotated[int, typer.Option(help="Patch edge, voxels.")] = 48,
    width: Annotated[int, typer.Option(help="U-Net channels of the first level.")] = 16,
    depth: Annotated[int, typer.Option(help="U-Net resolution levels.")] = 3,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    erode: Annotated[
        int, typer.Option(help="Peel target voxels within this distance of another particle.")
    ] = 1,
    val_fraction: Annotated[
        float, typer.Option(help="Fraction of each tomogram's y range held out (0: none).")
    ] = 0.15,
    p_particle: Annotated[
        float, typer.Option(help="Probability that a patch is centred on a particle.")
    ] = 0.8,
    class_power: Annotated[
        float,
        typer.Option(
            help="Particle patches draw class c with weight voxels_c ** -power "
            "(0: uniform; 0.5: small proteins more often)."
        ),
    ] = 0.5,
    fg_weight: Annotated[
        float, typer.Option(help="Weight of the binary foreground Dice (localisation) in the loss.")
    ] = 1.0,
    mirror: Annotated[bool, typer.Option(help="Also augment with hand-changing flips.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    classifier_minutes: Annotated[
        float,
        typer.Option(
            help="Then train a crop classifier that names the picks for this many minutes "
            "(0: no time limit; without --classifier-steps either, the U-Net names them)."
        ),
    ] = 0.0,
    classifier_steps: Annotated[
        int | None,
        typer.Option(
            help="Train the crop classifier for at most this many steps (default: none with "
            "--classifier-minutes, else 5000); a step limit alone trains the same classifier "
            "on every machine."
        ),
    ] = None,
    classifier_background: Annotated[
        bool,
        typer.Option(
            help="Give the classifier a background output that vetoes picks it takes for noise "
            "(the picking threshold is recalibrated lower with the veto)."
        ),
    ] = False,
    classifier_crop: Annotated[
        int | None,
        typer.Option(help="Edge in voxels of the cube the crop classifier sees (multiple of 4)."),
    ] = None,
    classifier_full_res_blocks: Annotated[
        int | None,
        typer.Option(help="Convolution blocks of the crop classifier before its first pooling."),
    ] = None,
    calibrate: Annotated[
        list[Path] | None,
        typer.Option(
            help="With --classifier-background: a simulated tomogram folder that calibrates "
            "the vetoed picks' threshold (repeat for more; best ones not trained on, where the "
            "U-Net's scores are not inflated; default the first two training folders)."
        ),
    ] = None,
) -> None:
    """Train a 3D U-Net picker (13-class segmentation) on simulated tomograms.

    Writes MODEL_DIR/config.json, MODEL_DIR/model.pt (weights only) and
    MODEL_DIR/checkpoints/last.ckpt; an existing checkpoint is resumed. With
    --classifier-minutes or --classifier-steps also MODEL_DIR/classifier.json and
    classifier.pt, which cryopose tomo pick then uses to name the picks.

    Example: cryopose tomo train tomo0 tomo1 -o unet --epochs 30 --max-minutes 60
    """
    from cryopose.models.unet3d import UNet3DConfig
    from cryopose.tomo.picker import TrainConfig, train_picker

    config = TrainConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        patch=patch,
        lr=lr,
        erode=erode,
        val_fraction=val_fraction,
        p_particle=p_particle,
        class_power=class_power,
        fg_weight=fg_weight,
        mirror=mirror,
        seed=seed,
    )
    folder = train_picker(
        folders,
        output,
        network=UNet3DConfig(width=width, depth=depth),
        train=config,
        max_minutes=max_minutes,
        device=device,
        classifier_minutes=classifier_minutes or None,
        classifier_background=classifier_background,
        classifier_steps=classifier_steps,
        classifier_crop=classifier_crop,
        classifier_full_res_blocks=classifier_full_res_blocks,
        classifier_calibration=calibrate or None,
    )
    with_classifier = classifier_minutes or classifier_steps is not None
    extra = ", classifier.json, classifier.pt" if with_classifier else ""
    typer.echo(f"wrote {folder}: config.json, model.pt{extra}")


@tomo_app.command("pick")
def pick(
    tomogram: Annotated[Path, typer.Argument(help="Tomogram (MRC), protein bright.")],
    model: Annotated[Path, typer.Option(help="Model folder from cryopose tomo train.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Picks: SHREC text, pdb x y z.")],
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    tile: Annotated[
        int | None, typer.Option(help="Tile edge in voxels (default: the model's).")
    ] = None,
) -> None:
    """Pick particles with a trained U-Net: tiled segmentation, then connected components.

    Example: cryopose tomo pick tomo9/reconstruction.mrc --model unet -o picks.txt
    """
    from cryopose.tomo.picker import pick_tomogram_file

    picks = pick_tomogram_file(tomogram, model, output, device=device, tile=tile)
    typer.echo(f"wrote {output}: {len(picks)} picks")


@tomo_app.command("ensemble")
def ensemble(
    model: Annotated[Path, typer.Argument(help="Model folder whose crop classifier is extended.")],
    others: Annotated[
        list[Path], typer.Argument(help="Folders holding the other crop classifiers.")
    ],
    calibrate: Annotated[
        list[Path] | None,
        typer.Option(
            help="Simulated tomogram folder that recalibrates the vetoed picks' threshold "
            "(repeat for more; needed when the classifiers have a background output)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Name picks with an ensemble: MODEL's crop classifier and those of OTHERS, averaged.

    Rewrites MODEL/classifier.json and classifier.pt; cryopose tomo pick then averages the
    members' class probabilities. The classifiers must name the same classes and see the
    same crop (train them with other seeds or depths).

    Example: cryopose tomo ensemble unet unet_seed1 --calibrate tomo9 --calibrate tomo10
    """
    from cryopose.tomo.picker import ensemble_picker_classifiers

    folder = ensemble_picker_classifiers(model, others, calibrate or (), device=device)
    typer.echo(f"wrote {folder}: classifier.json, classifier.pt ({len(others) + 1} members)")
