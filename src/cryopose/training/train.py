"""Train a supervised pose model on pre-aligned particles: :func:`train_pose_model`.

What it does, for a particle star file with poses:

1. optional **pre-training**: particles simulated from a map with cryopose's simulator (the
   data's pixel size, box, voltage, Cs, amplitude contrast and defocus range; SNR and count
   from :class:`TrainConfig`) train one network, the starting point of every half;
2. per model (halves 1 and 2 of ``rlnRandomSubset`` with ``half_sets=True``, the gold
   standard; one model on every particle otherwise): a seeded train/validation split inside
   the half, Lightning training (:class:`~cryopose.training.module.PoseModule`) with early
   stopping and learning-rate halving on the validation median angular error, and a
   ``max_time`` budget;
3. the best weights (by validation median error) go to the model folder
   (:mod:`cryopose.models.model_dir`: ``config.json`` + ``half1.pt``/``half2.pt`` or
   ``full.pt``, weights only), with ``validation_half{h}.pt`` (per-particle validation
   statistics for pruning) and ``train_log.csv``.

Resuming: each model's full Lightning state is written atomically to
``MODEL_DIR/checkpoints/<stage>/last.ckpt`` after every epoch; calling again with the same
arguments continues from it (``max_epochs`` and ``max_minutes`` count over all calls).

Multi-GPU and multi-node training go through Lightning (``devices``, ``num_nodes``,
``strategy="ddp"``); only global rank 0 writes files.

Example usage::

    from cryopose.data import PreprocessConfig
    from cryopose.models import Image2SphereConfig
    result = train_pose_model("particles.star", "model", Image2SphereConfig(),
                              PreprocessConfig(image_size=64), symmetry="D7",
                              config=TrainConfig(max_minutes=60))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import numpy.typing as npt
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, Sampler, Subset

from cryopose._atomic import atomic_path
from cryopose.data.augment import Augmenter
from cryopose.data.dataset import ParticlesDataset, collate
from cryopose.data.preprocess import PreprocessConfig, channel_names, output_geometry
from cryopose.data.splits import train_validation_split
from cryopose.errors import InputError
from cryopose.io.mrc import read_map
from cryopose.io.particles import ParticleTable, read_particles
from cryopose.models.image2sphere import Image2Sphere, Image2SphereConfig
from cryopose.models.model_dir import (
    PoseModelSpec,
    save_pose_model,
    save_weights,
    weights_name,
)
from cryopose.simulate.particles import estimate_radius_px
from cryopose.training.callbacks import AtomicLastCheckpoint, EpochReport
from cryopose.training.config import TrainConfig
from cryopose.training.module import PoseModule, validation_outputs
from cryopose.training.simulated import SimulatedParticles, estimate_snr, match_map_to_data

__all__ = [
    "EpochShuffleSampler",
    "StageResult",
    "TrainResult",
    "default_preprocess",
    "estimate_particle_diameter",
    "train_pose_model",
    "validation_name",
]


def validation_name(half: int) -> str:
    """File name of the validation statistics of ``half`` (``validation_half{h}.pt``)."""
    return f"validation_half{half}.pt"


@dataclass
class StageResult:
    """What one training run (pre-training or one half's model) did.

    Attributes
    ----------
    stage
        ``"pretrain"``, ``"half1"``, ``"half2"`` or ``"half0"`` (all particles).
    epochs
        Epochs validated, over every resumed call.
    best_median_deg, best_mean_deg
        Validation median (and mean) top-1 angular error of the best epoch, degrees,
        modulo the point group.
    images_per_second
        Training throughput (all processes, validation excluded).
    wall_seconds
        Wall time of this call's training.
    stopped_early
        Early stopping ended the run.
    train_rows, validation_rows
        Rows of the particle table trained and validated on.
    """

    stage: str
    epochs: int
    best_median_deg: float
    best_mean_deg: float
    images_per_second: float
    wall_seconds: float
    stopped_early: bool
    train_rows: npt.NDArray[np.int64]
    validation_rows: npt.NDArray[np.int64]

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no row lists)."""
        return {
            "epochs": self.epochs,
            "best_median_deg": self.best_median_deg,
            "best_mean_deg": self.best_mean_deg,
            "images_per_second": self.images_per_second,
            "wall_seconds": self.wall_seconds,
            "stopped_early": self.stopped_early,
            "n_train": len(self.train_rows),
            "n_validation": len(self.validation_rows),
        }


@dataclass
class TrainResult:
    """Outcome of :func:`train_pose_model`.

    Attributes
    ----------
    model_dir
        The model folder.
    halves
        Half (1, 2 or 0) -> its :class:`StageResult`.
    pretrain
        The pre-training run, if any.
    weight_bytes
        Half -> size in bytes of its weights file.
    parameter_bytes
        Bytes of the network's parameters (float32), for comparison.
    """

    model_dir: Path
    halves: dict[int, StageResult]
    pretrain: StageResult | None = None
    weight_bytes: dict[int, int] = field(default_factory=dict)
    parameter_bytes: int = 0


class EpochShuffleSampler(Sampler[int]):
    """Random order of ``range(n)`` drawn from ``(seed, epoch)``: resumed runs repeat it.

    Lightning calls :meth:`set_epoch` before every epoch.

    >>> s = EpochShuffleSampler(5, seed=1)
    >>> s.set_epoch(3)
    >>> a = list(s)
    >>> s.set_epoch(3)
    >>> a == list(s), sorted(a)
    (True, [0, 1, 2, 3, 4])
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


# ---------------------------------------------------------------------- preprocessing defaults


def estimate_particle_diameter(table: ParticleTable, max_images: int = 256, seed: int = 0) -> float:
    """Particle diameter in Angstrom from the images' per-pixel variance.

    Noise is the same everywhere in the box while the particles' signal (centred, in random
    orientations) adds variance near the centre. The radial profile of the variance over up to
    ``max_images`` random images is compared with the background level (median of the profile
    beyond 0.45 of the box): the diameter is twice the largest radius whose excess variance is
    above a quarter of the central excess, plus 10 % margin, clamped to ``[0.3, 1.0]`` of the
    box.

    Parameters
    ----------
    table
        The particles (stacks must be readable).
    max_images
        Images sampled.
    seed
        Seed of the sample.

    Returns
    -------
    float
        Diameter in Angstrom at the table's first pixel size.
    """
    dataset = ParticlesDataset(table)
    n = len(dataset)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n, size=min(n, max_images), replace=False))
    images = torch.stack([dataset.raw_image(int(i)).to(torch.float64) for i in picks])
    dataset.close()
    box = images.shape[-1]
    variance = images.var(dim=0) if len(picks) > 1 else images[0] ** 2
    y, x = torch.meshgrid(torch.arange(box), torch.arange(box), indexing="ij")
    r = torch.sqrt((x - box // 2) ** 2 + (y - box // 2) ** 2).round().long()
    n_bins = box // 2
    inside = r < n_bins
    profile = torch.zeros(n_bins, dtype=torch.float64).index_add_(
        0, r[inside], variance[inside]
    ) / torch.bincount(r[inside], minlength=n_bins).clamp_min(1)
    background = float(profile[int(0.45 * box) :].median()) if n_bins > 4 else 0.0
    excess = profile - background
    peak = float(excess[: max(1, n_bins // 4)].max())
    radius_px = 0.375 * box
    if peak > 0:
        above = torch.nonzero(excess > 0.25 * peak).flatten()
        radius_px = float(above.max()) + 1.0
    diameter_px = min(max(2.2 * radius_px, 0.3 * box), 1.0 * box)
    return diameter_px * float(table.angpix()[0])


def default_preprocess(
    table: ParticleTable,
    image_size: int = 64,
    angpix: float | None = None,
    particle_diameter_angst: float | None = None,
    ctf_correction: str | None = None,
) -> PreprocessConfig:
    """Preprocessing for training: rescale and crop to ``image_size``, normalise, mask.

    Parameters
    ----------
    table
        The particles.
    image_size
        Final box in pixels.
    angpix
        Target pixel size in Angstrom; ``None``: the pixel size at which the whole box
        fits ``image_size`` pixels (``box * angpix / image_size``), never finer than the data.
    particle_diameter_angst
        Mask and background diameter; ``None``: :func:`estimate_particle_diameter`.
    ctf_correction
        ``None``: ``"concat_phase_flip"`` when the table has CTF columns, else ``"none"``.

    Returns
    -------
    PreprocessConfig
        Normalised, masked, optional phase-flipped channel.
    """
    data_angpix = float(table.angpix()[0])
    box = int(table.image_size()[0])
    target = angpix if angpix is not None else max(data_angpix, box * data_angpix / image_size)
    diameter = (
        particle_diameter_angst
        if particle_diameter_angst is not None
        else estimate_particle_diameter(table)
    )
    if ctf_correction is None:
        ctf_correction = "concat_phase_flip" if table.has_ctf else "none"
    return PreprocessConfig(
        angpix=target,
        image_size=image_size,
        normalise=True,
        particle_radius_angst=diameter / 2.0,
        ctf_correction=ctf_correction,
        mask=True,
    )


# ---------------------------------------------------------------------- Lightning plumbing


def _accelerator(device: str) -> str:
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if device == "cuda" else "cpu"


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up chatter and warnings that are not about our data.

    Targeted by message: anything else still surfaces (and fails the tests).
    """
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # We choose the worker count explicitly (0 is right for memory-mapped stacks).
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            # Tiny validation splits and batch counts are legitimate here.
            warnings.filterwarnings("ignore", message=r".*number of training batches.*")
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
            # Resuming a finished run is how a rerun with the same max_epochs is a no-op.
            warnings.filterwarnings("ignore", message=r".*max_epochs=.*reached.*")
            warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
            # Lightning 2.6 with torch >= 2.9: its own use of a deprecated pytree class.
            warnings.filterwarnings(
                "ignore", message=r".*LeafSpec.*is deprecated.*", category=FutureWarning
            )
            # The logged value is already gathered across processes (all_gather).
            warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _loader(dataset: Any, config: TrainConfig, shuffle: bool, distributed: bool) -> DataLoader[Any]:
    if isinstance(dataset, SimulatedParticles):
        # Every item is a whole fresh batch; under DDP Lightning hands each rank its items.
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=config.num_workers)
    sampler: Sampler[int] | None = None
    if shuffle and not distributed:
        sampler = EpochShuffleSampler(len(dataset), config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        # Under DDP Lightning swaps this for a DistributedSampler (seeded, set_epoch'd).
        shuffle=shuffle and distributed,
        num_workers=config.num_workers,
        collate_fn=collate,
        persistent_workers=False,
    )


