"""Particle data for PyTorch: ``ParticlesDataset``, preprocessing, augmentation, half sets.

Also holds the small demo files shipped with cryopose (``demo_file``).
"""

from cryopose.data.demo_files import demo_dir, demo_file

__all__ = ["demo_dir", "demo_file"]
