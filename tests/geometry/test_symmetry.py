"""Point groups: orders, closure, axis conventions and conformance with RELION 3.1.3."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import starfile
import torch

from cryopose.errors import InputError
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.euler import euler_to_matrix
from cryopose.geometry.symmetry import symmetry_group, symmetry_order

ORDERS = {
    "C1": 1, "C2": 2, "C4": 4, "C7": 7, "C13": 13, "D1": 2, "D2": 4, "D3": 6, "D7": 14,
    "T": 12, "O": 24, "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60,
}  # fmt: skip

I3 = torch.eye(3, dtype=torch.float64)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, None] - b[None]).abs().amax(dim=(-2, -1))


def _fold(R: torch.Tensor) -> int:
    """Order of a rotation (smallest k >= 1 with R^k = I)."""
    power = R.clone()
    for k in range(1, 61):
        if torch.allclose(power, I3, atol=1e-9):
            return k
        power = power @ R
    raise AssertionError("not of finite order <= 60")


def _axes_of_fold(G: torch.Tensor, fold: int) -> torch.Tensor:
    """Unit axes (sign arbitrary) of the group elements of exactly this order."""
    axes = []
    for R in G:
        if _fold(R) == fold:
            skew = torch.stack([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
            if skew.norm() < 1e-9:  # half turn: axis from R + I (rank one)
                M = R + I3
                skew = M[torch.argmax(M.diagonal())]
            axes.append(skew / skew.norm())
    return torch.stack(axes)


def _has_axis(axes: torch.Tensor, v: tuple[float, float, float]) -> bool:
    u = torch.tensor(v, dtype=torch.float64)
    u = u / u.norm()
    return bool(((axes @ u).abs() > 1 - 1e-9).any())


@pytest.mark.parametrize("name", list(ORDERS))
def test_order_closure_and_rotations(name: str) -> None:
    G = symmetry_group(name)
    assert G.dtype == torch.float64
    assert G.shape == (ORDERS[name], 3, 3)
    assert symmetry_order(name) == ORDERS[name]
    assert torch.allclose(G[0], I3)
    assert torch.allclose(G @ G.mT, I3.expand_as(G), atol=1e-12)
    assert torch.allclose(torch.linalg.det(G), torch.ones(len(G), dtype=G.dtype), atol=1e-12)
    # distinct elements, closed under products and inverses
    d = _max_abs_diff(G, G) + 10 * torch.eye(len(G), dtype=G.dtype)
    assert d.min() > 1e-3
    products = (G[:, None] @ G[None]).reshape(-1, 3, 3)
    assert _max_abs_diff(products, G).amin(dim=1).max() < 1e-9
    assert _max_abs_diff(G.mT, G).amin(dim=1).max() < 1e-9


def test_case_and_whitespace_insensitive() -> None:
    assert torch.equal(symmetry_group(" d7 "), symmetry_group("D7"))
    assert torch.equal(symmetry_group("i"), symmetry_group("I2"))
    assert symmetry_order("c4") == 4


@pytest.mark.parametrize("name", ["", "X", "C0", "D0", "C", "C4V", "I5", "O2", "T1", "Cx"])
def test_unknown_name(name: str) -> None:
    with pytest.raises(InputError, match=r"unknown symmetry .*expected C<n>, D<n>, T, O or I"):
        symmetry_group(name)
    with pytest.raises(InputError):
        symmetry_order(name)


def test_axis_conventions() -> None:
    # independent geometric checks of RELION's axis placement
    phi = (1 + math.sqrt(5)) / 2
    assert _has_axis(_axes_of_fold(symmetry_group("C6"), 6), (0, 0, 1))
    d5 = symmetry_group("D5")
    assert _has_axis(_axes_of_fold(d5, 5), (0, 0, 1))
    assert _has_axis(_axes_of_fold(d5, 2), (1, 0, 0))
    t2, t3 = _axes_of_fold(symmetry_group("T"), 2), _axes_of_fold(symmetry_group("T"), 3)
    assert len(t2) == 3 and len(t3) == 8  # 3 half turns, 4 axes x 2 turns
    assert _has_axis(t3, (0, 0, 1)) and _has_axis(t2, (0, math.sqrt(2), 1))
    o4 = _axes_of_fold(symmetry_group("O"), 4)
    assert _has_axis(o4, (0, 0, 1)) and _has_axis(o4, (1, 0, 0)) and _has_axis(o4, (0, 1, 0))
    assert _has_axis(_axes_of_fold(symmetry_group("O"), 3), (1, 1, 1))
    for name in ("I1", "I2"):  # Crowther: 2-folds on x, y and z
        twofold = _axes_of_fold(symmetry_group(name), 2)
        assert all(_has_axis(twofold, v) for v in [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    assert _has_axis(_axes_of_fold(symmetry_group("I1"), 5), (phi, 0, -1))
    assert _has_axis(_axes_of_fold(symmetry_group("I2"), 5), (1, 0, phi))
    for name, x in (("I3", -1), ("I4", 1)):
        g = symmetry_group(name)
        assert _has_axis(_axes_of_fold(g, 5), (0, 0, 1))
        assert _has_axis(_axes_of_fold(g, 2), (x, 0, phi))


# --- conformance with relion_particle_symmetry_expand --------------------------------------

RELION_GROUPS = ["C4", "D2", "D7", "T", "O", "I", "I1", "I3", "I4"]
ANGLES = torch.tensor(
    [[0.0, 0.0, 0.0], [30.0, 60.0, -45.0], [-170.0, 125.0, 80.0], [95.0, 10.0, 179.0]],
    dtype=torch.float64,
)


def _write_particles(path: Path) -> None:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [1.0],
            "rlnImageSize": [64],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@dummy.mrcs" for i in range(len(ANGLES))],
            "rlnAngleRot": ANGLES[:, 0].numpy(),
            "rlnAngleTilt": ANGLES[:, 1].numpy(),
            "rlnAnglePsi": ANGLES[:, 2].numpy(),
            "rlnOpticsGroup": [1] * len(ANGLES),
        }
    )
    starfile.write({"optics": optics, "particles": particles}, path)


def _relion_expand(tmp_path: Path, sym: str) -> dict[str, torch.Tensor]:
    """RELION's expanded poses, as (k, 3, 3) matrices per input image name."""
    _write_particles(tmp_path / "in.star")
    subprocess.run(
        ["relion_particle_symmetry_expand", "--i", "in.star", "--o", "out.star", "--sym", sym],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    out = starfile.read(tmp_path / "out.star")["particles"]
    angles = torch.tensor(
        out[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), dtype=torch.float64
    )
    mats = euler_to_matrix(angles)
    names = out["rlnImageName"].to_numpy()
    return {name: mats[names == name] for name in dict.fromkeys(names)}


def _one_to_one(ours: torch.Tensor, theirs: torch.Tensor, tol: float) -> bool:
    """Every pose of ``theirs`` matches exactly one of ``ours`` within ``tol`` rad, and back."""
    if ours.shape != theirs.shape:
        return False
    close = geodesic_distance(ours[:, None], theirs[None]) < tol
    return bool((close.sum(0) == 1).all() and (close.sum(1) == 1).all())


@pytest.mark.parametrize("sym", RELION_GROUPS)
def test_relion_symmetry_expand_writes_A_g(relion: None, tmp_path: Path, sym: str) -> None:
    expanded = _relion_expand(tmp_path, sym)
    G = symmetry_group(sym)
    A = euler_to_matrix(ANGLES)
    assert len(expanded) == len(ANGLES)
    for i, poses in enumerate(expanded.values()):
        assert _one_to_one(A[i] @ G, poses, 1e-3)
        if i > 0:  # the identity pose cannot tell A @ g from g @ A
            # measured: RELION's set differs from {g @ A} by 0.7-2.1 rad
            assert not _one_to_one(G @ A[i], poses, 1e-3)
