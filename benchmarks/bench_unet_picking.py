"""U-Net picking on SHREC-style tomograms: SHREC tables and compute next to template matching.

Simulates ``--n-train`` training tomograms (seeds 7101, 7102, ..., from the 101st 8101, 8102,
...; no test uses them), trains
cryopose's 3D U-Net picker within ``--max-minutes`` on this CPU, then picks the tomogram of the
template-matching benchmark (seed 7001, never seen in training) and prints SHREC's tables for
the U-Net and for template matching (TM-F, :mod:`bench_template_matching`'s settings) on that
same tomogram, with the core-hours of each.

Peer: SHREC 2020's best learned picker (UMC): localisation F1 0.949, small-protein F1 0.826 on
SHREC's 512 x 512 x 200 tomograms (trained on 9 tomograms on GPUs). SHREC's nominal SNR 0.004
is not cryopose's (:mod:`cryopose.simulate.tomogram`): UMC's scores need nearly every particle
detectable, which in cryopose's units takes SNR 0.5 or more (``bench_detectability.py``: 95% of
small proteins reach oracle z >= 4 at 0.5, 74% at 0.2), so 0.5 is the default. Compute here is wall
hours x ``--threads`` (default one torch thread; the machine's two cores are shared with other
work). The ratio is cryopose's
localisation F1 over UMC's.

``--classifier-minutes M`` then trains the crop classifier of :mod:`cryopose.tomo.classifier`
on the training tomograms (``--classifier-n-train``: that many, simulating the extra ones with
the next seeds; simulation is seconds per tomogram) for M minutes (counted in the compute)
and lets it name the picks; the tables of the U-Net's own classes are printed too.

``--classifier-steps N`` caps the classifier's optimiser steps (default: no cap, the time
budget is used in full, as ``cryopose tomo train --classifier-minutes`` does; until this
option, rows ran with a 5,000-step cap, which one core reaches in about 40 minutes).
Rows before the classifier zeroed its tiny weights (:func:`cryopose.tomo.classifier.zero_tiny`)
bought fewer steps with their minutes: after about 20 minutes, weights of dead channels
shrank towards the subnormal range and slowed each step about 4x (the 100-minute classifiers
made about 21,000 steps; the first row with ``--classifier-steps 40000`` zeroed only subnormal
values and made 25,500 in its 60 minutes).

``--classifier-crop E`` sets the edge of the classifier's cube (default 24, which the rows
before it used; the library's default is now 16, three times the steps per minute and better
small-protein F1 for the same minutes).

``--n-test K`` scores K unseen tomograms as one test set (seed 7001, then 7201, 7202, ...;
:func:`cryopose.evaluation.shrec.evaluate_tomograms` sums counts and confusion matrices): one
256 x 256 x 100 tomogram holds about 20 particles per class, so a per-class F1 moves by about
0.1 between tomograms, and four of them hold half the volume of SHREC's test tomogram.
Template matching, when run, still scores the first one.

``--classifier-background`` gives the crop classifier a background output: it vetoes the picks
it takes for noise, and the U-Net's threshold is recalibrated with the veto on two training
tomograms (:func:`cryopose.tomo.picker.calibrate_cascade`, counted in the training compute),
which lowers it so that more small proteins are picked.

``--calibrate-unseen K`` calibrates that threshold instead on K of the classifier's training
tomograms that the U-Net did not train on (seeds 7101 + ``--n-train``, ...): on its own
training tomograms the U-Net's scores run high, so the threshold calibrated there comes out
high (0.511 for the 64-tomogram classifier; 0.452 on four unseen ones, small F1 0.741 ->
0.744 on the 12 test tomograms). The classifier has seen these tomograms, which makes its
veto look a little better than on new data.

``--assembly deposited`` simulates every tomogram (training and test) with each model's
asymmetric unit instead of its biological assembly (:mod:`cryopose.simulate.tomogram`): the
masses SHREC's table lists, so that 3gl1 (85 kDa) is no longer a 39 kDa twin of 1s3x (43 kDa,
the same Hsp70 fold) and 3d2f is as heavy as its medium size group says. Its folders and
model get a ``_deposited`` suffix and its row names the choice.

After training, :func:`cryopose.tomo.picker.calibrate_picker` chooses the post-processing
(smoothed-foreground peaks or connected components) and its score threshold on the training
tomograms; ``--reuse-model`` skips the training (and the calibration, when the model has one;
and the classifier's training, when it has one) and picks again (training times taken from
the models' logs). A background classifier trained elsewhere and copied into the model folder
gets its cascade threshold calibrated as after training (with ``--calibrate-unseen``, every
reused classifier is recalibrated that way).

``--models-from benchmarks/models`` copies the model folders committed there (the U-Net, its
crop classifier and ensemble members, with their training logs; ``benchmarks/models/README.md``
says which command trained them) into ``--work`` and picks with them as ``--reuse-model`` does:
the row of that command, with the same weights, in the time of the picking alone (calibrations
that the options ask for are redone). Files already in ``--work`` are kept.
An ensemble's folder (``{model}_members{K}``, its veto calibrated on the ensemble) is reused
while its U-Net, classifiers and calibration tomograms are unchanged (``ensemble.json`` holds
their SHA-256 digests), its calibration seconds counted again in the training compute.

``--unet-flips`` averages the U-Net's probabilities over the four wedge-keeping rotations of
its training augmentation (``PickerSpec.test_time_flips``; 4x the segmentation time) in a copy of
the picking folder whose thresholds are all recalibrated that way (``{folder}_flips``, reused as
an ensemble's folder is, with ``flips.json``).

Run from the repository root::

    python benchmarks/bench_unet_picking.py --size 256 --snr 0.5 --n-train 2 --max-minutes 30
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_template_matching import SEED, THRESHOLD, _summary
from harness import Row, emit, machine

from cryopose.evaluation.shrec import (
    evaluate_picks,
    evaluate_tomograms,
    format_tables,
    load_truth,
)
from cryopose.io.mrc import read_map
from cryopose.models.unet3d import UNet3DConfig
from cryopose.simulate.tomogram import simulate_tomogram
from cryopose.tomo.classifier import (
    CLASSIFIER_CONFIG,
    ClassifierTrainConfig,
    CropClassifierConfig,
    classify_picks,
    load_crop_classifier,
    save_crop_classifier,
    train_crop_classifier,
)
from cryopose.tomo.peaks import filter_picks
from cryopose.tomo.picker import (
    UNCAPPED_STEPS,
    PickerSpec,
    TrainConfig,
    calibrate_cascade,
    calibrate_picker,
    ensemble_picker_classifiers,
    load_picker,
    pick_segmented,
    save_picker,
    segment_tomogram,
    train_picker,
    train_picker_classifier,
)
from cryopose.tomo.segmentation import load_tomogram_labels
from cryopose.tomo.template_matching import MatchConfig, match_tomogram
from cryopose.tomo.templates import load_templates

TRAIN_SEEDS = 7101  # first training seed; tomogram k < 100 uses 7101 + k
EXTRA_TRAIN_SEEDS = 8001  # tomogram k >= 100 uses 8001 + k (7201... are test seeds)
MORE_TEST_SEEDS = 7200  # test tomogram k >= 1 (of --n-test) uses 7200 + k
DEFAULT_CLASSIFIER_WIDTH = 16  # every row before --classifier-width
UMC_F1 = 0.949
UMC_SMALL_F1 = 0.826


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="in-plane size (SHREC: 512)")
    parser.add_argument("--snr", type=float, default=0.5, help="tilt SNR (module docstring)")
    parser.add_argument("--n-train", type=int, default=2, help="training tomograms")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="training budget")
    parser.add_argument("--epochs", type=int, default=200, help="epoch cap")
    parser.add_argument("--width", type=int, default=8, help="U-Net width")
    parser.add_argument("--depth", type=int, default=3, help="U-Net levels")
    parser.add_argument("--patch", type=int, default=48, help="patch edge")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument(
        "--classifier-minutes",
        type=float,
        default=0.0,
        help="then train the crop classifier that names the picks (0: the U-Net names them)",
    )
    parser.add_argument(
        "--classifier-steps",
        type=int,
        default=None,
        help="step limit of the crop classifier (default: none, the time budget decides)",
    )
    parser.add_argument(
        "--n-test",
        type=int,
        default=1,
        help="test tomograms, scored as one set (seed 7001, then 7201, 7202, ...)",
    )
    parser.add_argument(
        "--classifier-n-train",
        type=int,
        default=None,
        help="tomograms the classifier trains on (default --n-train; more are simulated)",
    )
    parser.add_argument(
        "--classifier-background",
        action="store_true",
        help="the classifier also vetoes picks it takes for background (lower threshold)",
    )
    parser.add_argument(
        "--classifier-crop",
        type=int,
        default=24,
        help="edge of the classifier's cube, voxels (24, as in the rows before the library's "
        "default became 16)",
    )
    parser.add_argument(
        "--classifier-width",
        type=int,
        default=DEFAULT_CLASSIFIER_WIDTH,
        help="channels of the classifier's first block (16, as in the rows before the option; "
        "another width trains in its own folder beside the U-Net's)",
    )
    parser.add_argument(
        "--classifier-full-res-blocks",
        type=int,
        default=1,
        help="convolution blocks of the classifier before its first pooling (1, as in the rows "
        "before the option)",
    )
    parser.add_argument(
        "--classifier-ema",
        type=float,
        default=0.0,
        help="decay of the classifier's moving average of weights (0: none, as rows before it)",
    )
    parser.add_argument(
        "--classifier-eval-every",
        type=int,
        default=100,
        help="classifier steps between held-out measurements (100, as rows before the option; "
        "the library's default is 500)",
    )
    parser.add_argument(
        "--refine-radius",
        type=float,
        default=PickerSpec.refine_radius,
        help="mean-shift the reported centres over the U-Net foreground in a ball of this many "
        "class radii (0: the peaks as found, as rows before this option)",
    )
    parser.add_argument(
        "--converge-factor",
        type=float,
        default=PickerSpec.converge_factor,
        help="drop a refined pick within this many (smaller) class radii of a better one "
        "(0: keep all, as rows before this option)",
    )
    parser.add_argument(
        "--classify-at-peak",
        action="store_true",
        help="crop classifier sees crops at the peak only, not also at the mean-shifted "
        "centre (as rows before this option)",
    )
    parser.add_argument(
        "--classifier-members",
        type=int,
        default=1,
        help="crop classifiers averaged (an ensemble): the others are trained as the first "
        "with seeds 1, 2, ... (each --classifier-minutes, all counted in the compute)",
    )
    parser.add_argument(
        "--assembly",
        choices=("biological", "deposited"),
        default="biological",
        help="what each PDB model contributes to the simulation (and the templates)",
    )
    parser.add_argument(
        "--calibrate-unseen",
        type=int,
        default=0,
        help="calibrate the background veto's threshold on this many classifier tomograms the "
        "U-Net did not train on (0: the first two U-Net training tomograms, as earlier rows)",
    )
    parser.add_argument("--no-tm", action="store_true", help="skip template matching")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (core-h basis)")
    parser.add_argument(
        "--reuse-model",
        action="store_true",
        help="pick with the model already trained in --work (training time from its history)",
    )
    parser.add_argument(
        "--unet-flips",
        action="store_true",
        help="average the U-Net's probabilities over the four wedge-keeping rotations (4x its "
        "time), in a copy of the picking folder ({folder}_flips) recalibrated that way",
    )
    parser.add_argument(
        "--models-from",
        type=Path,
        default=None,
        help="copy trained model folders (as in benchmarks/models) into --work where missing and "
        "pick with them as --reuse-model does: the row's numbers without its hours of training",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/cryopose_bench_unet"))
    parser.add_argument("--tm-work", type=Path, default=Path("/tmp/cryopose_bench_tm"))
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    return parser.parse_args()


def _train_seed(k: int) -> int:
    """Seed of training tomogram ``k``: 7101 + k below 100, then 8001 + k (clear of the tests)."""
    return TRAIN_SEEDS + k if k < 100 else EXTRA_TRAIN_SEEDS + k


def _simulate(root: Path, args: argparse.Namespace, seed: int) -> Path:
    """The tomogram of ``seed`` with the run's size, SNR and assembly (simulated once)."""
    tag = "" if args.assembly == "biological" else f"_{args.assembly}"
    folder = root / f"s{args.size}_seed{seed}_snr{args.snr}{tag}"
    if not (folder / "reconstruction.mrc").is_file():
        simulate_tomogram(
            folder, size=args.size, seed=seed, snr=args.snr, progress=False,
            assembly=args.assembly,
        )  # fmt: skip
    return folder


