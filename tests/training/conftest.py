"""Tiny simulated particle sets shared by the training tests (simulated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryopose.simulate.particles import SimulationConfig, simulate_from_structure

DATA = Path(__file__).resolve().parents[1] / "data"


def _simulate(data_dir: Path, out: Path, n: int, ctf: bool, snr: float | None) -> Path:
    config = SimulationConfig(
        n=n, snr=snr, ctf=ctf, shift_sigma_angst=0.0, shift_max_angst=0.0, seed=3
    )
    # 1s3x at 6 A/px in a 16 px box: big enough to carry its orientation, cheap to train on.
    return simulate_from_structure(
        data_dir / "structures" / "1s3x.pdb.gz", 6.0, 16, out, config, resolution=12.0,
        progress=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def clean_star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 noise-free, CTF-free, centred particles of 1s3x, 16 px at 6 A/px."""
    return _simulate(DATA, tmp_path_factory.mktemp("clean"), 64, ctf=False, snr=None)


@pytest.fixture(scope="session")
def ctf_star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 particles of 1s3x with CTF and noise (SNR 1), rlnRandomSubset halves."""
    return _simulate(DATA, tmp_path_factory.mktemp("ctf"), 48, ctf=True, snr=1.0)
