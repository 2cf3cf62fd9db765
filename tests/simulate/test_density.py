"""Tests of cryopose.simulate.density against analytic results and brute-force integration."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from cryopose.io.structure import Atoms, read_structure
from cryopose.simulate.density import density_from_file, density_map

# Peng et al. (1996) / ITC vol. C table 4.3.2.2 electron scattering factors, typed by hand:
# (a_1..a_5 in Angstrom, b_1..b_5 in Angstrom^2).
PENG = {
    "C": ([0.0893, 0.2563, 0.7570, 1.0487, 0.3575], [0.2465, 1.7100, 6.4094, 18.6113, 50.2523]),
    "N": ([0.1022, 0.3219, 0.7982, 0.8197, 0.1715], [0.2451, 1.7481, 6.1925, 17.3894, 48.1431]),
    "O": ([0.0974, 0.2921, 0.6910, 0.6990, 0.2039], [0.2067, 1.3815, 4.6943, 12.7105, 32.4726]),
    "S": ([0.2497, 0.5628, 1.3899, 2.1865, 0.7715], [0.2681, 1.6711, 7.0267, 19.5377, 50.3888]),
}
MOTT_BETHE = 47.8756  # h^2 / (2 pi m0 e) in V A^2


def one_atom(element: str, z: int, xyz: tuple[float, float, float]) -> Atoms:
    return Atoms(
        coordinates=torch.tensor([xyz], dtype=torch.float64),
        atomic_numbers=torch.tensor([z]),
        occupancies=torch.ones(1),
        bfactors=torch.zeros(1),
        elements=np.array([element]),
        chain_ids=np.array(["A"]),
        residue_names=np.array(["X"]),
        residue_numbers=torch.tensor([1]),
        atom_names=np.array([element]),
    )


@pytest.fixture
def protein(data_dir: Path) -> Atoms:
    atoms = read_structure(data_dir / "structures" / "1s3x.pdb.gz")
    return atoms[np.isin(atoms.elements, list(PENG))]


def test_integral_equals_sum_of_scattering_factors_at_zero(protein: Atoms) -> None:
    expected = MOTT_BETHE * sum(
        sum(PENG[str(e)][0]) * float(o)
        for e, o in zip(protein.elements, protein.occupancies, strict=True)
    )
    for resolution in (None, 6.0):
        vol = density_map(protein, angpix=1.5, box=80, resolution=resolution)
        assert vol.shape == (80, 80, 80) and vol.dtype == torch.float32
        assert float(vol.double().sum()) * 1.5**3 == pytest.approx(expected, rel=1e-3)


def test_integral_with_wide_ions(data_dir: Path) -> None:
    """All of 1s3x, with Na+ and Ca2+ (twice as wide as C): f(0) from gemmi's table."""
    atoms = read_structure(data_dir / "structures" / "1s3x.pdb.gz")
    assert {"Na", "Ca"} <= set(atoms.elements.tolist())
    f0 = {e: sum(gemmi.Element(e).c4322.a) for e in set(atoms.elements.tolist())}
    expected = MOTT_BETHE * sum(
        f0[str(e)] * float(o) for e, o in zip(atoms.elements, atoms.occupancies, strict=True)
    )
    vol = density_map(atoms, angpix=1.5, box=80)
    assert float(vol.double().sum()) * 1.5**3 == pytest.approx(expected, rel=1e-3)


