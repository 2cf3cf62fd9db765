"""RELION Euler angles <-> matrices (cryopose.geometry.euler)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryopose.geometry.euler import (
    euler_to_matrix,
    euler_to_matrix_rad,
    matrix_to_euler,
    matrix_to_euler_rad,
)

DTYPES = [torch.float32, torch.float64]
ATOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _random_angles(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([-180.0, 0.0, -180.0], dtype=torch.float64)
    span = torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64)
    return (lo + span * torch.rand(n, 3, generator=g, dtype=torch.float64)).to(dtype)


def _wrap(deg: torch.Tensor) -> torch.Tensor:
    """Angle differences wrapped to [-180, 180)."""
    return torch.remainder(deg + 180.0, 360.0) - 180.0


def _elementary(axis: str, t: float) -> np.ndarray:
    """Active right-handed rotation by t radians about x, y or z (hand-written)."""
    c, s = np.cos(t), np.sin(t)
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrices_orthonormal_det_one(dtype: torch.dtype) -> None:
    R = euler_to_matrix(_random_angles(500, 0, dtype))
    assert R.dtype == dtype and R.shape == (500, 3, 3)
    eye = torch.eye(3, dtype=dtype).expand_as(R)
    assert torch.allclose(R @ R.mT, eye, atol=ATOL[dtype])
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=dtype), atol=ATOL[dtype])


def test_design_formula_against_elementary_composition() -> None:
    # RELION's A is the transpose of the active intrinsic ZYZ rotation Rz(rot) Ry(tilt) Rz(psi)
    angles = _random_angles(200, 1, torch.float64)
    ours = euler_to_matrix(angles).numpy()
    rad = np.deg2rad(angles.numpy())
    by_hand = np.stack(
        [(_elementary("z", a) @ _elementary("y", b) @ _elementary("z", g)).T for a, b, g in rad]
    )
    scipy_zyz = Rotation.from_euler("ZYZ", angles.numpy(), degrees=True).as_matrix()
    np.testing.assert_allclose(ours, by_hand, atol=1e-14)
    np.testing.assert_allclose(ours, np.transpose(scipy_zyz, (0, 2, 1)), atol=1e-14)


def test_known_values() -> None:
    # third row = viewing direction (sin tilt cos rot, sin tilt sin rot, cos tilt)
    A = euler_to_matrix(torch.tensor([90.0, 90.0, 0.0], dtype=torch.float64))
    np.testing.assert_allclose(A[2].numpy(), [0.0, 1.0, 0.0], atol=1e-15)
    # psi alone: passive in-plane rotation, maps x to (cos psi, -sin psi, 0)
    A = euler_to_matrix(torch.tensor([0.0, 0.0, 30.0], dtype=torch.float64))
    x = A @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    np.testing.assert_allclose(x.numpy(), [np.sqrt(3) / 2, -0.5, 0.0], atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_random(dtype: torch.dtype) -> None:
    angles = _random_angles(1000, 2, dtype)
    R = euler_to_matrix(angles)
    back = matrix_to_euler(R)
    assert torch.allclose(euler_to_matrix(back), R, atol=ATOL[dtype])
    # away from the poles the angles themselves come back
    regular = (angles[:, 1] > 1.0) & (angles[:, 1] < 179.0)
    tol = 1e-2 if dtype == torch.float32 else 1e-9
    assert _wrap(back - angles)[regular].abs().max() < tol
    assert back[:, 1].min() >= 0 and back[:, 1].max() <= 180
    assert back[:, [0, 2]].min() > -180 and back[:, [0, 2]].max() <= 180


def test_radian_variants_agree() -> None:
    angles = _random_angles(50, 3, torch.float64)
    R = euler_to_matrix_rad(torch.deg2rad(angles))
    assert torch.allclose(R, euler_to_matrix(angles), atol=1e-15)
    assert torch.allclose(torch.rad2deg(matrix_to_euler_rad(R)), matrix_to_euler(R), atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rot", [-180.0, -35.0, 0.0, 72.0, 180.0])
@pytest.mark.parametrize("psi", [-180.0, -10.0, 0.0, 100.0, 180.0])
def test_gimbal_poles(dtype: torch.dtype, rot: float, psi: float) -> None:
    for tilt, combined in ((0.0, rot + psi), (180.0, psi - rot)):
        angles = torch.tensor([rot, tilt, psi], dtype=dtype)
        R = euler_to_matrix(angles)
        back = matrix_to_euler(R)
        # 1e-6, not 1e-12: see test_pole_tilt_exact_in_float64
        assert torch.allclose(euler_to_matrix(back), R, atol=1e-6)
        # at the poles rot := 0 and the in-plane angle goes to psi
        assert back[0] == 0.0
        assert abs(float(back[1]) - tilt) < 1e-5
        assert abs(float(_wrap(back[2] - combined))) < 1e-3
        # (-180, 180], up to float32 rounding of angles next to +-180
        assert -180.0 - 2e-5 < back[2] <= 180.0


def test_pole_tilt_exact_in_float64() -> None:
    angles = torch.tensor([30.0, 180.0, 10.0], dtype=torch.float64)
    R = euler_to_matrix(angles)
    back = matrix_to_euler(R)
    assert back[1] == 180.0
    assert torch.allclose(euler_to_matrix(back), R, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_half_turn_angles_come_back_in_range(dtype: torch.dtype) -> None:
    angles = torch.tensor([[180.0, 45.0, 180.0], [-180.0, 90.0, -180.0]], dtype=dtype)
    back = matrix_to_euler(euler_to_matrix(angles))
    expected = torch.tensor([[180.0, 45.0, 180.0], [180.0, 90.0, 180.0]], dtype=dtype)
    assert torch.allclose(_wrap(back - expected), torch.zeros_like(back), atol=1e-3)


@pytest.mark.parametrize("tilt", [1e-4, 1e-2, 179.99, 180.0 - 1e-4])
def test_near_poles_matrix_round_trip(tilt: float) -> None:
    for dtype in DTYPES:
        angles = torch.tensor([[40.0, tilt, -70.0], [-120.0, tilt, 15.0]], dtype=dtype)
        R = euler_to_matrix(angles)
        assert torch.allclose(euler_to_matrix(matrix_to_euler(R)), R, atol=ATOL[dtype])


def test_batched_shapes() -> None:
    angles = _random_angles(24, 4, torch.float64).reshape(2, 3, 4, 3)
    R = euler_to_matrix(angles)
    assert R.shape == (2, 3, 4, 3, 3)
    assert matrix_to_euler(R).shape == (2, 3, 4, 3)
    assert torch.allclose(R[1, 2, 3], euler_to_matrix(angles[1, 2, 3]))
