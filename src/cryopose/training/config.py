"""Settings of supervised pose training (:class:`TrainConfig`), saved with every model.

>>> config = TrainConfig(batch_size=16, max_epochs=3)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryopose.data.augment import AugmentConfig
from cryopose.errors import InputError

__all__ = ["DEVICES", "LR_SCHEDULES", "TrainConfig"]

DEVICES = ("cpu", "cuda", "auto")
LR_SCHEDULES = ("plateau", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`cryopose.training.train_pose_model` trains (defaults: a CPU run at 64 px).

    Attributes
    ----------
    batch_size
        Particles per optimiser step (per process under DDP).
    learning_rate
        Initial RAdam learning rate. 3e-3, not the usual 1e-3: RAdam's rectification damps the
        first ~2,000 steps, and a CPU budget is a few thousand steps. Measured on the demo's
        32 px data (map pre-training, 4 epochs of 4,096 images): validation median 26 deg at
        3e-3, 105 deg at 1e-3. After pre-training, fine-tuning starts at the rate pre-training
        ended with (its plateau halvings kept; saved as ``finetune_learning_rate``).
    weight_decay
        RAdam weight decay.
    max_epochs
        Epochs per model, counted over resumed runs.
    epoch_size
        Training particles per epoch (a fresh random subset each epoch, through Lightning's
        ``limit_train_batches``); ``None``: every training particle. Shorter epochs validate,
        schedule and checkpoint more often on large data sets.
    max_minutes
        Wall-clock budget per model in minutes (Lightning ``max_time``, counted over resumed
        runs); ``None`` for none.
    label_smoothing
        Mass spread uniformly over the grid in the symmetric labels, in ``[0, 1)``.
    gradient_clip
        Largest gradient norm (clipping by norm); ``None`` for none.
    lr_patience
        Epochs without a better validation median error before the learning rate halves
        (ReduceLROnPlateau, factor :attr:`lr_factor`).
    lr_factor
        Factor of the learning rate on a plateau.
    min_lr
        The learning rate never goes below this.
    lr_schedule
        ``"plateau"``: the rate falls by :attr:`lr_factor` after :attr:`lr_patience` epochs
        without a better validation median. ``"cosine"``: it falls from the initial rate to
        :attr:`min_lr` along half a cosine over the stage's budget. Progress is the larger of
        steps done over ``max_epochs`` x steps per epoch and time used over the stage's
        ``max_minutes``, so a time budget ends at the low rate: no halvings triggered by chance
        on a noisy validation set. Measured with ``bench_pose.py --max-minutes 60`` (one core
        shared with other work): pre-training reached a better validation mean (18.7 vs 21.5
        deg) but the test median was 7.7 deg against the plateau schedule's 7.5, within the
        run-to-run spread, so ``"plateau"`` stays the default.
    finetune_lr_factor
        With ``"cosine"``, fine-tuning after pre-training starts at this fraction of
        :attr:`learning_rate` (the plateau schedule instead goes on from pre-training's last rate).
    early_stopping_patience
        Epochs without a better validation median error before training stops; ``None``
        for never.
    validation_fraction
        Fraction of each half set held out for validation, in ``(0, 1)``.
    validate_on_train
        Validate on the training particles themselves (all of them, not augmented) instead
        of a held-out split: for overfitting checks and tiny noise-free sets.
    seed
        Seed of the splits, the shuffling, the augmentation and the initial weights.
    num_workers
        ``DataLoader`` worker processes per training process.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
    threads
        CPU threads of each training process (``torch.set_num_threads``); ``None``: torch's
        default (one per core). On a machine shared with other jobs, fewer threads than cores
        avoid the spinning of oversubscribed OpenMP threads: measured here with two other
        jobs on 2 cores, one thread trained at 110 images/s where the default managed 11.
    devices
        Devices (processes) per node.
    num_nodes
        Nodes.
    strategy
        Lightning strategy: ``"auto"``, ``"ddp"``, ``"ddp_spawn"``...
    half_sets
        True: two models, each trained on one gold-standard half (``rlnRandomSubset``),
        halves ``(1, 2)``; False: one model on every particle, halves ``(0,)``.
    augment
        Pose-aware augmentation of the training images.
    augmentation
        What the augmentation does when on.
    pretrain_particles
        Particles simulated afresh from the pre-training map in every pre-training epoch
        (:mod:`cryopose.training.simulated`: never the same image twice).
    pretrain_epochs
        Epochs of pre-training.
    pretrain_minutes
        Wall-clock budget of pre-training, minutes (``None``: ``pretrain_epochs`` decide).
    pretrain_snr
        Final SNR of the simulated particles; ``None``: estimated from the real particles
        and the map (:func:`cryopose.training.simulated.estimate_snr`).
    pretrain_snr_start_factor
        The SNR starts this many times higher and falls geometrically to ``pretrain_snr``
        (a curriculum; 1 turns it off).
    pretrain_ramp
        Fraction of pre-training over which the SNR falls.
    keep_checkpoints
        Keep ``MODEL_DIR/checkpoints`` (full training state) at the end; without them a
        rerun trains again from the start.
    """

    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    max_epochs: int = 50
    epoch_size: int | None = None
    max_minutes: float | None = None
    label_smoothing: float = 0.05
    gradient_clip: float | None = 5.0
    lr_patience: int = 5
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    lr_schedule: str = "plateau"
    finetune_lr_factor: float = 0.1
    early_stopping_patience: int | None = 15
    validation_fraction: float = 0.1
    validate_on_train: bool = False
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    threads: int | None = None
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    half_sets: bool = True
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain_particles: int = 4096
    pretrain_epochs: int = 10
    pretrain_minutes: float | None = None
    pretrain_snr: float | None = None
    pretrain_snr_start_factor: float = 10.0
    pretrain_ramp: float = 0.5
    keep_checkpoints: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> InputError:
            return InputError(None, f"{expected}, got {getattr(self, name)!r}", f"train {name}")

        for name in ("batch_size", "max_epochs", "devices", "num_nodes", "pretrain_particles"):
            if getattr(self, name) < 1:
                raise bad(name, "expected an integer >= 1")
        if self.pretrain_epochs < 0 or self.num_workers < 0 or self.lr_patience < 0:
            raise InputError(None, "pretrain_epochs, num_workers and lr_patience must be >= 0")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "expected a positive learning rate")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "expected a value in [0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"expected one of {list(LR_SCHEDULES)}")
        if not 0.0 < self.finetune_lr_factor <= 1.0:
            raise bad("finetune_lr_factor", "expected a factor in (0, 1]")
        if not 0.0 < self.lr_factor < 1.0:
            raise bad("lr_factor", "expected a factor in (0, 1)")
        if not 0.0 < self.validation_fraction < 1.0:
            raise bad("validation_fraction", "expected a fraction in (0, 1)")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise bad("epoch_size", "expected None or a number of particles >= 1")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise bad("max_minutes", "expected a positive number of minutes")
        if self.pretrain_minutes is not None and not self.pretrain_minutes > 0:
            raise bad("pretrain_minutes", "expected a positive number of minutes")
        if self.pretrain_snr is not None and not self.pretrain_snr > 0:
            raise bad("pretrain_snr", "expected None or a positive SNR")
        if not self.pretrain_snr_start_factor >= 1.0:
            raise bad("pretrain_snr_start_factor", "expected a factor >= 1")
        if not 0.0 < self.pretrain_ramp <= 1.0:
            raise bad("pretrain_ramp", "expected a fraction in (0, 1]")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise bad("early_stopping_patience", "expected None or a number of epochs >= 1")
        if self.gradient_clip is not None and not self.gradient_clip > 0:
            raise bad("gradient_clip", "expected a positive gradient norm")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", "expected None or a number of threads >= 1")
        if self.device not in DEVICES:
            raise bad("device", f"expected one of {list(DEVICES)}")

    @property
    def halves(self) -> tuple[int, ...]:
        """``(1, 2)`` with half sets, else ``(0,)``."""
        return (1, 2) if self.half_sets else (0,)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the augmentation as a nested dict)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["augmentation"] = self.augmentation.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(None, f"unknown training settings {unknown}")
        kw = dict(values)
        if "augmentation" in kw and not isinstance(kw["augmentation"], AugmentConfig):
            aug: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in kw["augmentation"].items()
            }
            kw["augmentation"] = AugmentConfig(**aug)
        return cls(**kw)
