"""Spherical harmonics, Wigner-D matrices and SO(3) grid evaluation against brute force."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from e3nn import o3

from cryopose.geometry import random_rotations, so3_healpix_grid
from cryopose.geometry.distance import geodesic_distance
from cryopose.models.so3 import (
    SO3Grid,
    flat_wigner,
    hemisphere_points,
    s2_healpix_points,
    so3_local_rotations,
    so3_size,
    spherical_harmonics,
    wigner_d,
)


@pytest.mark.parametrize("lmax", [0, 1, 2, 6, 8, 12])
def test_harmonics_and_wigner_d_equal_e3nn(lmax: int) -> None:
    """The models were first trained with e3nn 0.6's basis; cryopose computes the same basis
    without importing it. e3nn's Wigner-D comes from float32 tables (about 1e-5 off)."""
    gen = torch.Generator().manual_seed(lmax)
    u = torch.randn(2000, 3, generator=gen, dtype=torch.float64)
    ref = o3.spherical_harmonics(list(range(lmax + 1)), u, True, normalization="integral")
    assert torch.allclose(spherical_harmonics(u, lmax), ref, rtol=0, atol=1e-12)
    R = random_rotations(50, generator=gen, dtype=torch.float64)
    for ell, D in enumerate(wigner_d(R, lmax)):
        assert D.dtype == torch.float64
        assert torch.allclose(D, o3.Irrep(ell, 1).D_from_matrix(R), rtol=0, atol=2e-5)
    # float32 in, float32 out, still within float32 rounding of the float64 result.
    D32 = wigner_d(R.float(), lmax)[-1]
    assert D32.dtype == torch.float32
    assert torch.allclose(D32.double(), wigner_d(R, lmax)[-1], rtol=0, atol=1e-5)


def test_pose_commands_do_not_import_e3nn() -> None:
    """e3nn's import brings torch._dynamo (1.3 s at every start of a pose command)."""
    code = (
        "import sys, torch, cryopose.pose.pipeline, cryopose.models.so3;"
        "from cryopose.models.so3 import SO3Grid; SO3Grid(2, 4);"
        "print(sorted(m for m in ('e3nn', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_harmonics_are_orthonormal_on_the_sphere() -> None:
    # Equal-area HEALPix quadrature of order 5 (12288 points) integrates degree <= 8 products
    # to about 1e-3; the integral of Y_lm Y_l'm' is the identity.
    u = s2_healpix_points(5)
    Y = spherical_harmonics(u, 4)
    gram = Y.T @ Y * (4 * math.pi / len(u))
    assert torch.allclose(gram, torch.eye(25, dtype=gram.dtype), atol=2e-3)


def test_wigner_d_rotates_harmonics_and_is_a_representation() -> None:
    gen = torch.Generator().manual_seed(0)
    R = random_rotations(2, generator=gen, dtype=torch.float64)
    u = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    Y, Y_rot = spherical_harmonics(u, 5), spherical_harmonics(u @ R[0].T, 5)
    D0, D1, D01 = wigner_d(R[0], 5), wigner_d(R[1], 5), wigner_d(R[0] @ R[1], 5)
    for ell in range(6):
        s = slice(ell * ell, (ell + 1) ** 2)
        assert torch.allclose(Y_rot[:, s], Y[:, s] @ D0[ell].T, atol=1e-5)  # Y(R u) = D(R) Y(u)
        assert torch.allclose(D01[ell], D0[ell] @ D1[ell], atol=1e-5)
        eye = torch.eye(2 * ell + 1, dtype=torch.float64)
        assert torch.allclose(D0[ell] @ D0[ell].T, eye, atol=1e-5)
    assert flat_wigner(R, 5).shape == (2, so3_size(5))
    assert so3_size(5) == sum((2 * ell + 1) ** 2 for ell in range(6))


def test_grid_evaluation_matches_direct_wigner_sum() -> None:
    # Factorised evaluation (in-plane x pixel frame) against sum_mn H[m,n] D(R_k)[m,n] with
    # the Wigner matrices of every grid rotation computed directly.
    gen = torch.Generator().manual_seed(1)
    grid = SO3Grid(2, 4, dtype=torch.float64)
    H = torch.randn(3, so3_size(4), generator=gen, dtype=torch.float64)
    direct = H @ flat_wigner(so3_healpix_grid(2, dtype=torch.float64), 4).T
    assert torch.allclose(grid.to_grid(H), direct, atol=2e-4 * float(direct.abs().max()))


def test_grid_quadrature_inverts_evaluation() -> None:
    # Band-limited signals: from_grid(to_grid(H)) = H up to the equal-weight quadrature's
    # aliasing (HEALPix rings are not Gauss nodes); the mean of a constant is exact.
    gen = torch.Generator().manual_seed(2)
    grid = SO3Grid(3, 4, dtype=torch.float64)
    H = torch.randn(2, so3_size(4), generator=gen, dtype=torch.float64)
    back = grid.from_grid(grid.to_grid(H))
    assert float((back - H).norm() / H.norm()) < 0.01
    const = grid.from_grid(torch.full((grid.size,), 2.5, dtype=torch.float64))
    assert abs(float(const[0]) - 2.5) < 1e-6
    assert float(const[1:].abs().max()) < 0.01 * 2.5


def test_hemisphere_grid_is_fourfold_symmetric() -> None:
    points = hemisphere_points(3)
    k = 3
    assert len(points) == 6 * 4**k - 2 ** (k + 1)
    assert bool((points[:, 2] > 0).all())
    quarter = torch.tensor(
        [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    moved = points @ quarter.T
    nearest = (moved[:, None] - points[None]).abs().amax(dim=-1).min(dim=1).values
    assert float(nearest.max()) < 1e-12


def test_local_rotations_lie_within_the_radius() -> None:
    rot = so3_local_rotations(22.5, 3)
    assert torch.equal(rot[0], torch.eye(3, dtype=torch.float64))
    angles = torch.rad2deg(geodesic_distance(torch.eye(3, dtype=torch.float64), rot))
    assert float(angles.max()) <= 22.5
    # Haar volume of a 22.5 deg ball is (t - sin t) / pi of SO(3): about 117 of 36864 cells.
    t = math.radians(22.5)
    expected = (t - math.sin(t)) / math.pi * 36864
    assert 0.6 * expected < len(rot) < 1.4 * expected