def _member(
    model_dir: Path,
    k: int,
    cls_dirs: list[Path],
    network: CropClassifierConfig,
    train: ClassifierTrainConfig,
    minutes: float,
) -> tuple[Path, float]:
    """Crop classifier ``k >= 1`` of an ensemble: the first's settings with seed ``k``.

    Trained into ``model_dir/member{k}`` (resuming its checkpoint), or reused from there when
    its settings match. Returns the folder and its logged training seconds when reused (0
    when trained now: the caller's clock counts it).
    """
    folder = model_dir / f"member{k}"
    cfg = replace(train, seed=k)
    written = folder / CLASSIFIER_CONFIG
    if written.is_file():
        data = json.loads(written.read_text())
        if data.get("train") == asdict(cfg) and data.get("network") == asdict(network):
            return folder, float(data["history"][-1]["elapsed_s"])
    names = load_picker(model_dir)[0].class_names
    tomograms = [load_tomogram_labels(d, names) for d in cls_dirs]
    checkpoint = folder / "checkpoints" / "classifier.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    net, history = train_crop_classifier(
        tomograms, len(names), network, cfg, minutes, log=print, checkpoint=checkpoint
    )
    save_crop_classifier(folder, net, names, history, cfg)
    checkpoint.unlink()
    return folder, 0.0


