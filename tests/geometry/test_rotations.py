"""Quaternions, axis-angle and random rotations (cryopose.geometry.rotations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cryopose.geometry.euler import euler_to_matrix
from cryopose.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_quaternion,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_euler,
    quaternion_to_matrix,
    random_rotations,
)

DTYPES = [torch.float32, torch.float64]
ATOL = {torch.float32: 1e-5, torch.float64: 1e-13}


def _skew(v: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack(
        [torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)],
        -2,
    )


def _special_vectors(dtype: torch.dtype) -> torch.Tensor:
    """Axis-angle vectors at 0, tiny angles, generic angles and angles next to pi."""
    g = torch.Generator().manual_seed(7)
    axes = torch.randn(12, 3, generator=g, dtype=torch.float64)
    axes = axes / axes.norm(dim=-1, keepdim=True)
    angles = torch.tensor(
        [0.0, 1e-12, 1e-7, 1e-3, 0.5, 1.0, 2.0, 3.0, math.pi - 1e-3, math.pi - 1e-6,
         math.pi - 1e-9, math.pi],
        dtype=torch.float64,
    )  # fmt: skip
    return (axes * angles[:, None]).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_to_matrix_matches_matrix_exponential(dtype: torch.dtype) -> None:
    v = _special_vectors(torch.float64)
    expected = torch.linalg.matrix_exp(_skew(v))
    assert torch.allclose(axis_angle_to_matrix(v.to(dtype)).double(), expected, atol=ATOL[dtype])
    # active, right-handed: a quarter turn about z takes x to y
    quarter = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=dtype))
    x = quarter @ torch.tensor([1.0, 0.0, 0.0], dtype=dtype)
    assert torch.allclose(x, torch.tensor([0.0, 1.0, 0.0], dtype=dtype), atol=ATOL[dtype])


def test_axis_angle_round_trip_near_zero_and_pi() -> None:
    v = _special_vectors(torch.float64)
    back = matrix_to_axis_angle(axis_angle_to_matrix(v))
    angle = v.norm(dim=-1)
    below_pi = angle < math.pi - 1e-8
    # relative accuracy even for tiny angles (no acos)
    err = (back - v).norm(dim=-1)
    assert (err[below_pi] <= 1e-12 * angle[below_pi] + 1e-15).all()
    # at (and within rounding of) pi, v and -v are the same rotation
    err_pi = torch.minimum((back - v).norm(dim=-1), (back + v).norm(dim=-1))
    assert err_pi[~below_pi].max() < 1e-8
    assert back.norm(dim=-1).max() <= math.pi


def test_matrix_to_quaternion_known_values() -> None:
    # q = (cos t/2, sin t/2 * axis) for right-handed rotations, w >= 0
    v = _special_vectors(torch.float64)
    angle = v.norm(dim=-1, keepdim=True)
    axis = torch.where(angle > 0, v / angle.clamp_min(1e-300), torch.zeros_like(v))
    expected = torch.cat([torch.cos(angle / 2), torch.sin(angle / 2) * axis], -1)
    q = matrix_to_quaternion(axis_angle_to_matrix(v))
    assert (q[:, 0] >= 0).all()
    sign = torch.where((q * expected).sum(-1, keepdim=True) < 0, -1.0, 1.0).double()
    assert torch.allclose(q, sign * expected, atol=1e-12)
    # only half turns (w = 0) may come back with the opposite sign
    assert (expected[sign[:, 0] < 0, 0].abs() < 1e-9).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_quaternion_matrix_round_trips(dtype: torch.dtype) -> None:
    R = random_rotations(500, torch.Generator().manual_seed(1), dtype=dtype)
    half_turns = axis_angle_to_matrix(
        math.pi * torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=dtype)
    )
    R = torch.cat([R, half_turns, torch.eye(3, dtype=dtype)[None]])
    q = matrix_to_quaternion(R)
    assert q.dtype == dtype and q.shape == (len(R), 4)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(R), dtype=dtype), atol=ATOL[dtype])
    assert (q[:, 0] >= 0).all()
    assert torch.allclose(quaternion_to_matrix(q), R, atol=2 * ATOL[dtype])
    # and the other way, up to the sign of q
    g = torch.Generator().manual_seed(2)
    q0 = torch.randn(300, 4, generator=g, dtype=dtype)
    q0 = q0 / q0.norm(dim=-1, keepdim=True)
    q0 = torch.where(q0[:, :1] < 0, -q0, q0)
    assert torch.allclose(matrix_to_quaternion(quaternion_to_matrix(q0)), q0, atol=2 * ATOL[dtype])


def test_quaternion_to_matrix_normalises_and_ignores_sign() -> None:
    q = torch.tensor([0.3, -0.1, 0.8, 0.5], dtype=torch.float64)
    R = quaternion_to_matrix(q)
    assert torch.allclose(quaternion_to_matrix(3.7 * q), R, atol=1e-15)
    assert torch.allclose(quaternion_to_matrix(-q), R, atol=1e-15)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-15)


def test_euler_quaternion_through_relion_matrix() -> None:
    # psi alone is a passive in-plane rotation: active by -psi about z
    q = euler_to_quaternion(torch.tensor([0.0, 0.0, 50.0], dtype=torch.float64))
    t = math.radians(50.0)
    expected = torch.tensor([math.cos(t / 2), 0, 0, -math.sin(t / 2)], dtype=torch.float64)
    assert torch.allclose(q, expected, atol=1e-15)
    g = torch.Generator().manual_seed(3)
    angles = torch.rand(200, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [360.0, 180.0, 360.0], dtype=torch.float64
    ) - torch.tensor([180.0, 0.0, 180.0], dtype=torch.float64)
    q = euler_to_quaternion(angles)
    assert torch.allclose(quaternion_to_matrix(q), euler_to_matrix(angles), atol=1e-13)
    assert torch.allclose(
        euler_to_matrix(quaternion_to_euler(q)), euler_to_matrix(angles), atol=1e-12
    )


def test_gradients_finite_at_identity_and_gradcheck() -> None:
    v = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(v).sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()
    R = torch.eye(3, dtype=torch.float64, requires_grad=True)
    matrix_to_quaternion(R).sum().backward()
    assert R.grad is not None and torch.isfinite(R.grad).all()
    g = torch.Generator().manual_seed(4)
    v = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (v,))
    assert torch.autograd.gradcheck(lambda x: matrix_to_axis_angle(axis_angle_to_matrix(x)), (v,))
    q = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q,))


def test_random_rotations_are_rotations_and_reproducible() -> None:
    R = random_rotations(1000, torch.Generator().manual_seed(5))
    assert R.shape == (1000, 3, 3) and R.dtype == torch.float32
    assert torch.allclose(R @ R.mT, torch.eye(3).expand_as(R), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(1000), atol=1e-5)
    again = random_rotations(1000, torch.Generator().manual_seed(5))
    assert torch.equal(R, again)
    assert random_rotations(3, dtype=torch.float64).dtype == torch.float64
    assert random_rotations(0).shape == (0, 3, 3)


def test_random_rotations_are_uniform() -> None:
    n = 20000
    R = random_rotations(n, torch.Generator().manual_seed(6), dtype=torch.float64)
    # Haar: E[R] = 0; each entry has variance 1/3, so its mean has std 1/sqrt(3 n) = 0.004
    assert R.mean(dim=0).abs().max() < 0.02
    # rotation angle density (1 - cos t) / pi on [0, pi]: CDF (t - sin t) / pi
    t = matrix_to_axis_angle(R).norm(dim=-1).numpy()
    result = stats.kstest(t, lambda x: (x - np.sin(x)) / np.pi)
    assert result.pvalue > 0.01
    # a non-uniform sampler (angles uniform in [0, pi]) is rejected by the same test
    u = np.random.default_rng(0).uniform(0, np.pi, n)
    assert stats.kstest(u, lambda x: (x - np.sin(x)) / np.pi).pvalue < 1e-6
    # the viewing direction (third row) is uniform on the sphere: z uniform in [-1, 1]
    z = R[:, 2, 2].numpy()
    assert stats.kstest(z, stats.uniform(loc=-1, scale=2).cdf).pvalue > 0.01


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        quaternion_to_matrix(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        matrix_to_quaternion(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        axis_angle_to_matrix(torch.zeros(2, 4))