@dataclass
class _Split:
    train: Any
    validation: Any
    train_rows: npt.NDArray[np.int64]
    validation_rows: npt.NDArray[np.int64]


def _split(
    table: ParticleTable,
    preprocess: PreprocessConfig,
    config: TrainConfig,
    half: int,
    symmetry: str,
    split_seed: int,
) -> _Split:
    """Training (augmented) and validation subsets of one half set (0: every particle)."""
    half_set = None if half == 0 else half
    augmenter = Augmenter(config.augmentation) if config.augment else None
    train_data = ParticlesDataset(
        table, preprocess=preprocess, augment=augmenter, half_set=half_set,
        symmetry=symmetry, seed=config.seed,
    )  # fmt: skip
    val_data = ParticlesDataset(
        table, preprocess=preprocess, half_set=half_set, symmetry=symmetry, seed=config.seed
    )
    train_pos, val_pos = train_validation_split(
        len(train_data), config.validation_fraction, split_seed
    )
    if config.validate_on_train:
        train_pos = np.arange(len(train_data), dtype=np.int64)
        val_pos = train_pos
    if len(train_pos) == 0 or len(val_pos) == 0:
        raise InputError(
            table.path,
            f"{len(train_data)} particles in half {half} are too few to train and validate",
        )
    return _Split(
        train=Subset(train_data, train_pos.tolist()),
        validation=Subset(val_data, val_pos.tolist()),
        train_rows=train_data.indices[train_pos],
        validation_rows=val_data.indices[val_pos],
    )