def _classifier_home(model_dir: Path, width: int) -> Path:
    """Folder of the crop classifier of ``width``: the U-Net's own for 16, as every row before
    the option, else ``{model_dir}_w{width}`` beside it, holding a copy of the U-Net.

    So that trying a wider classifier leaves the width-16 one (and its calibration) in place.
    The copy is refreshed (weights and the picker's calibration) when the U-Net has changed.
    """
    if width == DEFAULT_CLASSIFIER_WIDTH:
        return model_dir
    home = model_dir.with_name(f"{model_dir.name}_w{width}")
    home.mkdir(exist_ok=True)
    weights = home / "model.pt"
    if not weights.is_file() or not filecmp.cmp(model_dir / "model.pt", weights, shallow=False):
        shutil.copy2(model_dir / "config.json", home / "config.json")
        shutil.copy2(model_dir / "model.pt", weights)  # last: its match means a full copy
    return home


def _trained_with(model_dir: Path) -> dict[str, object]:
    """Training settings of the crop classifier in ``model_dir`` (empty when not recorded)."""
    train = json.loads((model_dir / CLASSIFIER_CONFIG).read_text()).get("train")
    return train if isinstance(train, dict) else {}


def _copy_models(source: Path, work: Path) -> None:
    """Copy the model folders in ``source`` into ``work``, leaving files already there alone.

    So that a run trained elsewhere (committed to ``benchmarks/models``) picks again here, and a
    classifier trained here since (another ensemble member) is not overwritten.
    """
    folders = [d for d in sorted(source.iterdir()) if (d / "config.json").is_file()]
    if not folders:
        raise SystemExit(f"--models-from {source}: no model folder (with config.json) in it")

    def copy_missing(src: str, dst: str) -> None:
        if not Path(dst).exists():
            shutil.copy2(src, dst)

    for folder in folders:
        shutil.copytree(folder, work / folder.name, dirs_exist_ok=True, copy_function=copy_missing)


