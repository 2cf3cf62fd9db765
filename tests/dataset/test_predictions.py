"""Predictions written back to star files: round trip, nothing lost, RELION reads them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryopose.data.dataset import ParticlesDataset
from cryopose.data.predictions import write_predictions
from cryopose.errors import InputError
from cryopose.geometry.rotations import random_rotations
from cryopose.io.particles import ParticleTable, read_particles

POSE = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]


@pytest.fixture
def table(data_dir: Path) -> ParticleTable:
    return read_particles(data_dir / "particles" / "relion31.star", particles_dir=data_dir)


def _images(table: ParticleTable) -> list[tuple[Path, int]]:
    """Where every particle's image is (resolved stack path, index)."""
    return [(path.resolve(), index) for path, index in table.image_locations()]


def predictions(n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    rotations = random_rotations(n, generator=g, dtype=torch.float64)
    shifts = torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    return rotations, shifts, np.linspace(0.1, 0.9, n)


def test_round_trip_keeps_everything_else(table: ParticleTable, tmp_path: Path) -> None:
    before = table.particles.copy()
    rotations, shifts, probs = predictions(5)
    out = tmp_path / "pred.star"
    write_predictions(
        table,
        rotations,
        shifts,
        {"rlnMaxValueProbDistribution": probs, "cryoposeScore": torch.arange(5.0)},
        out,
    )
    pd.testing.assert_frame_equal(table.particles, before)  # the input is untouched
    back = read_particles(out, particles_dir=table.particles_dir)
    torch.testing.assert_close(back.rotations(torch.float64), rotations, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.shifts_angst(torch.float64), shifts, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back.particles["rlnMaxValueProbDistribution"], probs)
    np.testing.assert_array_equal(back.particles["cryoposeScore"], np.arange(5.0))
    others = [
        c for c in before.columns if c not in [*POSE, "rlnMaxValueProbDistribution", "rlnImageName"]
    ]
    pd.testing.assert_frame_equal(back.particles[others], before[others])
    # Image names are rewritten to resolve from the new folder: the same images.
    assert _images(back) == _images(table)
    assert back.particles["rlnImageName"].iloc[0].endswith("/tests/data/relion31.mrcs")
    assert table.optics is not None and back.optics is not None
    pd.testing.assert_frame_equal(back.optics, table.optics)
    # The written file is a dataset again, with the predictions as labels.
    item = ParticlesDataset(back)[3]
    torch.testing.assert_close(item.rotation, rotations[3].float())


def test_without_shifts_keeps_the_origins(table: ParticleTable, tmp_path: Path) -> None:
    rotations, _, _ = predictions(5)
    write_predictions(table, rotations, None, None, tmp_path / "p.star")
    back = read_particles(tmp_path / "p.star")
    np.testing.assert_array_equal(
        back.particles[["rlnOriginXAngst", "rlnOriginYAngst"]],
        table.particles[["rlnOriginXAngst", "rlnOriginYAngst"]],
    )


def test_relion_reads_the_predictions(table: ParticleTable, tmp_path: Path, relion: None) -> None:
    rotations, shifts, probs = predictions(5)
    out = tmp_path / "pred.star"
    write_predictions(table, rotations, shifts, {"rlnMaxValueProbDistribution": probs}, out)
    subprocess.run(
        ["relion_star_handler", "--i", str(out), "--o", str(tmp_path / "x.star")],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    relion = read_particles(tmp_path / "x.star")
    # RELION writes 6 significant digits.
    torch.testing.assert_close(relion.rotations(torch.float64), rotations, rtol=0, atol=2e-5)
    torch.testing.assert_close(relion.shifts_angst(torch.float64), shifts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(relion.particles["rlnMaxValueProbDistribution"], probs, rtol=1e-5)
    np.testing.assert_allclose(
        relion.particles["rlnDefocusU"], table.particles["rlnDefocusU"], rtol=1e-6
    )
    assert _images(relion) == _images(table)


def test_relion30_input_is_written_as_31(data_dir: Path, tmp_path: Path) -> None:
    table = read_particles(data_dir / "particles" / "empiar_10076_7.star")
    assert table.is_relion30 and not table.has_poses
    rotations, shifts, _ = predictions(7)
    write_predictions(table, rotations, shifts, None, tmp_path / "p.star")
    back = read_particles(tmp_path / "p.star")
    assert not back.is_relion30
    torch.testing.assert_close(back.rotations(torch.float64), rotations, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back.particles["rlnDefocusU"], table.particles["rlnDefocusU"])


def test_bad_predictions_fail(table: ParticleTable, tmp_path: Path) -> None:
    rotations, shifts, _ = predictions(5)
    out = tmp_path / "p.star"
    with pytest.raises(InputError, match=r"rotations of shape \(5, 3, 3\)"):
        write_predictions(table, rotations[:4], None, None, out)
    bad = rotations.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        write_predictions(table, bad, None, None, out)
    with pytest.raises(InputError, match="shifts_angst"):
        write_predictions(table, rotations, shifts[:, :1], None, out)
    with pytest.raises(InputError, match="score"):
        write_predictions(table, rotations, None, {"rlnAngleRot": np.zeros(5)}, out)
    with pytest.raises(InputError, match="shape"):
        write_predictions(table, rotations, None, {"cryoposeScore": np.zeros(4)}, out)
    assert not out.exists()