def _fit_stage(
    stage: str,
    split: _Split,
    network: Image2SphereConfig,
    symmetry: str,
    config: TrainConfig,
    max_epochs: int,
    checkpoint_dir: Path,
    log_path: Path,
    previous_rows: Sequence[dict[str, float | str]],
    initial_state: dict[str, torch.Tensor] | None,
    progress: bool,
    init_seed: int,
    max_minutes: float | None,
) -> tuple[PoseModule, StageResult, L.Trainer]:
    """Train one network with Lightning, resuming from ``checkpoint_dir/last.ckpt``."""
    distributed = config.devices * config.num_nodes > 1
    module = PoseModule(
        network, dataclasses.replace(config, seed=init_seed), symmetry, initial_state
    )
    last = checkpoint_dir / "last.ckpt"
    early = (
        [
            EarlyStopping(
                monitor="val_median_deg",
                mode="min",
                patience=config.early_stopping_patience,
                check_on_train_epoch_end=False,
            )
        ]
        if config.early_stopping_patience is not None
        else []
    )
    tty = sys.stderr.isatty()
    callbacks: list[L.Callback] = [
        EpochReport(stage, log_path, previous_rows, print_lines=progress and not tty),
        AtomicLastCheckpoint(last),
        *early,
    ]
    start = time.perf_counter()
    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator=_accelerator(config.device),
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            max_epochs=max_epochs,
            max_time=None if max_minutes is None else timedelta(minutes=max_minutes),
            gradient_clip_val=config.gradient_clip,
            gradient_clip_algorithm="norm",
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress and tty,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_train_batches=(
                1.0
                if config.epoch_size is None or isinstance(split.train, SimulatedParticles)
                else max(1, math.ceil(config.epoch_size / config.batch_size))
            ),
            default_root_dir=str(checkpoint_dir),
        )
        trainer.fit(
            module,
            train_dataloaders=_loader(split.train, config, True, distributed),
            val_dataloaders=_loader(split.validation, config, False, distributed),
            ckpt_path=str(last) if last.is_file() else None,
        )
    wall = time.perf_counter() - start
    history = module.history
    seconds = sum(h["epoch_seconds"] for h in history)
    images = sum(h["images_per_second"] * h["epoch_seconds"] for h in history)
    result = StageResult(
        stage=stage,
        epochs=len(history),
        best_median_deg=module.best_median_deg,
        best_mean_deg=module.best_mean_deg,
        images_per_second=images / seconds if seconds > 0 else math.nan,
        wall_seconds=wall,
        stopped_early=bool(early and early[0].stopped_epoch > 0),
        train_rows=split.train_rows,
        validation_rows=split.validation_rows,
    )
    return module, result, trainer