def _ensemble_key(cls_dir: Path, others: list[Path], calibration: list[Path]) -> dict[str, str]:
    """What an ensemble folder was built from: digests of the model files and the calibration."""
    files = [cls_dir / n for n in ("config.json", "model.pt", CLASSIFIER_CONFIG, "classifier.pt")]
    files += [d / n for d in others for n in (CLASSIFIER_CONFIG, "classifier.pt")]
    key = {str(f.relative_to(cls_dir.parent)): _digest(f) for f in files}
    key["calibration"] = " ".join(d.name for d in calibration)
    return key


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ensemble(pick_dir: Path, cls_dir: Path, others: list[Path], calibration: list[Path]) -> float:
    """Build ``pick_dir``: ``cls_dir``'s picker with the ensemble of its and ``others``' crop
    classifiers, the veto recalibrated on ``calibration``; or reuse it when built from the same
    files (``ensemble.json`` keeps their digests and the calibration's seconds).

    Returns the calibration's logged seconds when reused (0 when built now: the caller's clock
    counts it), so that a reused ensemble's row counts the same compute.
    """
    record = pick_dir / "ensemble.json"
    key = _ensemble_key(cls_dir, others, calibration)
    if record.is_file():
        data = json.loads(record.read_text())
        if data.get("key") == key:
            print(f"reusing the calibrated ensemble in {pick_dir}")
            return float(data["seconds"])
    shutil.rmtree(pick_dir, ignore_errors=True)
    shutil.copytree(cls_dir, pick_dir, ignore=shutil.ignore_patterns("checkpoints", "member*"))
    wall0 = time.perf_counter()
    ensemble_picker_classifiers(pick_dir, others, calibration)
    seconds = time.perf_counter() - wall0
    partial = record.with_suffix(".partial")
    partial.write_text(json.dumps({"key": key, "seconds": seconds}, indent=1))
    partial.replace(record)  # atomic: an interrupted write leaves no record, so a rebuild
    return 0.0


