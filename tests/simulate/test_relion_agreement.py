"""Particles simulated by cryopose mean the same to RELION as to cryopose.

relion_reconstruct --ctf on a cryopose-simulated dataset must reproduce the source map as well
as cryopose's own reconstruction does (FSC against the source, within one shell).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import pytest
import torch

from cryopose.evaluation.fsc import fsc, resolution_at
from cryopose.io.mrc import read_map
from cryopose.io.particles import read_particles
from cryopose.pose.reconstruct import reconstruct_particles
from cryopose.simulate.particles import SimulationConfig, simulate_from_structure

DATA = Path(__file__).parents[1] / "data"


def first_shell_below(curve: torch.Tensor, threshold: float) -> int:
    below = (curve[1:] < threshold).nonzero()
    return int(below[0]) + 1 if len(below) else len(curve)


@pytest.mark.usefixtures("relion")
def test_relion_reconstructs_cryopose_particles_as_well_as_cryopose(tmp_path: Path) -> None:
    config = SimulationConfig(n=600, snr=0.5, ctf=True, seed=11, shift_sigma_angst=4.0)
    star = simulate_from_structure(
        DATA / "structures" / "1s3x.pdb.gz",
        4.0,
        40,
        tmp_path / "sim",
        config=config,
        progress=False,
    )
    truth, angpix = read_map(tmp_path / "sim" / "ground_truth.mrc")
    # RELION resolves image names against its working directory: run it in the star's folder.
    subprocess.run(
        ["relion_reconstruct", "--i", star.name, "--o", "relion.mrc", "--ctf"],
        cwd=star.parent,
        check=True,
        capture_output=True,
    )
    relion_map = torch.from_numpy(mrcfile.read(star.parent / "relion.mrc").copy())
    ours = reconstruct_particles(read_particles(star), ctf=True, show_progress=False).full

    fsc_relion = fsc(relion_map, truth)
    fsc_ours = fsc(ours, truth)
    for threshold in (0.5, 0.143):
        shell_relion = first_shell_below(fsc_relion, threshold)
        shell_ours = first_shell_below(fsc_ours, threshold)
        assert abs(shell_relion - shell_ours) <= 1, (threshold, shell_relion, shell_ours)
    # Both reproduce the source map: resolution well beyond the 0.5 crossing of noise.
    assert resolution_at(fsc_relion, 40, angpix, 0.5) < 14.0
    assert resolution_at(fsc_ours, 40, angpix, 0.5) < 14.0
