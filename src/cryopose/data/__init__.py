"""Particle data for PyTorch: ``ParticlesDataset``, preprocessing, augmentation, half sets.

The CESPED contract: any RELION star file becomes a torch Dataset whose items carry the image,
its RELION pose as a rotation matrix, its shift in Angstrom and a confidence, so cryo-EM data
can be used like MNIST. Also holds the small demo files shipped with cryopose (``demo_file``).

The batch function is ``cryopose.data.preprocess.preprocess`` (not re-exported here, so that the
submodule keeps its name).
"""

from cryopose.data.augment import (
    AugmentConfig,
    Augmented,
    Augmenter,
    erase_rectangle,
    in_plane_rotation,
    rot90_images,
    rotate_images,
    rotate_labels,
    shift_labels,
    zoom_images,
    zoom_labels,
)
from cryopose.data.dataset import ParticleBatch, ParticleItem, ParticlesDataset, collate
from cryopose.data.demo_files import demo_dir, demo_file
from cryopose.data.predictions import write_predictions
from cryopose.data.preprocess import (
    CTF_CORRECTIONS,
    PreprocessConfig,
    Preprocessed,
    channel_names,
    output_geometry,
)
from cryopose.data.splits import (
    half_set_indices,
    half_sets,
    random_half_sets,
    split_dataset,
    train_validation_split,
)

__all__ = [
    "CTF_CORRECTIONS",
    "AugmentConfig",
    "Augmented",
    "Augmenter",
    "ParticleBatch",
    "ParticleItem",
    "ParticlesDataset",
    "PreprocessConfig",
    "Preprocessed",
    "channel_names",
    "collate",
    "demo_dir",
    "demo_file",
    "erase_rectangle",
    "half_set_indices",
    "half_sets",
    "in_plane_rotation",
    "output_geometry",
    "random_half_sets",
    "rot90_images",
    "rotate_images",
    "rotate_labels",
    "shift_labels",
    "split_dataset",
    "train_validation_split",
    "write_predictions",
    "zoom_images",
    "zoom_labels",
]
