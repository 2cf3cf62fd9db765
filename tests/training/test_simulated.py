"""On-the-fly pre-training particles: noise level, curriculum, CTF/shift copying, SNR estimate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cryopose.data import PreprocessConfig
from cryopose.errors import InputError
from cryopose.imaging.masks import circular_mask
from cryopose.imaging.projection import Projector
from cryopose.io.mrc import read_map
from cryopose.io.particles import read_particles
from cryopose.simulate.particles import SimulationConfig, simulate_from_structure
from cryopose.training.simulated import (
    SimulatedParticles,
    estimate_snr,
    match_map_to_data,
    snr_schedule,
)

RAW = PreprocessConfig(normalise=False)  # images exactly as simulated (16 px, no filters)


def _volume(star: Path) -> torch.Tensor:
    table = read_particles(star)
    volume, angpix = read_map(star.parent / "ground_truth.mrc")
    return match_map_to_data(volume, angpix, float(table.angpix()[0]), 16)


def test_schedule_is_geometric_then_flat() -> None:
    assert snr_schedule(0.0, 0.1, 1.0, 0.5) == pytest.approx(1.0)
    assert snr_schedule(0.25, 0.1, 1.0, 0.5) == pytest.approx(math.sqrt(0.1))
    assert snr_schedule(0.9, 0.1, 1.0, 0.5) == pytest.approx(0.1)
    assert snr_schedule(0.3, 0.1, None, 0.5) == 0.1  # no curriculum


def test_noise_matches_the_snr_and_the_labels_match_the_images(clean_star: Path) -> None:
    # Without CTF: every image is the projection at its label pose and shift plus white noise
    # of variance signal_variance / SNR, the signal variance being over the particle's disc.
    table = read_particles(clean_star)
    vol = _volume(clean_star)
    radius = 6.0
    data = SimulatedParticles(vol, table, RAW, radius, 64, 4, 1, snr=0.5, seed=2)
    disc = circular_mask(16, radius).bool()
    residual, signal = [], []
    for item in range(len(data)):
        batch = data[item]
        assert batch.image.shape == (64, 1, 16, 16)
        clean = Projector(vol).project(batch.rotation, batch.shift_angst, 6.0)
        residual.append((batch.image[:, 0] - clean)[:, disc])
        signal.append(clean[:, disc].var(dim=1))
    noise_var = float(torch.cat(residual).var())
    measured = float(torch.cat(signal).mean()) / noise_var
    assert measured == pytest.approx(0.5, rel=0.15)
    assert noise_var == pytest.approx(data.signal_variance / 0.5, rel=0.05)


def test_curriculum_lowers_the_snr_over_epochs(clean_star: Path) -> None:
    table = read_particles(clean_star)
    data = SimulatedParticles(
        _volume(clean_star), table, RAW, 6.0, 8, 10, 4, snr=0.1, snr_start=1.0, ramp=0.5
    )
    assert data.snr_at(0) == pytest.approx(1.0)
    data.set_epoch(1)
    assert data.snr_at(0) == pytest.approx(10**-0.5)  # a quarter of the way: sqrt(0.1)
    data.set_epoch(3)
    assert data.snr_at(9) == pytest.approx(0.1)
    # Same epoch and item: the same particles (a resumed run continues identically).
    assert torch.equal(data[5].image, data[5].image)
    data.set_epoch(2)
    assert not torch.equal(data[5].rotation, data[0].rotation)


def test_ctf_and_shifts_come_from_the_table(ctf_star: Path, tmp_path: Path) -> None:
    table = read_particles(ctf_star)
    data = SimulatedParticles(_volume(ctf_star), table, RAW, 6.0, 32, 2, 1, snr=1.0)
    batch = data[0]
    shifts = table.shifts_angst(torch.float32)
    # Every simulated shift is one of the table's rows.
    assert bool(((batch.shift_angst[:, None] - shifts[None]).abs().sum(-1) < 1e-6).any(1).all())
    # Phase-flip preprocessing needs the CTF of each simulated particle: it runs.
    flip = PreprocessConfig(normalise=False, ctf_correction="concat_phase_flip")
    two = SimulatedParticles(_volume(ctf_star), table, flip, 6.0, 4, 1, 1, snr=1.0)
    assert two[0].image.shape == (4, 2, 16, 16)


@pytest.mark.parametrize("snr", [0.3, 1.0])
def test_estimated_snr_matches_the_simulation(data_dir: Path, tmp_path: Path, snr: float) -> None:
    # Independent reference: simulate_particles' own SNR definition (disc of the radius).
    config = SimulationConfig(n=96, snr=snr, seed=5)
    star = simulate_from_structure(
        data_dir / "structures" / "1s3x.pdb.gz", 6.0, 16, tmp_path / "sim", config,
        resolution=12.0, progress=False,
    )  # fmt: skip
    radius = json.loads((tmp_path / "sim" / "simulation.json").read_text())["derived"][
        "particle_radius_px"
    ]
    estimate = estimate_snr(read_particles(star), _volume(star), radius)
    assert estimate == pytest.approx(snr, rel=0.2)


def test_wrong_map_size_is_rejected(clean_star: Path) -> None:
    table = read_particles(clean_star)
    with pytest.raises(InputError, match="16\\^3 map"):
        SimulatedParticles(torch.zeros(20, 20, 20), table, RAW, 6.0, 4, 1, 1, snr=1.0)
