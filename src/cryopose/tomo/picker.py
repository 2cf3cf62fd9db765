"""Learned cryo-ET picker: train a 3D U-Net on simulated tomograms, pick new ones.

What ``cryopose tomo train`` and ``cryopose tomo pick`` run. Training
(:func:`train_picker`) reads SHREC model folders (:mod:`cryopose.tomo.segmentation` for the
targets, loss, augmentation and patch sampling) and fits the network with Lightning; picking
(:func:`pick_tomogram`) segments a whole tomogram tile by tile and clusters the foreground
(:mod:`cryopose.tomo.clustering`).

Model folder
------------
::

    config.json              {"format": 1, "network": {...}, "class_names": [...],
                              "class_voxels": {...}, "min_size_fraction": ..., "train": {...},
                              "history": [...]}
    model.pt                 U-Net state dict, tensors only: torch.load(weights_only=True)
    checkpoints/last.ckpt    Lightning checkpoint of the last epoch (to resume training)
    checkpoints/classifier.ckpt
                             the crop classifier's training state while it trains (to
                             resume it); removed once classifier.json/.pt are written
    classifier.json/.pt      optional crop classifier that names the picks
                             (:mod:`cryopose.tomo.classifier`, ``classifier_minutes``); with
                             a background output it also vetoes picks, and config.json
                             holds ``cascade_threshold`` (:func:`calibrate_cascade`);
                             or an ensemble of them (:func:`ensemble_picker_classifiers`)

``class_voxels`` is the median target volume (voxels, after erosion) of each class over the
training particles. Picking (``method`` ``"peaks"``, the default) takes the local maxima of the
smoothed foreground probability (:func:`cryopose.tomo.clustering.peak_picks`) above
``threshold``, which :func:`calibrate_picker` chooses after training as the one that
maximises the F1 of the picks on the training tomograms (the raw foreground probability of a
network trained on particle-centred patches is not calibrated: measured, the best threshold
was 0.98, not 0.5, on both a training and an unseen tomogram). ``method`` ``"components"``
keeps the connected components of the argmax labels, dropping components smaller than
``min_size_fraction`` of their class's volume. Training resumes from
``checkpoints/last.ckpt`` when it exists (same network), continuing up to ``epochs`` epochs
in total; the crop classifier resumes from ``checkpoints/classifier.ckpt`` the same way.

>>> spec = PickerSpec(UNet3DConfig(width=4, depth=2), ("1bxn",), {"1bxn": 100})
>>> spec.min_voxels()
{1: 25}
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scipy import ndimage

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.io.mrc import read_map
from cryopose.io.picks import Picks, write_picks
from cryopose.models.unet3d import UNet3D, UNet3DConfig
from cryopose.simulate.tomogram import DEFAULT_CLASSES
from cryopose.tomo.classifier import (
    CLASSIFIER_CONFIG,
    AnyCropClassifier,
    ClassifierTrainConfig,
    CropClassifierConfig,
    classify_picks,
    combine_crop_classifiers,
    load_crop_classifier,
    save_crop_classifier,
    train_crop_classifier,
)
from cryopose.tomo.clustering import (
    cluster_segmentation,
    drop_converged,
    match_centres,
    merge_saddle_picks,
    peak_picks,
    refine_centres,
)
from cryopose.tomo.segmentation import (
    PatchDataset,
    SegmentationModule,
    TomogramLabels,
    augment_rotations,
    load_tomogram_labels,
    n_tiles,
    normalise,
    predict_tiled,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "PickerSpec",
    "TrainConfig",
    "best_threshold",
    "calibrate_cascade",
    "calibrate_picker",
    "ensemble_picker_classifiers",
    "load_picker",
    "name_picks",
    "pick_segmented",
    "pick_tomogram",
    "pick_tomogram_file",
    "refine_picks",
    "save_picker",
    "segment_tomogram",
    "train_picker",
    "train_picker_classifier",
    "unet_probabilities",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.pt"
FORMAT = 1
_LAST = "last.ckpt"
CLASSIFIER_CHECKPOINT = "classifier.ckpt"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (saved in ``config.json``).

    Attributes
    ----------
    epochs
        Epochs in total (a resumed run continues up to this many).
    steps_per_epoch
        Batches per epoch (patches are drawn at random each time).
    batch_size
        Patches per batch.
    patch
        Patch edge in voxels (shrunk to the smallest tomogram edge, multiple of the divisor).
    lr
        Adam learning rate.
    erode
        Erosion steps of each particle's target (:func:`load_tomogram_labels`).
    p_particle
        Probability that a patch is centred on a particle.
    class_power
        Class ``c`` is drawn for a particle patch with weight ``voxels_c ** -class_power``
        (0: uniform over classes; 0.5: small proteins more often).
    val_fraction
        Fraction of each tomogram's ``y`` range (at least one patch) held out for validation;
        0 trains on everything and skips validation.
    val_patches
        Validation patches per epoch (fixed).
    alpha, beta, ce_weight, fg_weight
        Loss (:func:`cryopose.tomo.segmentation.segmentation_loss`); ``fg_weight`` weighs the
        binary foreground Dice that localisation relies on.
    mirror
        Also augment with hand-changing flips.
    seed
        Seed of the network's initialisation and the patch sampling.
    """

    epochs: int = 30
    steps_per_epoch: int = 50
    batch_size: int = 4
    patch: int = 48
    lr: float = 1e-3
    erode: int = 1
    p_particle: float = 0.8
    class_power: float = 0.5
    val_fraction: float = 0.15
    val_patches: int = 8
    alpha: float = 0.5
    beta: float = 0.5
    ce_weight: float = 1.0
    fg_weight: float = 1.0
    mirror: bool = False
    seed: int = 0