def test_centre_of_mass_lands_on_box_centre(protein: Atoms) -> None:
    box = 80
    vol = density_map(protein, angpix=1.5, box=box, resolution=4.0).double()
    idx = torch.arange(box, dtype=torch.float64)
    total = vol.sum()
    com_zyx = [
        float((vol.sum(dim=tuple(d for d in range(3) if d != axis)) * idx).sum() / total)
        for axis in range(3)
    ]
    np.testing.assert_allclose(com_zyx, [box // 2] * 3, atol=0.5)


@pytest.mark.parametrize("xyz", [(0.0, 0.0, 0.0), (0.3, -0.2, 0.45)])
def test_single_atom_matches_brute_force_voxel_average(xyz: tuple[float, float, float]) -> None:
    box, angpix, res = 24, 1.0, 4.0
    vol = density_map(one_atom("C", 6, xyz), angpix, box, resolution=res, center=None)
    a, b = (np.array(v) for v in PENG["C"])
    var = (b + 4 * res**2) / (8 * math.pi**2)  # Angstrom^2 per axis
    # Midpoint rule with 8^3 samples per voxel over the central 9^3 voxels.
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    grid = (np.arange(box // 2 - 4, box // 2 + 5)[:, None] - box // 2 + sub).reshape(-1)
    ref = np.zeros((grid.size,) * 3)
    for ai, vi in zip(a, var, strict=True):
        g = [np.exp(-((grid - c) ** 2) / (2 * vi)) / math.sqrt(2 * math.pi * vi) for c in xyz]
        ref += MOTT_BETHE * ai * g[2][:, None, None] * g[1][None, :, None] * g[0][None, None, :]
    ref = ref.reshape(9, 8, 9, 8, 9, 8).mean(axis=(1, 3, 5))
    got = (
        vol[box // 2 - 4 : box // 2 + 5, box // 2 - 4 : box // 2 + 5, box // 2 - 4 : box // 2 + 5]
        .double()
        .numpy()
    )
    np.testing.assert_allclose(got, ref, atol=2e-3 * ref.max())


def test_single_atom_is_radially_symmetric_with_analytic_width() -> None:
    box, angpix, res = 32, 1.0, 6.0
    vol = density_map(
        one_atom("C", 6, (0.0, 0.0, 0.0)), angpix, box, resolution=res, center=None
    ).double()
    a, b = (np.array(v) for v in PENG["C"])
    # Per-axis variance of the 5-Gaussian mixture plus the voxel box (Sheppard: a^2 / 12).
    expected = float((a * (b + 4 * res**2)).sum() / a.sum()) / (8 * math.pi**2) + 1 / 12
    r = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    m = vol / vol.sum()
    for c in (x, y, z):
        assert float((m * c).sum()) == pytest.approx(0.0, abs=1e-6)
        assert float((m * c * c).sum()) == pytest.approx(expected, rel=1e-3)
    assert float((m * x * y).sum()) == pytest.approx(0.0, abs=1e-6)
    # Radial symmetry: points at equal distance along an axis and a diagonal agree.
    mid = box // 2
    assert float(vol[mid, mid, mid + 3]) == pytest.approx(float(vol[mid + 3, mid, mid]), rel=1e-6)
    assert float(vol[mid, mid + 3, mid + 4]) == pytest.approx(
        float(vol[mid + 5, mid, mid]), rel=0.02
    )


@pytest.mark.parametrize(("resolution", "bfactor"), [(8.0, 0.0), (None, 100.0)])
def test_fourier_transfer_is_analytic(resolution: float | None, bfactor: float) -> None:
    box, angpix = 64, 1.5
    vol = density_map(
        one_atom("C", 6, (0.0, 0.0, 0.0)),
        angpix,
        box,
        resolution=resolution,
        center=None,
        bfactor=bfactor,
    ).double()
    amp = torch.fft.rfftn(vol).abs()
    line = (amp[0, 0, :] / amp[0, 0, 0]).numpy()  # along x
    q = np.fft.rfftfreq(box, d=angpix)
    a, b = (np.array(v) for v in PENG["C"])
    blur = bfactor + (4 * resolution**2 if resolution else 0.0)
    # Continuous transform of the voxel-averaged atom: scattering factor times the voxel's
    # sinc (np.sinc(x) = sin(pi x) / (pi x)); sampling adds its aliases at q + m / angpix.
    expected = np.zeros_like(q)
    for m in range(-3, 4):
        qm = q + m / angpix
        f = (a[:, None] * np.exp(-(b[:, None] + blur) * qm**2 / 4)).sum(0) / a.sum()
        expected += f * np.sinc(qm * angpix)
    expected = np.abs(expected)
    np.testing.assert_allclose(line, expected, atol=1e-4)
    if resolution:
        assert line[q >= 1 / 6].max() < math.exp(-((resolution / 6) ** 2))


def test_map_at_8_angstrom_has_no_power_beyond_one_sixth(protein: Atoms) -> None:
    box, angpix = 80, 1.5
    q = torch.fft.fftfreq(box, d=angpix)
    qq = torch.sqrt(q[:, None, None] ** 2 + q[None, :, None] ** 2 + q[None, None, :] ** 2)
    fractions = []
    for res in (None, 8.0):
        power = torch.fft.fftn(density_map(protein, angpix, box, resolution=res).double())
        power = power.abs() ** 2
        fractions.append(float(power[qq > 1 / 6].sum() / power.sum()))
    assert fractions[0] > 0.3  # the unfiltered map has plenty
    assert fractions[1] < 0.01


def test_translation_by_one_voxel_shifts_the_map(protein: Atoms) -> None:
    box, angpix = 64, 1.5
    com = protein.center_of_mass()
    centred = replace(protein, coordinates=protein.coordinates - com)
    moved = replace(
        protein, coordinates=centred.coordinates + torch.tensor([angpix, 0, -2 * angpix])
    )
    a = density_map(centred, angpix, box, resolution=5.0, center=None)
    b = density_map(moved, angpix, box, resolution=5.0, center=None)
    expected = torch.roll(a, shifts=(-2, 1), dims=(0, 2))
    inner = (slice(4, -4),) * 3
    torch.testing.assert_close(b[inner], expected[inner], atol=1e-4 * float(a.max()), rtol=0)
    # Centring on the centre of mass undoes the shift.
    torch.testing.assert_close(
        density_map(moved, angpix, box, resolution=5.0),
        density_map(centred, angpix, box, resolution=5.0),
        atol=1e-4 * float(a.max()),
        rtol=0,
    )


def test_density_from_file_default_box(data_dir: Path) -> None:
    path = data_dir / "structures" / "3qm1.pdb.gz"
    atoms = read_structure(path, assembly="1")
    radius = float(
        torch.linalg.vector_norm(atoms.coordinates - atoms.center_of_mass(), dim=1).max()
    )
    vol = density_from_file(path, angpix=4.0, resolution=8.0, assembly="1")
    box = vol.shape[0]
    assert vol.shape == (box, box, box) and box % 2 == 0
    assert (box - 2) * 4.0 < 2.4 * radius <= box * 4.0
    # The whole model is inside: the integral is that of the uncropped model.
    big = density_map(atoms, 4.0, box + 20, resolution=8.0)
    assert float(vol.double().sum()) == pytest.approx(float(big.double().sum()), rel=1e-3)
