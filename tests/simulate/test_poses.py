"""Pose distributions against analytic results for the Haar measure and von Mises-Fisher."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.geometry.euler import euler_to_matrix, matrix_to_euler
from cryopose.simulate.poses import (
    preferred_orientation_poses,
    uniform_poses,
    viewing_directions,
    von_mises_fisher,
)

N = 20000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_rotations(R: torch.Tensor) -> None:
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=R.dtype), atol=1e-10)


def test_uniform_poses_are_haar() -> None:
    R = uniform_poses(N, gen())
    assert R.shape == (N, 3, 3) and R.dtype == torch.float64
    assert_rotations(R)
    # Haar measure: E[trace R] = 1 + 2 E[cos angle] = 0; every matrix entry has mean 0 and
    # variance 1/3; the viewing direction is uniform on S^2 (P(z > 0.9) = 0.05).
    tol = 4 / math.sqrt(N)
    assert abs(float(R.diagonal(dim1=-2, dim2=-1).sum(-1).mean())) < 3 * tol
    assert float(R.mean(0).abs().max()) < tol
    assert torch.allclose(R.pow(2).mean(0), torch.full((3, 3), 1 / 3, dtype=R.dtype), atol=tol)
    z = viewing_directions(R)[:, 2]
    assert abs(float((z > 0.9).double().mean()) - 0.05) < 0.01


def test_viewing_direction_is_relion_rot_tilt() -> None:
    R = uniform_poses(100, gen(1))
    angles = torch.deg2rad(matrix_to_euler(R))
    rot, tilt = angles[:, 0], angles[:, 1]
    expected = torch.stack(
        [torch.sin(tilt) * torch.cos(rot), torch.sin(tilt) * torch.sin(rot), torch.cos(tilt)], -1
    )
    assert torch.allclose(viewing_directions(R), expected, atol=1e-10)


@pytest.mark.parametrize("kappa", [2.0, 20.0, 200.0])
def test_von_mises_fisher_mean_cosine(kappa: float) -> None:
    mu = torch.tensor([1.0, 2.0, -2.0]) / 3.0
    x = von_mises_fisher(mu, kappa, N, gen(2))
    assert torch.allclose(torch.linalg.vector_norm(x, dim=-1), torch.ones(N, dtype=x.dtype))
    w = x @ mu.double()
    # Analytic: E[mu . x] = coth(kappa) - 1/kappa; the azimuth around mu is uniform.
    expected = 1.0 / math.tanh(kappa) - 1.0 / kappa
    assert abs(float(w.mean()) - expected) < 4 * float(w.std()) / math.sqrt(N) + 1e-12
    perp = x - w[:, None] * mu.double()
    assert float(torch.linalg.vector_norm(perp.mean(0))) < 4 / math.sqrt(N)


def test_top_views_are_concentrated_and_in_plane_uniform() -> None:
    kappa = 20.0
    R = preferred_orientation_poses(N, gen(3), kind="top", concentration=kappa)
    assert_rotations(R)
    z = viewing_directions(R)[:, 2]
    # vMF around +z: P(angle < a) = (1 - exp(-kappa (1 - cos a))) / (1 - exp(-2 kappa)).
    a = math.radians(25.0)
    expected = (1 - math.exp(-kappa * (1 - math.cos(a)))) / (1 - math.exp(-2 * kappa))
    inside = float((z > math.cos(a)).double().mean())
    assert abs(inside - expected) < 0.01
    uniform_inside = (1 - math.cos(a)) / 2  # 0.047 for uniform poses
    assert inside > 15 * uniform_inside
    psi = torch.deg2rad(matrix_to_euler(R)[:, 2])
    assert abs(float(torch.cos(psi).mean())) < 4 / math.sqrt(N)
    assert abs(float(torch.sin(psi).mean())) < 4 / math.sqrt(N)


def test_top_side_mixture_weights() -> None:
    R = preferred_orientation_poses(N, gen(4), kind="top-side", concentration=100.0)
    d = viewing_directions(R)
    nearest = torch.stack([d[:, 2], d[:, 0], d[:, 1]], -1).argmax(-1)
    fractions = torch.bincount(nearest, minlength=3).double() / N
    assert torch.allclose(
        fractions, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), atol=0.015
    )


def test_custom_directions_and_reproducibility() -> None:
    direction = euler_to_matrix(torch.tensor([30.0, 60.0, 0.0], dtype=torch.float64))[2]
    R1 = preferred_orientation_poses(500, gen(5), directions=direction[None], concentration=1e4)
    R2 = preferred_orientation_poses(500, gen(5), directions=direction[None], concentration=1e4)
    assert torch.equal(R1, R2)
    cos = viewing_directions(R1) @ direction
    assert float(cos.min()) > math.cos(math.radians(3.0))
    assert not torch.equal(R1, preferred_orientation_poses(500, gen(6), directions=direction[None]))


def test_bad_kind() -> None:
    with pytest.raises(ValueError, match="top-side"):
        preferred_orientation_poses(3, gen(), kind="diagonal")