def _current_learning_rate(trainer: L.Trainer, default: float) -> float:
    """Return the learning rate a finished stage's optimiser would use next.

    That is the rate after the stage's plateau halvings; ``default`` when it ran no optimiser.
    """
    optimisers = trainer.optimizers
    return float(optimisers[0].param_groups[0]["lr"]) if optimisers else default


def _best_network(module: PoseModule) -> Image2Sphere:
    """Return the module's network with its best weights (the last ones if none were validated)."""
    net = module.net.cpu()
    if module.best_state is not None:
        net.load_state_dict(module.best_state)
    return net.eval()


# ---------------------------------------------------------------------- pre-training data


def _pretraining_split(
    table: ParticleTable,
    volume_path: Path,
    preprocess: PreprocessConfig,
    symmetry: str,
    config: TrainConfig,
) -> tuple[_Split, float]:
    """Fresh simulated training batches and a validation split of the real particles.

    Returns the split and the final SNR of the simulation (given or estimated).
    """
    volume, map_angpix = read_map(volume_path)
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise InputError(volume_path, f"expected a cubic map, got shape {tuple(volume.shape)}")
    angpix = float(table.angpix()[0])
    box = int(table.image_size()[0])
    vol = match_map_to_data(volume, map_angpix, angpix, box)
    radius = estimate_radius_px(vol)
    snr = config.pretrain_snr
    if snr is None:
        snr = estimate_snr(table, vol, radius, seed=config.seed)
    batches = max(1, math.ceil(config.pretrain_particles / config.batch_size))
    simulated = SimulatedParticles(
        vol,
        table,
        preprocess,
        radius,
        config.batch_size,
        batches,
        config.pretrain_epochs,
        snr,
        snr * config.pretrain_snr_start_factor,
        config.pretrain_ramp,
        config.seed,
        config.pretrain_minutes,
    )
    # Validated on real particles (a held-out fraction of all of them): the pre-training
    # keeps the weights that transfer best to the data.
    real = _split(table, preprocess, config, 0, symmetry, config.seed)
    split = _Split(
        train=simulated,
        validation=real.validation,
        train_rows=np.zeros(0, dtype=np.int64),
        validation_rows=real.validation_rows,
    )
    return split, snr


