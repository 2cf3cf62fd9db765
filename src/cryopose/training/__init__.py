"""Supervised pose training: Lightning module, confidence-weighted loss, resumable runs.

:func:`train_pose_model` turns a star file of pre-aligned particles into a pose model folder
(:mod:`cryopose.models.model_dir`): gold-standard half-set models, optional pre-training on
particles simulated from a map, early stopping and learning-rate halving on the validation
median angular error, resumable Lightning checkpoints, DDP through Lightning.

>>> from cryopose.training import TrainConfig
>>> config = TrainConfig(max_epochs=20, half_sets=False)
>>> config.halves, TrainConfig.from_dict(config.to_dict()) == config
((0,), True)
"""

from cryopose.training.callbacks import AtomicLastCheckpoint, EpochReport, write_train_log
from cryopose.training.config import TrainConfig
from cryopose.training.losses import per_particle_cross_entropy, weighted_pose_loss
from cryopose.training.module import PoseModule, ValidationOutputs, validation_outputs
from cryopose.training.train import (
    EpochShuffleSampler,
    StageResult,
    TrainResult,
    default_preprocess,
    estimate_particle_diameter,
    train_pose_model,
    validation_name,
)

__all__ = [
    "AtomicLastCheckpoint",
    "EpochReport",
    "EpochShuffleSampler",
    "PoseModule",
    "StageResult",
    "TrainConfig",
    "TrainResult",
    "ValidationOutputs",
    "default_preprocess",
    "estimate_particle_diameter",
    "per_particle_cross_entropy",
    "train_pose_model",
    "validation_name",
    "validation_outputs",
    "weighted_pose_loss",
    "write_train_log",
]