def _flips_home(
    pick_dir: Path, train_dirs: list[Path], calibration: list[Path]
) -> tuple[Path, float]:
    """``{pick_dir}_flips``: the U-Net and crop classifier(s) of ``pick_dir`` with flip-averaged
    U-Net probabilities (``PickerSpec.test_time_flips``), every threshold recalibrated with them.

    The U-Net's threshold on its training tomograms first (:func:`calibrate_picker`), then the
    background veto's on ``calibration`` (:func:`calibrate_cascade`) when there is one, as the
    training run calibrates a new model. Reused when built from the same files and tomograms
    (``flips.json`` keeps their digests and the calibrations' seconds).

    Returns the folder and the calibrations' logged seconds when reused (0 when built now: the
    caller's clock counts them), so that a reused folder's row counts the same compute.
    """
    home = pick_dir.with_name(f"{pick_dir.name}_flips")
    record = home / "flips.json"
    files = [pick_dir / n for n in ("config.json", "model.pt", CLASSIFIER_CONFIG, "classifier.pt")]
    key = {f.name: _digest(f) for f in files if f.is_file()}
    key["training"] = " ".join(d.name for d in train_dirs)
    key["calibration"] = " ".join(d.name for d in calibration)
    if record.is_file():
        data = json.loads(record.read_text())
        if data.get("key") == key:
            print(f"reusing the flip-calibrated picker in {home}")
            return home, float(data["seconds"])
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(
        pick_dir, home, ignore=shutil.ignore_patterns("checkpoints", "member*", "*.partial")
    )
    (home / "ensemble.json").unlink(missing_ok=True)  # describes pick_dir, not this copy
    wall0 = time.perf_counter()
    spec, net = load_picker(home)
    spec = replace(
        spec, test_time_flips=True, calibration={}, cascade_threshold=None, cascade_sigma=None
    )
    save_picker(home, spec, net)
    calibrate_picker(home, train_dirs)
    classifier = load_crop_classifier(home)
    if classifier is not None and classifier[0].config.background:
        calibrate_cascade(home, calibration)
    seconds = time.perf_counter() - wall0
    partial = record.with_suffix(".partial")
    partial.write_text(json.dumps({"key": key, "seconds": seconds}, indent=1))
    partial.replace(record)  # atomic: an interrupted write leaves no record, so a rebuild
    return home, 0.0