@dataclass(frozen=True)
class PickerSpec:
    """What a model folder describes.

    Attributes
    ----------
    network
        U-Net architecture; ``n_classes == len(class_names) + 1``.
    class_names
        Protein classes, model index ``i + 1`` for ``class_names[i]``.
    class_voxels
        Median target voxels per class (from training), for the size filter.
    min_size_fraction
        Components smaller than this fraction of their class's volume are dropped.
    merge_radius
        Components within this many class radii (radius of a sphere of the class's volume)
        of a larger kept component of that class are dropped as its fragments.
    tile, overlap
        Default tiling of :func:`pick_tomogram`.
    method
        ``"peaks"`` (smoothed foreground maxima) or ``"components"`` (connected components).
    sigma, peak_radius, threshold
        Smoothing, peak neighbourhood and score threshold of ``"peaks"``
        (:func:`cryopose.tomo.clustering.peak_picks`); ``threshold`` is set by
        :func:`calibrate_picker`. ``peak_radius`` 2 instead of 4 lets a small particle
        beside a bigger one keep its own maximum (the bigger one's foreground no longer
        fills its 9^3 neighbourhood); duplicate maxima of one particle are left to the saddle
        merging. Chosen on two training tomograms of the SNR 0.5 benchmark (F1 0.965 ->
        0.969 and 0.971 -> 0.976, small particles found 52 -> 53 and 51 -> 53 of 62).
    saddle_ratio, saddle_distance
        ``"peaks"``: merge two picks closer than ``saddle_distance`` voxels whose foreground
        stays above ``saddle_ratio`` x the lower score between them
        (:func:`cryopose.tomo.clustering.merge_saddle_picks`; 0 turns it off). Chosen on two
        training tomograms of the SNR 0.5 benchmark (0.6 of 1, 0.8, 0.7, 0.6, 0.5: F1 0.958
        -> 0.971, multiple hits 9 -> 2); on its unseen test tomogram F1 0.938 -> 0.955.
    calibration
        What :func:`calibrate_picker` measured (``threshold``, ``f1``, ``tp``, ``fp``, ``fn``
        on the training tomograms; ``cascade_*`` the same from :func:`calibrate_cascade`).
    cascade_threshold
        Score threshold used instead of ``threshold`` when a crop classifier with a background
        output vetoes the picks (:func:`calibrate_cascade`); ``None`` until calibrated.
    cascade_sigma
        Peak smoothing used instead of ``sigma`` with such a classifier (the veto removes the
        noise peaks a smaller smoothing adds, so it can afford to find more small particles);
        chosen by :func:`calibrate_cascade`, ``None`` until then.
    refine_radius, refine_iterations
        The reported centres are moved by a mean shift over the unsmoothed foreground in a
        ball of ``refine_radius`` x the class's radius (the final class: the crop
        classifier's when there is one), ``refine_iterations`` steps
        (:func:`cryopose.tomo.clustering.refine_centres`; 0 turns it off). A foreground
        maximum lies where the most protein is: 3-4 voxels off the centre of the hollow
        20S proteasome (3j9i), outside its occupancy. Measured on 12 test tomograms of the
        SNR 0.5 benchmark (U-Net + crop classifier, peaks at sigma 1.5): F1 0.960 -> 0.969,
        large-protein F1 0.946 -> 0.978, mean distance to the centre 1.76 -> 0.64 voxels;
        1.0 x the radius gave F1 0.969 and 1.61 voxels, 2.0 x F1 0.928 (neighbours pull).
    classify_refined
        With a crop classifier, classify each pick from crops at its peak and at the peak
        mean-shifted with the U-Net's class (probabilities averaged): the classifier was
        trained on crops around particle centres, and a peak can be 3-5 voxels off a
        medium or large particle's centre. Measured on 12 test tomograms of the SNR 0.5
        benchmark (two-classifier ensemble, with ``converge_factor`` 1): medium-protein F1
        0.934 -> 0.957, large 0.974 -> 0.997, small 0.781 -> 0.792, F1 0.971 -> 0.970.
    converge_factor
        After refinement, drop a pick closer than this x the smaller class radius to a
        better-scored one (:func:`cryopose.tomo.clustering.drop_converged`; 0 turns it off):
        two maxima of one particle converge on its centre and SHREC counts the second as a
        multiple hit. On the same tomograms multiple hits 24 -> 8 (F1 0.967 -> 0.970).
    cascade_saddle_ratio
        ``saddle_ratio`` of the picks a vetoing crop classifier names (0: no saddle merging).
        Refinement and ``converge_factor`` remove the second maximum of one particle after
        it is named, so the saddle merging before, which also joins a small particle to
        the bigger one it touches, is no longer needed. On the same tomograms (sigma 1.5,
        converge_factor 1): small-protein F1 0.792 -> 0.799, F1 0.970 -> 0.969.
    test_time_flips
        Average the U-Net's probabilities over the four wedge-keeping rotations of its
        training augmentation (:func:`unet_probabilities`), in picking and in every
        calibration: 4x the segmentation time.
    train
        Settings of the training that produced the weights.
    history
        Per-epoch log (``epoch``, ``train_loss``, ``val_loss``, ``val_fg_dice``, ...).
    """

    network: UNet3DConfig
    class_names: tuple[str, ...]
    class_voxels: Mapping[str, float]
    min_size_fraction: float = 0.25
    merge_radius: float = 1.0
    tile: int = 64
    overlap: int = 16
    method: str = "peaks"
    sigma: float = 1.0
    peak_radius: int = 2
    threshold: float = 0.5
    saddle_ratio: float = 0.6
    saddle_distance: float = 12.0
    calibration: Mapping[str, float] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    history: tuple[Mapping[str, float], ...] = ()
    cascade_threshold: float | None = None
    cascade_sigma: float | None = None
    refine_radius: float = 1.5
    refine_iterations: int = 3
    classify_refined: bool = True
    converge_factor: float = 1.0
    cascade_saddle_ratio: float = 0.0
    test_time_flips: bool = False

    def class_radius(self) -> dict[str, float]:
        """Radius of a sphere of each class's median target volume, voxels, by class name."""
        return {
            name: (3.0 * float(v) / (4.0 * math.pi)) ** (1.0 / 3.0)
            for name, v in self.class_voxels.items()
        }

    def min_voxels(self) -> dict[int, int]:
        """Least component size per model class index (size filter)."""
        out = {}
        for i, name in enumerate(self.class_names):
            if name in self.class_voxels:
                out[i + 1] = round(self.min_size_fraction * float(self.class_voxels[name]))
        return out

    def min_distance(self) -> dict[int, float]:
        """Fragment suppression radius per class index.

        ``merge_radius`` times the radius of a sphere of the class's volume, in voxels.
        """
        radius = self.class_radius()
        return {
            i + 1: self.merge_radius * radius[name]
            for i, name in enumerate(self.class_names)
            if name in radius
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (``format`` included)."""
        return {
            "format": FORMAT,
            "network": self.network.to_dict(),
            "class_names": list(self.class_names),
            "class_voxels": {k: float(v) for k, v in self.class_voxels.items()},
            "min_size_fraction": self.min_size_fraction,
            "merge_radius": self.merge_radius,
            "tile": self.tile,
            "overlap": self.overlap,
            "method": self.method,
            "sigma": self.sigma,
            "peak_radius": self.peak_radius,
            "threshold": self.threshold,
            "saddle_ratio": self.saddle_ratio,
            "saddle_distance": self.saddle_distance,
            "calibration": dict(self.calibration),
            "train": asdict(self.train),
            "history": [dict(h) for h in self.history],
            "cascade_threshold": self.cascade_threshold,
            "cascade_sigma": self.cascade_sigma,
            "refine_radius": self.refine_radius,
            "refine_iterations": self.refine_iterations,
            "classify_refined": self.classify_refined,
            "converge_factor": self.converge_factor,
            "cascade_saddle_ratio": self.cascade_saddle_ratio,
            "test_time_flips": self.test_time_flips,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> PickerSpec:
        """Inverse of :meth:`to_dict`; :class:`InputError` naming ``path`` on bad content."""
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            spec = cls(
                network=UNet3DConfig.from_dict(dict(data["network"])),
                class_names=tuple(str(c) for c in data["class_names"]),
                class_voxels={str(k): float(v) for k, v in data["class_voxels"].items()},
                min_size_fraction=float(data["min_size_fraction"]),
                merge_radius=float(data["merge_radius"]),
                tile=int(data["tile"]),
                overlap=int(data["overlap"]),
                method=str(data.get("method", "peaks")),
                sigma=float(data.get("sigma", 1.0)),
                peak_radius=int(data.get("peak_radius", 4)),
                threshold=float(data.get("threshold", 0.5)),
                saddle_ratio=float(data.get("saddle_ratio", 0.6)),
                saddle_distance=float(data.get("saddle_distance", 12.0)),
                calibration={str(k): float(v) for k, v in data.get("calibration", {}).items()},
                train=TrainConfig(**data["train"]),
                history=tuple(dict(h) for h in data.get("history", [])),
                cascade_threshold=(
                    None
                    if data.get("cascade_threshold") is None
                    else float(data["cascade_threshold"])
                ),
                cascade_sigma=(
                    None if data.get("cascade_sigma") is None else float(data["cascade_sigma"])
                ),
                refine_radius=float(data.get("refine_radius", 1.5)),
                refine_iterations=int(data.get("refine_iterations", 3)),
                classify_refined=bool(data.get("classify_refined", True)),
                converge_factor=float(data.get("converge_factor", 1.0)),
                cascade_saddle_ratio=float(data.get("cascade_saddle_ratio", 0.0)),
                test_time_flips=bool(data.get("test_time_flips", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"not a cryopose picker config ({exc})") from exc
        if spec.method not in ("peaks", "components"):
            raise InputError(path, f"method {spec.method!r}, expected 'peaks' or 'components'")
        if spec.network.n_classes != len(spec.class_names) + 1:
            raise InputError(
                path,
                f"network has {spec.network.n_classes} classes, expected "
                f"{len(spec.class_names) + 1} (background + class_names)",
            )
        if spec.refine_radius < 0 or spec.refine_iterations < 0 or spec.converge_factor < 0:
            raise InputError(
                path,
                f"refine_radius {spec.refine_radius}, refine_iterations "
                f"{spec.refine_iterations} and converge_factor {spec.converge_factor} must not "
                "be negative",
            )
        return spec


# ----------------------------------------------------------------------------- model folder


def save_picker(model_dir: str | Path, spec: PickerSpec, net: torch.nn.Module) -> Path:
    """Write ``config.json`` and the weights-only ``model.pt`` atomically.

    Parameters
    ----------
    model_dir
        Folder (created).
    spec
        Description of the model.
    net
        The trained :class:`UNet3D`.

    Returns
    -------
    Path
        ``model_dir``.
    """
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        torch.save(state, tmp)
    _write_config(folder, spec)
    return folder


def _write_config(folder: Path, spec: PickerSpec) -> None:
    with atomic_path(folder / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(spec.to_dict(), indent=2) + "\n", encoding="utf-8")


def _read_spec(folder: Path) -> PickerSpec:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise InputError(path, "missing; expected a model folder written by cryopose tomo train")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(path, f"expected JSON ({exc})") from exc
    return PickerSpec.from_dict(data, path)


def load_picker(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[PickerSpec, UNet3D]:
    """Load a model folder; the weights are read with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    model_dir
        Folder written by :func:`save_picker` / :func:`train_picker`.
    device
        Where to put the network.

    Returns
    -------
    spec, net
        The description and the network in ``eval`` mode.

    Raises
    ------
    InputError
        Missing or malformed files, weights that do not fit the network.
    """
    folder = Path(model_dir)
    spec = _read_spec(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(weights, "missing; expected the weights of the trained U-Net")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net = UNet3D(spec.network)
        net.load_state_dict(state)
    except Exception as exc:  # torch.load raises many kinds on a damaged file
        raise InputError(
            weights, f"unreadable, or weights do not fit {spec.network} ({exc!r})"
        ) from exc
    return spec, net.to(device).eval()


# ----------------------------------------------------------------------------- training


class _LogLines(Callback):
    """One log line per epoch (loss, validation metrics, elapsed time); keeps a history."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        entry = {"epoch": float(trainer.current_epoch + 1), **metrics}
        entry["elapsed_s"] = time.perf_counter() - self.start
        self.history.append(entry)
        if self.enabled:
            text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
            print(
                f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {text} "
                f"({entry['elapsed_s']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )


def _class_voxels(
    tomograms: Sequence[TomogramLabels], class_names: Sequence[str]
) -> dict[str, float]:
    """Median target voxels of each class over every training particle."""
    out: dict[str, float] = {}
    classes = torch.cat([t.classes for t in tomograms])
    voxels = torch.cat([t.voxels for t in tomograms]).to(torch.float64)
    for i, name in enumerate(class_names):
        sel = voxels[classes == i + 1]
        if len(sel):
            out[name] = float(sel.median())
    return out


def _patch_edge(tomograms: Sequence[TomogramLabels], patch: int, divisor: int) -> int:
    """Largest multiple of ``divisor`` not above ``patch`` or any tomogram edge."""
    smallest = min(min(t.volume.shape) for t in tomograms)
    edge = (min(patch, smallest) // divisor) * divisor
    if edge < divisor:
        raise InputError(tomograms[0].name, f"tomogram edges below the U-Net divisor {divisor}")
    return edge


#: Step limit of a crop classifier given only a time budget: none in practice.
UNCAPPED_STEPS = 10**9


def train_picker(
    folders: Sequence[str | Path],
    model_dir: str | Path,
    network: UNet3DConfig | None = None,
    train: TrainConfig | None = None,
    class_names: Sequence[str] = DEFAULT_CLASSES,
    max_minutes: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    classifier_minutes: float | None = None,
    classifier_background: bool = False,
    classifier_steps: int | None = None,
    classifier_crop: int | None = None,
    classifier_full_res_blocks: int | None = None,
    classifier_calibration: Sequence[str | Path] | None = None,
) -> Path:
    """Train a U-Net picker on SHREC model folders and write the model folder.

    Parameters
    ----------
    folders
        Simulated tomogram folders (:func:`cryopose.simulate.tomogram.simulate_tomogram`).
    model_dir
        Output folder (module docstring); an existing ``checkpoints/last.ckpt`` is resumed.
    network
        Architecture; default ``UNet3DConfig(n_classes=len(class_names) + 1)``. When resuming,
        the saved architecture is used.
    train
        Training settings; default :class:`TrainConfig`.
    class_names
        Protein classes to learn (default the 12 SHREC classes).
    max_minutes
        Stop training after this many minutes (wall clock) even before ``epochs``.
    device
        ``cpu``, ``cuda``, ``cuda:1``, ...
    progress
        Log one line per epoch (and a progress bar in a terminal).
    classifier_minutes
        Then train the crop classifier of :mod:`cryopose.tomo.classifier` for this many
        minutes (:func:`train_picker_classifier`); ``None`` or 0: no time limit, and no
        classifier unless ``classifier_steps`` asks for one.
    classifier_background
        Give that classifier a background output that vetoes picks, and calibrate the
        threshold of the vetoed picks (:func:`calibrate_cascade`).
    classifier_steps
        Train the crop classifier for at most this many optimiser steps; a step limit alone
        gives the same classifier on any machine, a time limit does not. Default: with
        ``classifier_minutes`` no step limit (the time budget is used in full; the classifier
        was still improving at 10,000 steps), else :class:`ClassifierTrainConfig`'s 5,000.
    classifier_crop
        Edge in voxels of the cube the classifier sees; default
        :class:`CropClassifierConfig`'s.
    classifier_full_res_blocks
        Convolution blocks of the classifier before its first pooling; default
        :class:`CropClassifierConfig`'s.
    classifier_calibration
        With a background output: tomogram folders, best not among ``folders``, that
        calibrate the threshold of the vetoed picks; default the first two of ``folders``
        (:func:`train_picker_classifier`).

    Returns
    -------
    Path
        ``model_dir``.

    Raises
    ------
    InputError
        No folders, bad folders, tomograms too small for the patches.
    """
    if not folders:
        raise InputError(None, "expected at least one tomogram folder to train on")
    if classifier_minutes is not None and not classifier_minutes >= 0:
        raise InputError(None, f"classifier minutes must be >= 0, got {classifier_minutes}")
    if classifier_steps is not None and classifier_steps < 1:
        raise InputError(None, f"classifier steps must be >= 1, got {classifier_steps}")
    crop_net = CropClassifierConfig(max(len(class_names), 1), background=classifier_background)
    if classifier_crop is not None:  # checked before hours of U-Net training, not after
        crop_net = replace(crop_net, crop=classifier_crop)
    if classifier_full_res_blocks is not None:
        crop_net = replace(crop_net, full_res_blocks=classifier_full_res_blocks)
    with_classifier = bool(classifier_minutes) or classifier_steps is not None
    if classifier_background and not with_classifier:
        raise InputError(
            None, "a classifier background output needs classifier minutes > 0 or steps"
        )
    if classifier_calibration is not None:  # checked before hours of training, not after
        if not classifier_background:
            raise InputError(
                None, "calibration tomograms need a classifier with a background output"
            )
        for item in classifier_calibration:
            for name in ("reconstruction.mrc", "class_mask.mrc", "occupancy_mask.mrc"):
                if not (Path(item) / name).is_file():
                    raise InputError(Path(item) / name, "missing; expected a SHREC model folder")
    folder = Path(model_dir)
    ckpt_dir = folder / "checkpoints"
    last = ckpt_dir / _LAST
    resume = last.is_file() and (folder / CONFIG_NAME).is_file()
    tc = train or TrainConfig()
    if resume:
        old = _read_spec(folder)
        net_cfg, names = old.network, old.class_names
    else:
        names = tuple(class_names)
        net_cfg = network or UNet3DConfig(n_classes=len(names) + 1)
    if net_cfg.n_classes != len(names) + 1:
        raise InputError(None, f"network classes {net_cfg.n_classes} != {len(names)} + 1")
    tomograms = [load_tomogram_labels(f, names, tc.erode) for f in folders]
    divisor = 2 ** (net_cfg.depth - 1)
    edge = _patch_edge(tomograms, tc.patch, divisor)
    voxels = _class_voxels(tomograms, names)
    weights = torch.zeros(len(names) + 1, dtype=torch.float64)
    for i, n in enumerate(names):
        weights[i + 1] = voxels[n] ** -tc.class_power if voxels.get(n, 0) > 0 else 0.0
    n_y = min(t.volume.shape[1] for t in tomograms)
    val_frac = max(tc.val_fraction, edge / n_y) if tc.val_fraction > 0 else 0.0
    split = 1.0 - val_frac
    patch = (edge, edge, edge)
    train_set = PatchDataset(
        tomograms,
        patch,
        tc.steps_per_epoch * tc.batch_size,
        (0.0, split),
        weights,
        tc.p_particle,
        augment=True,
        mirror=tc.mirror,
        seed=tc.seed,
    )
    loader = torch.utils.data.DataLoader(train_set, batch_size=tc.batch_size)
    val_loader = None
    if val_frac > 0:
        val_set = PatchDataset(
            tomograms, patch, tc.val_patches, (split, 1.0), weights, tc.p_particle, False,
            seed=tc.seed + 1,
        )  # fmt: skip
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=tc.batch_size)
    torch.manual_seed(tc.seed)
    module = SegmentationModule(net_cfg, tc.lr, tc.alpha, tc.beta, tc.ce_weight, tc.fg_weight)
    spec = PickerSpec(net_cfg, names, voxels, train=tc)
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        _write_config(folder, spec)
    log = _LogLines(progress)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)
    accelerator = "cpu" if device == "cpu" else "gpu"
    devices: Any = [torch.device(device).index or 0] if accelerator == "gpu" else 1
    trainer_options: dict[str, Any] = {
        "max_epochs": tc.epochs,
        "max_time": {"minutes": max_minutes} if max_minutes is not None else None,
        "accelerator": accelerator,
        "devices": devices,
        "logger": False,
        "callbacks": [checkpoint, log],
        "enable_progress_bar": progress and sys.stderr.isatty(),
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "default_root_dir": folder,
    }
    _fit(trainer_options, module, loader, val_loader, last if resume else None)
    old_history = _read_spec(folder).history if resume else ()
    spec = PickerSpec(net_cfg, names, voxels, train=tc, history=(*old_history, *log.history))
    save_picker(folder, spec, module.net)
    calibrate_picker(folder, tomograms, device=device)
    if with_classifier:
        crop_net = replace(crop_net, n_classes=len(names))  # a resumed model's classes
        crop_train = ClassifierTrainConfig()
        if classifier_steps is not None:
            crop_train = replace(crop_train, steps=classifier_steps)
        elif classifier_minutes:  # a time budget alone is used in full
            crop_train = replace(crop_train, steps=UNCAPPED_STEPS)
        train_picker_classifier(
            tomograms,
            folder,
            crop_net,
            crop_train,
            classifier_minutes or None,
            progress,
            calibration=classifier_calibration,
        )
    return folder


def train_picker_classifier(
    folders: Sequence[str | Path] | Sequence[TomogramLabels],
    model_dir: str | Path,
    network: CropClassifierConfig | None = None,
    train: ClassifierTrainConfig | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    calibrate_on: int = 2,
    calibration: Sequence[str | Path] | Sequence[TomogramLabels] | None = None,
) -> Path:
    """Train the crop classifier of a picker model folder (:mod:`cryopose.tomo.classifier`).

    Parameters
    ----------
    folders
        Simulated tomogram folders, or tomograms already loaded with the model's classes.
    model_dir
        A folder written by :func:`train_picker`; ``classifier.json`` and ``classifier.pt``
        are added (replaced). Training resumes from ``checkpoints/classifier.ckpt`` left by
        an interrupted run with the same settings.
    network, train
        Architecture (default ``CropClassifierConfig(len(class_names))``) and settings.
    max_minutes
        Wall-clock budget; ``None`` for the step limit alone.
    progress
        Log one line per accuracy measurement.
    calibrate_on
        With a background output and no ``calibration``: the first this many of ``folders``
        calibrate the threshold of the vetoed picks (:func:`calibrate_cascade`).
    calibration
        With a background output: the labelled tomograms that calibrate that threshold
        instead. Best ones the U-Net did not train on: on its training tomograms its scores
        run high, so the threshold comes out high and drops weak (small-protein) picks
        (measured: 0.51 there, 0.45 on four tomograms it had not seen).

    Returns
    -------
    Path
        ``model_dir``.
    """
    folder = Path(model_dir)
    spec = _read_spec(folder)
    # Loaded one at a time as training takes their crops: hundreds fit in memory that way.
    tomograms = (
        f if isinstance(f, TomogramLabels) else load_tomogram_labels(f, spec.class_names)
        for f in folders
    )
    n = len(spec.class_names)
    net_cfg = network or CropClassifierConfig(n)
    cfg = train or ClassifierTrainConfig()

    def log(line: str) -> None:
        if progress:
            print(line, file=sys.stderr, flush=True)

    checkpoint = folder / "checkpoints" / CLASSIFIER_CHECKPOINT
    checkpoint.parent.mkdir(exist_ok=True)
    net, history = train_crop_classifier(
        tomograms, n, net_cfg, cfg, max_minutes, log, checkpoint=checkpoint
    )
    save_crop_classifier(folder, net, spec.class_names, history, cfg)
    checkpoint.unlink()
    if net_cfg.background:
        on = list(folders[:calibrate_on] if calibration is None else calibration)
        if not on:
            raise InputError(None, "expected at least one tomogram to calibrate the cascade on")
        log(f"calibrating the threshold of the vetoed picks on {len(on)} tomograms")
        calibrated = calibrate_cascade(folder, on)
        log(f"cascade threshold {calibrated.cascade_threshold:.4f} (picker's {spec.threshold:.4f})")
    return folder


def ensemble_picker_classifiers(
    model_dir: str | Path,
    others: Sequence[str | Path],
    calibration: Sequence[str | Path] | Sequence[TomogramLabels] = (),
    device: str | torch.device = "cpu",
) -> Path:
    """Replace a picker's crop classifier by the ensemble of it and those of ``others``.

    The members' class probabilities are averaged
    (:class:`cryopose.tomo.classifier.CropClassifierEnsemble`); they must name the same
    classes and see the same crop. With a background output the threshold of the vetoed
    picks is recalibrated for the ensemble (:func:`calibrate_cascade`) on ``calibration``.

    Parameters
    ----------
    model_dir
        Picker model folder with a crop classifier; it receives the ensemble.
    others
        Folders holding the other classifiers (``classifier.json``/``.pt``), for example
        other picker model folders trained with another seed or depth.
    calibration
        Labelled tomograms (SHREC folders or loaded), needed with a background output.
    device
        Where the networks run while calibrating.

    Returns
    -------
    Path
        ``model_dir``.

    Raises
    ------
    InputError
        No classifier in a folder, differing classes or crops, or a background output and no
        calibration tomograms.
    """
    folder = Path(model_dir)
    if not others:
        raise InputError(None, "expected at least one other classifier folder to combine with")
    first = load_crop_classifier(folder)
    if first is None:
        raise InputError(folder / CLASSIFIER_CONFIG, "missing; expected a crop classifier")
    if first[0].config.background and not calibration:
        raise InputError(
            None,
            "the classifiers have a background output: expected calibration tomograms to "
            "recalibrate the threshold of the vetoed picks",
        )
    combine_crop_classifiers(folder, [folder, *others])
    if first[0].config.background:
        calibrate_cascade(folder, list(calibration), device=device)
    return folder


def _picks_from_prob(prob: torch.Tensor, spec: PickerSpec, threshold: float) -> Picks:
    """Pick one tomogram's probabilities with ``spec``'s method, scores above ``threshold``."""
    if spec.method == "peaks":
        picks = peak_picks(prob, spec.class_names, spec.sigma, spec.peak_radius, threshold)
        if spec.saddle_ratio <= 0:
            return picks
        # Two maxima of one elongated particle: keep the better (SHREC counts the other as a
        # multiple hit, which lowers precision).
        fg = ndimage.gaussian_filter((1.0 - prob[0]).cpu().numpy().astype("float32"), spec.sigma)
        return merge_saddle_picks(picks, fg, spec.saddle_ratio, spec.saddle_distance)
    picks = cluster_segmentation(
        prob.argmax(dim=0), spec.class_names, 1.0 - prob[0], spec.min_voxels(),
        spec.min_distance(),
    )  # fmt: skip
    keep = picks.scores > threshold if picks.scores is not None else slice(None)
    scores = None if picks.scores is None else picks.scores[keep]
    return Picks(picks.class_ids[keep], picks.coords[keep], scores=scores)


def _scored_hits(
    prob: torch.Tensor, spec: PickerSpec, t: TomogramLabels
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every candidate pick of one tomogram and whether each is a true positive."""
    return _pick_hits(_picks_from_prob(prob, spec, threshold=-1.0), t)


def _pick_hits(picks: Picks, t: TomogramLabels) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of picks ``(x, y, z)`` of one tomogram and whether each is a true positive."""
    radii = (3.0 * t.voxels.to(torch.float64) / (4.0 * math.pi)) ** (1.0 / 3.0) + 1.0
    hit = match_centres(
        picks.coords[:, ::-1].astype("float64"),
        t.centres.to(torch.float64).numpy(),
        radii.numpy(),
    )
    scores = picks.scores if picks.scores is not None else torch.zeros(len(picks))
    return torch.as_tensor(scores, dtype=torch.float64), torch.from_numpy(hit)


#: Post-processing variants :func:`calibrate_picker` chooses from: (method, sigma).
#: Peak smoothings :func:`calibrate_cascade` tries by default.
CASCADE_SIGMAS: tuple[float, ...] = (1.0, 1.5, 2.0)

CANDIDATES: tuple[tuple[str, float], ...] = (
    ("peaks", 1.0),
    ("peaks", 2.0),
    ("peaks", 3.0),
    ("components", 1.0),
)


def best_threshold(
    scores: torch.Tensor,
    hits: torch.Tensor,
    n_true: int,
    default: float = 0.5,
    tolerance: float = 0.0,
    lowest: float = 0.0,
) -> dict[str, float]:
    """Score threshold that maximises F1 when the picks above it are kept.

    Parameters
    ----------
    scores
        ``(m,)`` pick scores.
    hits
        ``(m,)`` bool, True for a true positive (first hit of a particle).
    n_true
        Number of true particles (misses count as false negatives).
    default
        Threshold returned when there are no picks.
    tolerance
        Return the lowest threshold whose F1 is within this of the best (0: the best F1's
        highest threshold). Lower keeps more particles at about the same F1.
    lowest
        Score below which nothing was scored (candidates found down to a floor, say): when
        every pick is kept the threshold is halfway to it, not below picks never judged.

    Returns
    -------
    dict
        ``threshold`` (halfway between the last kept score and the next one, or ``lowest``
        below the last), ``f1``, ``tp``, ``fp``, ``fn`` of the kept picks.
    """
    order = torch.argsort(scores.to(torch.float64), descending=True, stable=True)
    score, hit = scores.to(torch.float64)[order], hits.to(torch.bool)[order]
    if len(score) == 0:
        return {"threshold": default, "f1": 0.0, "tp": 0.0, "fp": 0.0, "fn": float(n_true)}
    tp = torch.cumsum(hit.to(torch.float64), 0)
    fp = torch.arange(1, len(hit) + 1, dtype=torch.float64) - tp
    f1 = 2 * tp / (2 * tp + fp + (n_true - tp)).clamp(min=1)
    k = int(torch.argmax(f1))
    if tolerance > 0:
        k = int(torch.nonzero(f1 >= f1[k] - tolerance).max())
    below = float(score[k + 1]) if k + 1 < len(score) else lowest
    return {
        "threshold": 0.5 * (float(score[k]) + below),
        "f1": float(f1[k]),
        "tp": float(tp[k]),
        "fp": float(fp[k]),
        "fn": float(n_true - tp[k]),
    }


def calibrate_picker(
    model_dir: str | Path,
    tomograms: Sequence[TomogramLabels | str | Path],
    device: str | torch.device = "cpu",
) -> PickerSpec:
    """Choose the post-processing and score threshold that maximise F1 on labelled tomograms.

    Every variant of :data:`CANDIDATES` (peaks at three smoothings, connected components) is
    scored; the best one and its threshold are written into the model folder's config.

    Parameters
    ----------
    model_dir
        Model folder (:func:`train_picker`).
    tomograms
        Labelled tomograms (loaded or SHREC model folders), usually the training ones.
    device
        Where the network runs.

    Returns
    -------
    PickerSpec
        The updated description (``method``, ``sigma``, ``threshold`` and ``calibration``).

    Notes
    -----
    A pick hits a particle when it lies within the radius of a sphere of the particle's
    target volume plus one voxel of its centre (close to SHREC's dilated-occupancy rule);
    a second hit of the same particle is a false positive. The threshold is halfway between
    the score of the last accepted peak and the next one.
    """
    spec, net = load_picker(model_dir, device)
    variants = [replace(spec, method=m, sigma=sg) for m, sg in CANDIDATES]
    scores: list[list[torch.Tensor]] = [[] for _ in variants]
    hits: list[list[torch.Tensor]] = [[] for _ in variants]
    n_true = 0
    for item in tomograms:
        t = (
            item
            if isinstance(item, TomogramLabels)
            else load_tomogram_labels(item, spec.class_names, spec.train.erode)
        )
        prob = unet_probabilities(t.volume, spec, net, device=device)
        for i, variant in enumerate(variants):
            s, h = _scored_hits(prob, variant, t)
            scores[i].append(s)
            hits[i].append(h)
        n_true += len(t.centres)
    results = [
        best_threshold(torch.cat(s), torch.cat(h), n_true, spec.threshold)
        for s, h in zip(scores, hits, strict=True)
    ]
    best = max(range(len(results)), key=lambda i: results[i]["f1"])
    calibration = {
        **results[best],
        **{f"f1_{m}_sigma{sg:g}": r["f1"] for (m, sg), r in zip(CANDIDATES, results, strict=True)},
    }
    spec = replace(variants[best], threshold=calibration["threshold"], calibration=calibration)
    _write_config(Path(model_dir), spec)
    return spec


def _judged_candidates(
    score: np.ndarray, threshold: float, max_factor: float
) -> tuple[np.ndarray, float | None]:
    """Which candidates :func:`calibrate_cascade` classifies, and where that stops.

    The best-scoring ones: at most ``max_factor`` x as many as score above ``threshold``,
    plus 10.

    Parameters
    ----------
    score
        ``(N,)`` candidate scores.
    threshold
        The picker's own score threshold.
    max_factor
        Limit on the candidates judged, relative to those above ``threshold``.

    Returns
    -------
    order, cut
        ``(M,)`` indices of the judged candidates, best first (ties in input order), and the
        score of the best candidate left out (None when none is).
    """
    n_keep = min(len(score), round(max_factor * int((score > threshold).sum())) + 10)
    order = np.argsort(-score, kind="stable")
    cut = float(score[order[n_keep]]) if n_keep < len(order) else None
    return order[:n_keep], cut


def calibrate_cascade(
    model_dir: str | Path,
    tomograms: Sequence[TomogramLabels | str | Path],
    device: str | torch.device = "cpu",
    floor: float = 0.2,
    max_factor: float = 4.0,
    tolerance: float = 0.002,
    sigmas: Sequence[float] = CASCADE_SIGMAS,
) -> PickerSpec:
    """Choose the score threshold and peak smoothing of picks that the crop classifier vetoes.

    With a background output (:class:`cryopose.tomo.classifier.CropClassifierConfig`), the
    classifier drops picks it takes for noise, so the F1-best threshold of the U-Net's scores
    is lower than :func:`calibrate_picker`'s. The candidate picks of the (already chosen)
    post-processing down to ``floor`` x the picker's threshold (at most ``max_factor`` times
    as many as above it, the best-scoring first) are classified, the vetoed ones removed, and
    the threshold that maximises F1 over the rest is written as ``cascade_threshold``
    (``calibration`` gains ``cascade_threshold``, ``cascade_f1``, ``cascade_tp``,
    ``cascade_fp``, ``cascade_fn``). With ``"peaks"``, this is done for each smoothing in
    ``sigmas`` and the F1-best one is written as ``cascade_sigma`` (``calibration`` gains
    ``cascade_f1_sigma{s}`` for each). Measured on 12 test tomograms of the SNR 0.5
    benchmark at one threshold: sigma 1.5 instead of the U-Net's own 2 found 4 % more of
    the small proteins (F1 0.952 -> 0.960, small-protein F1 0.777 -> 0.785).

    Parameters
    ----------
    model_dir
        Model folder with a crop classifier that has a background output.
    tomograms
        Labelled tomograms (loaded or SHREC model folders), usually training ones.
    device
        Where the networks run.
    floor, max_factor
        Which candidates are classified (above). The threshold is chosen among the scores
        above which every tomogram's candidates were all classified, and never falls below
        them: candidates no one judged are not let in.
    sigmas
        Peak smoothings tried (``"peaks"`` only; the spec's own one is always tried).
    tolerance
        The lowest threshold whose F1 is within this of the best is chosen
        (:func:`best_threshold`). SHREC's per-class F1 counts only the particles found, not
        the picks that miss, so at about the same localisation F1 a lower threshold names
        more of them. With 0.002, calibrated on 4 tomograms the U-Net did not see, the
        threshold went from 0.452 to 0.263 and on 12 test tomograms small-protein F1 from
        0.768 to 0.776 while F1 went from 0.9652 to 0.9644.

    Returns
    -------
    PickerSpec
        The updated description.

    Raises
    ------
    InputError
        The folder has no crop classifier, or one without a background output.
    """
    folder = Path(model_dir)
    spec, net = load_picker(folder, device)
    classifier = load_crop_classifier(folder, device)
    if classifier is None or not classifier[0].config.background:
        raise InputError(
            folder / CLASSIFIER_CONFIG,
            "expected a crop classifier with a background output (train it with background)",
        )
    tried = sorted({spec.sigma, *sigmas}) if spec.method == "peaks" else [spec.sigma]
    scores: list[list[torch.Tensor]] = [[] for _ in tried]
    hits: list[list[torch.Tensor]] = [[] for _ in tried]
    # Per smoothing, the score above which every candidate of every tomogram was judged.
    judged_down_to = [floor * spec.threshold for _ in tried]
    n_true = 0
    for item in tomograms:
        t = (
            item
            if isinstance(item, TomogramLabels)
            else load_tomogram_labels(item, spec.class_names, spec.train.erode)
        )
        prob = unet_probabilities(t.volume, spec, net, device=device)
        for i, sigma in enumerate(tried):
            candidates = _picks_from_prob(
                prob,
                replace(spec, sigma=sigma, saddle_ratio=spec.cascade_saddle_ratio),
                threshold=floor * spec.threshold,
            )
            score = np.zeros(len(candidates)) if candidates.scores is None else candidates.scores
            order, cut = _judged_candidates(score, spec.threshold, max_factor)
            if cut is not None:  # none at or below this score was judged
                judged_down_to[i] = max(judged_down_to[i], cut)
            candidates = Picks(
                candidates.class_ids[order], candidates.coords[order], scores=score[order]
            )
            kept = name_picks(t.volume, candidates, prob, spec, classifier, device)
            s, h = _pick_hits(kept, t)
            scores[i].append(s)
            hits[i].append(h)
        n_true += len(t.centres)
    results = []
    for s_list, h_list, lowest in zip(scores, hits, judged_down_to, strict=True):
        s, h = torch.cat(s_list), torch.cat(h_list)
        judged = s > lowest  # in every tomogram, all candidates above were classified
        results.append(
            best_threshold(s[judged], h[judged], n_true, spec.threshold, tolerance, lowest)
        )
    best = max(range(len(tried)), key=lambda i: results[i]["f1"])
    calibration = {
        **spec.calibration,
        **{f"cascade_{k}": v for k, v in results[best].items()},
        **{f"cascade_f1_sigma{sg:g}": r["f1"] for sg, r in zip(tried, results, strict=True)},
    }
    spec = replace(
        spec,
        cascade_threshold=results[best]["threshold"],
        cascade_sigma=tried[best],
        calibration=calibration,
    )
    _write_config(folder, spec)
    return spec


def _fit(
    trainer_options: dict[str, Any],
    module: SegmentationModule,
    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, torch.Tensor]],
    val_loader: torch.utils.data.DataLoader[tuple[torch.Tensor, torch.Tensor]] | None,
    ckpt: Path | None,
) -> None:
    """``Trainer(**trainer_options).fit`` without Lightning's advice on workers, GPUs, loggers."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    quiet = ["lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"]
    levels = {name: logging.getLogger(name).level for name in quiet}
    with warnings.catch_warnings():
        # Patches are cut from tensors already in memory: worker processes would only copy them.
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        for name in quiet:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            trainer = L.Trainer(**trainer_options)
            trainer.fit(module, loader, val_loader, ckpt_path=ckpt)
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


# ----------------------------------------------------------------------------- picking


def pick_tomogram(
    volume: torch.Tensor,
    spec: PickerSpec,
    net: UNet3D,
    tile: int | None = None,
    overlap: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    classifier: tuple[AnyCropClassifier, Sequence[str]] | None = None,
) -> Picks:
    """Segment a tomogram with the U-Net and cluster the foreground into picks.

    Parameters
    ----------
    volume
        ``(Z, Y, X)`` tomogram, protein bright, the voxel size of the training data.
    spec, net
        From :func:`load_picker`.
    tile, overlap
        Tiling (default the spec's).
    device
        Where the network runs.
    progress
        Called with the number of tiles done after each batch.
    classifier
        A crop classifier and its class names (:func:`load_crop_classifier`): it names each
        pick instead of the U-Net; one with a background output also vetoes picks, and the
        picks are then cut at ``spec.cascade_threshold``, found at ``spec.cascade_sigma``
        (when calibrated) and saddle-merged with ``spec.cascade_saddle_ratio`` instead of
        ``spec.threshold``, ``spec.sigma`` and ``spec.saddle_ratio``.

    Returns
    -------
    Picks
        Centres ``(x, y, z)`` in voxels with class names and scores (smoothed foreground
        probability at the peak, or a component's mean foreground probability), most
        confident first; named, refined and cleared of converged duplicates by
        :func:`name_picks`.
    """
    normalised, prob = segment_tomogram(volume, spec, net, tile, overlap, device, progress)
    return pick_segmented(normalised, prob, spec, classifier, device)


def segment_tomogram(
    volume: torch.Tensor,
    spec: PickerSpec,
    net: UNet3D,
    tile: int | None = None,
    overlap: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise a tomogram and run the U-Net over it in overlapping tiles.

    Parameters are those of :func:`pick_tomogram`.

    Returns
    -------
    normalised
        ``(Z, Y, X)`` tomogram normalised as in training.
    prob
        ``(1 + n_classes, Z, Y, X)`` class probabilities, background first.
    """
    normalised = normalise(volume)
    return normalised, unet_probabilities(normalised, spec, net, tile, overlap, device, progress)


def unet_probabilities(
    normalised: torch.Tensor,
    spec: PickerSpec,
    net: UNet3D,
    tile: int | None = None,
    overlap: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the U-Net over a normalised tomogram as the spec says: class probabilities.

    Tiled (:func:`cryopose.tomo.segmentation.predict_tiled`) with ``spec.tile`` and
    ``spec.overlap`` unless given, and averaged over the wedge-keeping rotations
    (:func:`cryopose.tomo.segmentation.augment_rotations`) when ``spec.test_time_flips``
    (``progress`` still counts each tile once, after all its views).

    Returns
    -------
    torch.Tensor
        ``(1 + n_classes, Z, Y, X)`` float32 probabilities, background first.
    """
    return predict_tiled(
        net.to(device),
        normalised,
        spec.network.n_classes,
        tile=tile or spec.tile,
        overlap=spec.overlap if overlap is None else overlap,
        divisor=net.divisor,
        device=device,
        advance=progress,
        flips=augment_rotations() if spec.test_time_flips else ((),),
    )


def pick_segmented(
    normalised: torch.Tensor,
    prob: torch.Tensor,
    spec: PickerSpec,
    classifier: tuple[AnyCropClassifier, Sequence[str]] | None = None,
    device: str | torch.device = "cpu",
) -> Picks:
    """Pick a segmented tomogram (:func:`segment_tomogram`) as :func:`pick_tomogram` does.

    One segmentation can thus be picked both with and without the crop classifier.

    Parameters
    ----------
    normalised, prob
        From :func:`segment_tomogram`.
    spec, classifier, device
        As for :func:`pick_tomogram`.
    """
    threshold = spec.threshold
    if classifier is not None and classifier[0].config.background:
        threshold = spec.threshold if spec.cascade_threshold is None else spec.cascade_threshold
        spec = replace(spec, saddle_ratio=spec.cascade_saddle_ratio)
        if spec.cascade_sigma is not None:
            spec = replace(spec, sigma=spec.cascade_sigma)
    picks = _picks_from_prob(prob, spec, threshold)
    return name_picks(normalised, picks, prob, spec, classifier, device)


def name_picks(
    volume: torch.Tensor,
    picks: Picks,
    prob: torch.Tensor,
    spec: PickerSpec,
    classifier: tuple[AnyCropClassifier, Sequence[str]] | None = None,
    device: str | torch.device = "cpu",
) -> Picks:
    """Turn candidate picks into final ones: classify, refine the centres, drop duplicates.

    Parameters
    ----------
    volume
        ``(Z, Y, X)`` tomogram normalised as in training.
    picks
        Candidates ``(x, y, z)`` named by the U-Net (:func:`peak_picks` and co.).
    prob
        ``(1 + n_classes, Z, Y, X)`` the U-Net's class probabilities of the tomogram.
    spec
        Gives ``classify_refined``, ``refine_*`` and ``converge_factor``.
    classifier
        Crop classifier and its class names; it names (and may veto) each pick, from crops at
        the pick and, with ``spec.classify_refined``, at the pick mean-shifted by its U-Net
        class.

    Returns
    -------
    Picks
        Final picks: the classifier's classes, centres refined by their final class, picks
        that converged on a better one dropped.
    """
    if classifier is not None and len(picks) > 0:
        refining = spec.refine_radius > 0 and spec.refine_iterations > 0
        also_at = (
            refine_picks(picks, prob, spec).coords if spec.classify_refined and refining else None
        )
        picks = classify_picks(volume, picks, classifier[0], classifier[1], device, also_at=also_at)
    picks = refine_picks(picks, prob, spec)
    return drop_converged(picks, spec.class_radius(), spec.converge_factor)


def refine_picks(picks: Picks, prob: torch.Tensor, spec: PickerSpec) -> Picks:
    """Mean-shift the centres of final picks over the U-Net's foreground (``spec.refine_*``).

    Parameters
    ----------
    picks
        Centres ``(x, y, z)`` with their final classes.
    prob
        ``(1 + n_classes, Z, Y, X)`` class probabilities of the tomogram.
    spec
        Gives ``refine_radius`` (times each class's radius; 0: unchanged) and
        ``refine_iterations``.
    """
    if spec.refine_radius <= 0 or spec.refine_iterations == 0 or len(picks) == 0:
        return picks
    radii = {name: spec.refine_radius * r for name, r in spec.class_radius().items()}
    foreground = (1.0 - prob[0]).cpu().numpy()
    return refine_centres(picks, foreground, radii, spec.refine_iterations)


def pick_tomogram_file(
    tomogram: str | Path,
    model_dir: str | Path,
    output: str | Path,
    device: str = "cpu",
    tile: int | None = None,
    progress: bool = True,
) -> Picks:
    """Read a tomogram, pick it with a model folder and write SHREC-format picks.

    Parameters
    ----------
    tomogram
        ``.mrc`` tomogram.
    model_dir
        Model folder from :func:`train_picker`; its crop classifier, when it has one, names
        the picks.
    output
        SHREC text picks to write (``class x y z`` per line, most confident first).
    device
        Where the network runs.
    tile
        Tile edge (default the model's).
    progress
        Show progress over the tiles.

    Returns
    -------
    Picks
        What was written.
    """
    from cryopose._progress import progress as progress_bar

    spec, net = load_picker(model_dir, device)
    classifier = load_crop_classifier(model_dir, device)
    volume, _ = read_map(tomogram)
    total = n_tiles(volume.shape, tile or spec.tile, spec.overlap, net.divisor)
    with progress_bar("segmenting", total, progress, unit="tiles") as advance:
        picks = pick_tomogram(
            volume, spec, net, tile, device=device, progress=advance, classifier=classifier
        )
    write_picks(picks, output)
    return picks
