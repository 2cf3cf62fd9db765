"""reconstruct_particles on a simulated star file, checked against relion_reconstruct."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryopose.evaluation.fsc import fsc, pcc
from cryopose.io.particles import read_particles
from cryopose.pose.reconstruct import reconstruct_particles
from cryopose.simulate.particles import SimulationConfig, simulate_from_structure

BOX = 40
ANGPIX = 2.5
N_PARTICLES = 300


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 noise-free CTF-modulated particles of 1s3x with shifts and rlnRandomSubset."""
    structure = Path(__file__).resolve().parents[1] / "data" / "structures" / "1s3x.pdb.gz"
    config = SimulationConfig(n=N_PARTICLES, snr=None, seed=3)
    out = tmp_path_factory.mktemp("sim")
    return simulate_from_structure(structure, ANGPIX, BOX, out, config=config, progress=False)


def _relion(star: Path, out: str, *extra: str) -> torch.Tensor:
    """relion_reconstruct --ctf, run where RELION resolves the star's image names."""
    subprocess.run(
        ["relion_reconstruct", "--i", star.name, "--o", out, "--ctf", *extra],
        cwd=star.parent,
        check=True,
        capture_output=True,
    )
    return torch.from_numpy(mrcfile.read(star.parent / out).astype(np.float32))


def test_matches_relion_reconstruct(relion: None, star: Path) -> None:
    result = reconstruct_particles(read_particles(star), ctf=True, show_progress=False)
    assert result.full.shape == (BOX, BOX, BOX) and result.n_particles == N_PARTICLES
    assert result.angpix == pytest.approx(ANGPIX)
    assert pcc(result.full, _relion(star, "relion_full.mrc")) >= 0.98


def test_half_maps_follow_random_subset(relion: None, star: Path) -> None:
    table = read_particles(star)
    result = reconstruct_particles(table, ctf=True, halves=True, show_progress=False)
    subsets = starfile.read(star)["particles"]["rlnRandomSubset"].to_numpy()
    assert result.n_half == (int((subsets == 1).sum()), int((subsets == 2).sum()))
    assert result.half1 is not None and result.half2 is not None and result.fsc is not None
    # RELION's --subset k reconstructs the particles with rlnRandomSubset == k only.
    assert pcc(result.half1, _relion(star, "relion_half1.mrc", "--subset", "1")) >= 0.98
    assert pcc(result.half2, _relion(star, "relion_half2.mrc", "--subset", "2")) >= 0.98
    assert pcc(result.half1, _relion(star, "relion_full2.mrc")) < 0.99


def test_streaming_batches_do_not_change_the_map(star: Path) -> None:
    table = read_particles(star)
    big = reconstruct_particles(table, ctf=True, batch_size=N_PARTICLES, show_progress=False)
    tiny = reconstruct_particles(table, ctf=True, batch_size=7, show_progress=False)
    # float32 sums in another order: equal to rounding.
    scale = float(big.full.abs().max())
    torch.testing.assert_close(tiny.full, big.full, rtol=0, atol=1e-5 * scale)


def test_tau2_reports_the_fsc_of_unfiltered_half_maps(star: Path) -> None:
    """The tau2 filter is built from the half-map FSC; reporting the FSC of the filtered maps
    would read better than the data. With random poses both curves must be the unfiltered one."""
    table = read_particles(star)
    gen = np.random.default_rng(0)
    for column in ("rlnAngleRot", "rlnAnglePsi"):
        table.particles[column] = gen.uniform(-180.0, 180.0, len(table))
    table.particles["rlnAngleTilt"] = np.degrees(np.arccos(gen.uniform(-1.0, 1.0, len(table))))
    plain, tau2 = (
        reconstruct_particles(table, ctf=True, halves=True, regularisation=r, show_progress=False)
        for r in ("relion", "tau2")
    )
    assert plain.fsc is not None and tau2.fsc is not None
    torch.testing.assert_close(tau2.fsc, plain.fsc)
    assert tau2.half1 is not None and tau2.half2 is not None
    filtered = fsc(tau2.half1, tau2.half2)
    # The filtered maps' FSC is higher somewhere: what the result must not report.
    assert float((filtered - tau2.fsc)[1:].max()) > 0.05