# ---------------------------------------------------------------------- entry point


def _check_geometry(
    table: ParticleTable, network: Image2SphereConfig, preprocess: PreprocessConfig
) -> None:
    box = int(table.image_size()[0])
    _, size, _ = output_geometry(box, float(table.angpix()[0]), preprocess)
    channels = len(channel_names(preprocess))
    if size != network.image_size or channels != network.in_channels:
        raise InputError(
            table.path,
            f"preprocessing gives {channels}-channel {size} px images but the network expects "
            f"{network.in_channels}-channel {network.image_size} px images",
        )
    if not table.has_poses:
        raise InputError(
            table.path,
            "expected particles with poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)",
            f"block data_{table.particles_block}",
        )


def train_pose_model(
    star: str | Path | ParticleTable,
    model_dir: str | Path,
    network: Image2SphereConfig,
    preprocess: PreprocessConfig,
    symmetry: str = "C1",
    config: TrainConfig | None = None,
    pretrain_map: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train pose networks on pre-aligned particles and write a pose model folder.

    Parameters
    ----------
    star
        Particle star file with poses (or a table already read).
    model_dir
        Output folder (:mod:`cryopose.models.model_dir` layout, plus ``checkpoints/``,
        ``validation_half{h}.pt``, ``train_log.csv``); a rerun resumes from it.
    network
        Architecture; its ``in_channels`` and ``image_size`` must match ``preprocess``.
    preprocess
        Preprocessing of every image (saved with the model for inference).
    symmetry
        Point group of the particle: symmetric labels and errors modulo the group.
    config
        Training settings; ``None``: :class:`TrainConfig` defaults.
    pretrain_map
        Map (.mrc) to pre-train on simulated particles first; ``None``: no pre-training.
    progress
        Lightning's progress bar in a terminal, else one log line per epoch.

    Returns
    -------
    TrainResult
        Per half: epochs, best validation errors (degrees), images/s, wall time, rows used.

    Raises
    ------
    InputError
        Particles without poses, a network that does not fit the preprocessed images, too
        few particles, a non-cubic pre-training map.
    """
    cfg = TrainConfig() if config is None else config
    with _threads(cfg.threads):
        return _train_pose_model(
            star, model_dir, network, preprocess, symmetry, cfg, pretrain_map, progress
        )


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (``None``: leave the setting alone)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_pose_model(
    star: str | Path | ParticleTable,
    model_dir: str | Path,
    network: Image2SphereConfig,
    preprocess: PreprocessConfig,
    symmetry: str,
    cfg: TrainConfig,
    pretrain_map: str | Path | None,
    progress: bool,
) -> TrainResult:
    table = star if isinstance(star, ParticleTable) else read_particles(star)
    _check_geometry(table, network, preprocess)
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "train_log.csv"
    rows: list[dict[str, float | str]] = []
    results: dict[int, StageResult] = {}
    initial: dict[str, torch.Tensor] | None = None
    pretrain: StageResult | None = None
    is_zero = True

    pretrain_snr: float | None = None
    finetune_lr = cfg.learning_rate
    if pretrain_map is not None and cfg.pretrain_epochs > 0:
        split, pretrain_snr = _pretraining_split(
            table, Path(pretrain_map), preprocess, symmetry, cfg
        )
        if progress:
            print(
                f"pre-training on particles simulated from {pretrain_map} "
                f"(final SNR {pretrain_snr:.3g}, {cfg.pretrain_particles} per epoch)",
                file=sys.stderr,
            )
        module, pretrain, trainer = _fit_stage(
            "pretrain", split, network, symmetry, cfg, cfg.pretrain_epochs,
            folder / "checkpoints" / "pretrain", log_path, rows, None, progress, cfg.seed,
            cfg.pretrain_minutes,
        )  # fmt: skip
        rows += [{"stage": "pretrain", **h} for h in module.history]
        initial = {k: v.clone() for k, v in _best_network(module).state_dict().items()}
        is_zero = trainer.is_global_zero
        # Fine-tuning goes on from where the plateau schedule of pre-training got to: the
        # initial rate would first undo part of what pre-training learned (measured: the
        # validation median rose from 7.4 to 8.4 deg in the first fine-tuning epochs at 3e-3).
        finetune_lr = _current_learning_rate(trainer, cfg.learning_rate)
        if cfg.lr_schedule == "cosine":  # pre-training ended at min_lr: restart lower
            finetune_lr = cfg.finetune_lr_factor * cfg.learning_rate

    half_cfg = dataclasses.replace(cfg, learning_rate=finetune_lr)
    nets: dict[int, Image2Sphere] = {}
    for half in cfg.halves:
        stage = f"half{half}"
        split = _split(table, preprocess, cfg, half, symmetry, cfg.seed + half)
        module, results[half], trainer = _fit_stage(
            stage, split, network, symmetry, half_cfg, cfg.max_epochs,
            folder / "checkpoints" / stage, log_path, rows, initial, progress,
            cfg.seed + 1000 * half, cfg.max_minutes,
        )  # fmt: skip
        rows += [{"stage": stage, **h} for h in module.history]
        is_zero = trainer.is_global_zero
        nets[half] = _best_network(module)
        if is_zero:
            save_weights(folder, half, nets[half])
            loader = DataLoader(split.validation, batch_size=cfg.batch_size, collate_fn=collate)
            stats = validation_outputs(nets[half], loader, symmetry)
            with atomic_path(folder / validation_name(half)) as tmp:
                torch.save(dict(stats), tmp)

    if is_zero:
        extra = {
            "train": cfg.to_dict(),
            "pretrain_map": None if pretrain_map is None else str(pretrain_map),
            "pretrain_snr": pretrain_snr,
            "finetune_learning_rate": finetune_lr,
            "results": {str(h): r.summary() for h, r in results.items()},
            "pretrain": None if pretrain is None else pretrain.summary(),
        }
        spec = PoseModelSpec(network, preprocess, symmetry, cfg.halves, extra)
        save_pose_model(folder, spec, nets)
        if not cfg.keep_checkpoints:
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    weight_bytes = {
        h: (folder / weights_name(h)).stat().st_size
        for h in cfg.halves
        if (folder / weights_name(h)).is_file()
    }
    parameter_bytes = sum(p.numel() * p.element_size() for p in Image2Sphere(network).parameters())
    return TrainResult(folder, results, pretrain, weight_bytes, parameter_bytes)
