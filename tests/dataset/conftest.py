"""Small simulated particle sets shared by the tests of ``cryopose.data``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cryopose.simulate.junk import random_blob_volume
from cryopose.simulate.particles import SimulationConfig, simulate_particles

BOX = 32
ANGPIX = 3.0


@pytest.fixture(scope="session")
def blob_volume() -> torch.Tensor:
    """A 32^3 assembly of Gaussian blobs: no symmetry, compact, positive."""
    return random_blob_volume(BOX, 9.0, torch.Generator().manual_seed(11), n_blobs=10)


@pytest.fixture(scope="session")
def clean_star(blob_volume: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 noise-free particles with CTF and shifts, two stacks, RELION 3.1 star."""
    folder = tmp_path_factory.mktemp("clean")
    config = SimulationConfig(
        n=48, snr=None, chunk_size=30, seed=3, particles_per_micrograph=8, shift_sigma_angst=4.0
    )
    return simulate_particles(blob_volume, ANGPIX, folder, config, progress=False)


@pytest.fixture(scope="session")
def noisy_star(blob_volume: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 noisy particles (SNR 0.5) with CTF."""
    folder = tmp_path_factory.mktemp("noisy")
    config = SimulationConfig(n=64, snr=0.5, chunk_size=64, seed=5)
    return simulate_particles(blob_volume, ANGPIX, folder, config, progress=False)