def main() -> None:
    args = _args()
    if args.models_from is not None:
        args.reuse_model = True
    torch.set_num_threads(args.threads)
    print(machine())
    args.work.mkdir(parents=True, exist_ok=True)
    train_dirs = [_simulate(args.work, args, _train_seed(k)) for k in range(args.n_train)]
    test_dir = _simulate(args.tm_work, args, SEED)
    more_tests = [_simulate(args.work, args, MORE_TEST_SEEDS + k) for k in range(1, args.n_test)]
    tag = "" if args.assembly == "biological" else f"_{args.assembly}"
    model_dir = args.work / f"unet_s{args.size}_snr{args.snr}_n{args.n_train}{tag}"
    config = TrainConfig(epochs=args.epochs, patch=args.patch, lr=args.lr)
    n_cls = args.classifier_n_train or args.n_train
    if args.calibrate_unseen and args.n_train + args.calibrate_unseen > n_cls:
        raise SystemExit(
            f"--calibrate-unseen {args.calibrate_unseen} needs --classifier-n-train >= "
            f"{args.n_train + args.calibrate_unseen} (the U-Net trains on the first {args.n_train})"
        )
    calibration = (
        [
            _simulate(args.work, args, _train_seed(args.n_train + k))
            for k in range(args.calibrate_unseen)
        ]
        if args.calibrate_unseen
        else train_dirs[:2]
    )
    if args.models_from is not None:
        _copy_models(args.models_from, args.work)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    logged_s = 0.0
    if args.reuse_model:  # training time as logged by the training run
        if not load_picker(model_dir)[0].calibration:  # calibrated after training normally
            calibrate_picker(model_dir, train_dirs)
        history = load_picker(model_dir)[0].history
        logged_s = float(history[-1]["elapsed_s"]) if history else 0.0
    else:  # trains, then calibrates the post-processing on the training tomograms
        train_picker(
            train_dirs,
            model_dir,
            UNet3DConfig(width=args.width, depth=args.depth),
            config,
            max_minutes=args.max_minutes,
        )
    cls_dir = _classifier_home(model_dir, args.classifier_width)  # model_dir for width 16
    existing = load_crop_classifier(cls_dir) if args.reuse_model else None
    crop = args.classifier_crop
    reuse_classifier = (
        existing is not None
        and existing[0].config.background == args.classifier_background
        and existing[0].config.crop == crop
        and existing[0].config.width == args.classifier_width
        and existing[0].config.full_res_blocks == args.classifier_full_res_blocks
        and _trained_with(cls_dir).get("ema", 0.0) == args.classifier_ema
        and _trained_with(cls_dir).get("eval_every", 100) == args.classifier_eval_every
    )
    if args.classifier_minutes > 0 and reuse_classifier:  # its time from its own log
        history = json.loads((cls_dir / CLASSIFIER_CONFIG).read_text())["history"]
        logged_s += float(history[-1]["elapsed_s"]) if history else 0.0
        uncalibrated = load_picker(cls_dir)[0].cascade_threshold is None
        alone = args.classifier_members == 1  # else the ensemble is calibrated below
        if args.classifier_background and alone and (uncalibrated or args.calibrate_unseen):
            # A classifier copied in from another run: calibrated here as after its training.
            calibrate_cascade(cls_dir, calibration)
    elif args.classifier_minutes > 0:
        cls_dirs = [_simulate(args.work, args, _train_seed(k)) for k in range(n_cls)]
        n_classes = len(load_picker(cls_dir)[0].class_names)
        steps = args.classifier_steps or UNCAPPED_STEPS  # as `cryopose tomo train` does
        train_picker_classifier(
            cls_dirs,
            cls_dir,
            CropClassifierConfig(
                n_classes,
                crop=crop,
                width=args.classifier_width,
                background=args.classifier_background,
                full_res_blocks=args.classifier_full_res_blocks,
            ),
            ClassifierTrainConfig(
                steps=steps, ema=args.classifier_ema, eval_every=args.classifier_eval_every
            ),
            max_minutes=args.classifier_minutes,
            calibration=calibration,
        )
    pick_dir = cls_dir
    if args.classifier_minutes > 0 and args.classifier_members > 1:
        loaded = load_crop_classifier(cls_dir)
        assert loaded is not None
        first = json.loads((cls_dir / CLASSIFIER_CONFIG).read_text())
        cls_dirs = [_simulate(args.work, args, _train_seed(k)) for k in range(n_cls)]
        others = []
        for k in range(1, args.classifier_members):
            folder, seconds = _member(
                cls_dir,
                k,
                cls_dirs,
                loaded[0].config,
                ClassifierTrainConfig(**first["train"]),
                args.classifier_minutes,
            )
            others.append(folder)
            logged_s += seconds
        pick_dir = cls_dir.with_name(f"{cls_dir.name}_members{args.classifier_members}")
        logged_s += _ensemble(pick_dir, cls_dir, others, calibration)
    if args.unet_flips:
        pick_dir, seconds = _flips_home(pick_dir, train_dirs, calibration)
        logged_s += seconds
    train_wall = time.perf_counter() - wall0 + logged_s
    train_cpu = time.process_time() - cpu0 + logged_s
    spec, net = load_picker(pick_dir)
    spec = replace(
        spec,
        refine_radius=args.refine_radius,
        converge_factor=args.converge_factor,
        classify_refined=not args.classify_at_peak,
    )
    classifier = load_crop_classifier(pick_dir) if args.classifier_minutes > 0 else None
    unet_only_pairs, pairs, pick_wall = [], [], 0.0
    for folder in [test_dir, *more_tests]:
        tomo, angpix = read_map(folder / "reconstruction.mrc")
        truth = load_truth(folder)
        wall0 = time.perf_counter()
        normalised, prob = segment_tomogram(tomo, spec, net)  # once for both kinds of picks
        segment_wall = time.perf_counter() - wall0
        wall0 = time.perf_counter()
        picks = pick_segmented(normalised, prob, spec)
        named_wall = time.perf_counter() - wall0  # the U-Net's own classes
        unet_only_pairs.append((picks, truth))
        wall0 = time.perf_counter()
        if classifier is not None and classifier[0].config.background:  # threshold changes
            picks = pick_segmented(normalised, prob, spec, classifier)
            named_wall = time.perf_counter() - wall0
        elif classifier is not None:
            picks = classify_picks(normalised, picks, *classifier)
            named_wall += time.perf_counter() - wall0
        pick_wall += segment_wall + named_wall
        pairs.append((picks, truth))
        print(f"{folder.name}: {_summary('U-Net', evaluate_picks(picks, truth))}")
    unet_only = evaluate_tomograms(unet_only_pairs)
    unet = evaluate_tomograms(pairs)
    tomo, angpix = read_map(test_dir / "reconstruction.mrc")  # template matching's
    truth = load_truth(test_dir)
    last = spec.history[-1] if spec.history else {}
    n_objects = sum(len(t.class_ids) for _, t in pairs)
    print(f"\n=== {len(pairs)} test tomograms of {tuple(tomo.shape)} voxels, {n_objects} objects")
    print(
        f"U-Net {args.width}x{args.depth}: {len(spec.history)} epochs of "
        f"{config.steps_per_epoch} x {config.batch_size} patches of {args.patch}^3 on "
        f"{args.n_train} tomograms; last epoch {dict(last)}"
    )
    print(
        f"peak threshold {spec.threshold:.4f}; on the training tomograms {dict(spec.calibration)}"
    )
    if classifier is not None:
        print(f"--- U-Net classes (no classifier)\n{format_tables(unet_only)}")
        print(f"--- U-Net + crop classifier ({args.classifier_minutes:g} min)")
    else:
        print("--- U-Net")
    print(format_tables(unet))
    unet_core_h = (train_wall + pick_wall) / 3600.0 * args.threads
    print(
        f"U-Net compute: training {train_wall:.0f} s wall ({train_cpu:.0f} s CPU), picking "
        f"{pick_wall:.0f} s wall; {unet_core_h:.3f} core-h at {args.threads} cores "
        f"(picking alone {pick_wall / 3600 * args.threads:.4f} core-h)"
    )
    tm_text = "same tomo TM not run"
    if not args.no_tm:
        templates = load_templates(angpix=angpix, assembly=args.assembly)
        wall0 = time.perf_counter()
        result = match_tomogram(tomo, templates, MatchConfig(), angpix)
        tm_wall = time.perf_counter() - wall0
        tm_f = evaluate_picks(filter_picks(result.candidates, THRESHOLD), truth)
        tm_core_h = tm_wall / 3600.0 * args.threads
        print(f"--- TM-F (threshold {THRESHOLD}) on the same tomogram\n{format_tables(tm_f)}")
        print(f"TM compute: {tm_wall:.0f} s wall, {tm_core_h:.3f} core-h at {args.threads} cores")
        print(_summary("TM-F", tm_f))
        tm_text = f"same tomo TM-F F1 {tm_f.f1:.3f} ({tm_core_h:.3f} core-h)"
    print(_summary("U-Net", unet))
    small = unet.size_group_f1.get("small", float("nan"))
    defaults = {"width": 8, "depth": 3, "patch": 48, "lr": 3e-3, "epochs": 200}
    options = "".join(
        f" --{k} {getattr(args, k):g}" for k, v in defaults.items() if getattr(args, k) != v
    )
    trained = f"train {args.n_train} tomos, {args.max_minutes:g} min"
    if args.classifier_minutes > 0:
        options += f" --classifier-minutes {args.classifier_minutes:g}"
        options += f" --classifier-n-train {n_cls}" if n_cls != args.n_train else ""
        trained += f" + crop classifier {args.classifier_minutes:g} min on {n_cls} tomos"
        if args.classifier_crop != 24:
            options += f" --classifier-crop {args.classifier_crop}"
            trained += f", {args.classifier_crop}^3 crops"
        if args.classifier_width != 16:
            options += f" --classifier-width {args.classifier_width}"
            trained += f", width {args.classifier_width}"
        if args.classifier_full_res_blocks != 1:
            options += f" --classifier-full-res-blocks {args.classifier_full_res_blocks}"
            trained += f", {args.classifier_full_res_blocks} blocks before pooling"
        if args.classifier_ema:
            options += f" --classifier-ema {args.classifier_ema:g}"
            trained += f", weights averaged (decay {args.classifier_ema:g})"
        if args.classifier_eval_every != 100:
            options += f" --classifier-eval-every {args.classifier_eval_every}"
            trained += f", held-out accuracy every {args.classifier_eval_every} steps"
        if args.classifier_members > 1:
            options += f" --classifier-members {args.classifier_members}"
            trained += f", {args.classifier_members} classifiers averaged (seeds 0-"
            trained += f"{args.classifier_members - 1}, each {args.classifier_minutes:g} min)"
        if args.classifier_steps is not None:
            options += f" --classifier-steps {args.classifier_steps}"
            trained += f" (at most {args.classifier_steps} steps)"
        if args.classifier_background:
            options += " --classifier-background"
            trained += (
                f" with background veto, threshold {spec.cascade_threshold:.3f} instead of "
                f"{spec.threshold:.3f}"
            )
            if spec.cascade_sigma is not None and spec.cascade_sigma != spec.sigma:
                trained += f", peaks at sigma {spec.cascade_sigma:g} instead of {spec.sigma:g}"
        if args.calibrate_unseen:
            options += f" --calibrate-unseen {args.calibrate_unseen}"
            trained += f", calibrated on {args.calibrate_unseen} tomos the U-Net did not see"

        trained += f"; U-Net classes alone: small F1 {unet_only.size_group_f1['small']:.3f}"
    z, y, x = tomo.shape
    units = ""
    if args.assembly != "biological":
        options += f" --assembly {args.assembly}"
        units = ", asymmetric units (SHREC's masses)"
    if args.classifier_minutes > 0 and args.classifier_background:
        units += ", background veto"
    if args.refine_radius != PickerSpec.refine_radius:
        options += f" --refine-radius {args.refine_radius:g}"
    if args.refine_radius > 0:
        units += f", centres mean-shifted ({args.refine_radius:g} class radii)"
    if args.converge_factor != PickerSpec.converge_factor:
        options += f" --converge-factor {args.converge_factor:g}"
    if args.converge_factor > 0:
        units += f", converged picks dropped ({args.converge_factor:g}x the smaller class radius)"
    if args.classify_at_peak:
        options += " --classify-at-peak"
    elif args.classifier_minutes > 0:
        units += ", classified at peak and refined centre"
        if args.classifier_background and PickerSpec.cascade_saddle_ratio <= 0:
            units += ", no saddle merging before naming"
    if args.threads != 1:  # a time budget buys more steps on more threads
        options += f" --threads {args.threads}"
    if args.unet_flips:
        options += " --unet-flips"
        units += ", U-Net averaged over 4 rotations"
    if args.models_from is not None:
        options += f" --models-from {args.models_from}"
        trained = f"models of {args.models_from}: {trained}"
    if args.n_test > 1:
        options += f" --n-test {args.n_test}"
        units += f", {args.n_test} test tomograms pooled"
        tm_text = tm_text.replace("same tomo", "first test tomo")
    emit(
        Row(
            area="cryo-ET",
            name=f"U-Net picking, SNR {args.snr}, {x}x{y}x{z}{units}",
            cryopose=(
                f"F1 {unet.f1:.3f}, small F1 {small:.3f}; {unet_core_h:.3f} core-h "
                f"({trained}); {tm_text}"
            ),
            peer=f"SHREC 2020 UMC: F1 {UMC_F1}, small F1 {UMC_SMALL_F1} (SHREC's data, GPU)",
            ratio=unet.f1 / UMC_F1,
            command=(
                f"python benchmarks/bench_unet_picking.py --size {args.size} --snr {args.snr} "
                f"--n-train {args.n_train} --max-minutes {args.max_minutes:g}{options}"
            ),
            by_command=True,  # rows of other budgets stay
        ),
        args.write,
    )


if __name__ == "__main__":
    main()
