"""O(4) alignment / E_OR and map-frame alignment, against known transforms and projections."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry import (
    axis_angle_to_matrix,
    matrix_to_quaternion,
    quaternion_distance,
    random_rotations,
)
from cryopose.imaging.projection import project
from cryopose.recovery import align_o4, align_so3, e_or

F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def _random_o4(det: float, gen: torch.Generator) -> torch.Tensor:
    T = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64)).Q
    if torch.linalg.det(T) * det < 0:
        T = T @ torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64))
    return T


@pytest.mark.parametrize("det", [1.0, -1.0])
def test_align_o4_recovers_known_transform(det: float) -> None:
    gen = torch.Generator().manual_seed(3 if det > 0 else 4)
    q = matrix_to_quaternion(random_rotations(300, gen, dtype=torch.float64))
    T0 = _random_o4(det, gen)
    # q_pred = T0 q with an arbitrary sign per row (q ~ -q).
    signs = torch.where(torch.rand(300, generator=gen) < 0.5, -1.0, 1.0).to(q)
    q_pred = signs[:, None] * (q @ T0.T)
    T, err = align_o4(q, q_pred)
    assert math.degrees(err) < 1e-3
    assert float(torch.linalg.det(T)) == pytest.approx(det, abs=1e-9)
    # T undoes T0, up to the global sign.
    product = T @ T0
    sign = float(torch.sign(product[0, 0]))
    torch.testing.assert_close(sign * product, torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)


def test_align_o4_with_known_perturbation() -> None:
    # Every prediction is off by exactly theta: the true T gives mean error theta, so the
    # optimum is <= theta, and an independent per-point perturbation cannot be aligned away.
    gen = torch.Generator().manual_seed(5)
    n, theta = 500, math.radians(4.0)
    q = matrix_to_quaternion(random_rotations(n, gen, dtype=torch.float64))
    axes = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    delta = matrix_to_quaternion(axis_angle_to_matrix(theta * axes))
    w1, v1 = q[:, :1], q[:, 1:]
    w2, v2 = delta[:, :1], delta[:, 1:]
    q_off = torch.cat(
        [w1 * w2 - (v1 * v2).sum(-1, keepdim=True), w1 * v2 + w2 * v1 + torch.cross(v1, v2, -1)],
        dim=-1,
    )
    assert float((quaternion_distance(q, q_off) - theta).abs().max()) < 1e-9
    T0 = _random_o4(-1.0, gen)
    _, err = align_o4(q, q_off @ T0.T)
    assert 0.95 * theta < err <= theta + 1e-9
    assert e_or(q, q_off @ T0.T) == pytest.approx(math.degrees(err), rel=1e-9)


def test_e_or_of_unrelated_orientations_is_large() -> None:
    # Independent uniform orientations: no T can align them; E_OR stays far from 0
    # (the mean distance of uniform pairs is 126.5 deg; alignment can only lower it somewhat).
    gen = torch.Generator().manual_seed(6)
    q1 = matrix_to_quaternion(random_rotations(400, gen, dtype=torch.float64))
    q2 = matrix_to_quaternion(random_rotations(400, gen, dtype=torch.float64))
    assert e_or(q1, q2) > 90.0


def _blob_volume(centres: torch.Tensor, size: int = 32, sigma: float = 1.5) -> torch.Tensor:
    """Sum of Gaussians at (x, y, z) centres (voxels from index size // 2), as (z, y, x)."""
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    grid = torch.stack([x, y, z], dim=-1)
    sq = ((grid[..., None, :] - centres) ** 2).sum(-1)
    return torch.exp(-sq / (2 * sigma**2)).sum(-1)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    num = (a * b).sum(dim=(-2, -1))
    den = torch.linalg.matrix_norm(a) * torch.linalg.matrix_norm(b)
    return (num / den).tolist()  # type: ignore[no-any-return]


@pytest.mark.parametrize("mirror", [False, True])
def test_align_so3_removes_map_rotation_and_mirror(mirror: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    centres = torch.tensor(
        [[0.0, 0.0, 0.0], [6.0, 1.0, -2.0], [-3.0, 5.0, 4.0], [2.0, -6.0, 3.0], [-4.0, -2.0, -5.0]],
        dtype=torch.float64,
    )
    B = random_rotations(1, gen, dtype=torch.float64)[0]
    R_true = random_rotations(40, gen, dtype=torch.float64)
    # The other map: V'(x) = V(B^T x) (rotated by B), or V'(x) = V(F B^T x) (then mirrored).
    new_centres = centres @ B.T  # centres move to B c
    R_pred = R_true @ B.T
    if mirror:
        new_centres = new_centres @ F  # V(F x): centres move to F c
        R_pred = F @ R_pred @ F
    # Physical check through the RELION-verified projector: the other map at R_pred gives
    # the same images as the original map at R_true (the derivation in align.py), while the
    # other side (R_true @ B) does not. Correlation, not equality: the two projections
    # interpolate different rotations of the same object.
    images = project(_blob_volume(centres).float(), R_true[:4].float())
    other = _blob_volume(new_centres).float()
    assert min(_correlation(images, project(other, R_pred[:4].float()))) > 0.999
    wrong_side = R_true[:4] @ B if not mirror else F @ R_true[:4] @ B @ F
    assert min(_correlation(images, project(other, wrong_side.float()))) < 0.99
    # ... and alignment recovers B (and the mirror) from the poses alone.
    G, flip, err = align_so3(R_true, R_pred)
    assert flip is mirror
    assert err < 1e-6
    torch.testing.assert_close(G, B, atol=1e-9, rtol=0)
    if mirror:
        _, flip_off, err_off = align_so3(R_true, R_pred, allow_reflection=False)
        assert flip_off is False
        assert err_off > 20.0


def test_align_so3_with_noise_beats_the_truth_transform_only_slightly() -> None:
    gen = torch.Generator().manual_seed(8)
    n = 300
    R_true = random_rotations(n, gen, dtype=torch.float64)
    B = random_rotations(1, gen, dtype=torch.float64)[0]
    axes = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    noise = axis_angle_to_matrix(math.radians(3.0) * axes)
    R_pred = noise @ R_true @ B.T
    G, flip, err = align_so3(R_true, R_pred)
    # Every pose is exactly 3 deg off under G = B: the optimum is at most 3 deg, near B.
    assert flip is False
    assert 2.8 < err <= 3.0 + 1e-9
    assert float(torch.linalg.matrix_norm(G - B)) < math.radians(1.0)


def test_alignment_input_errors() -> None:
    q = torch.randn(10, 4)
    with pytest.raises(InputError, match="expected two"):
        align_o4(q, q[:, :3])
    with pytest.raises(InputError, match="at least 4"):
        align_o4(q[:3], q[:3])
    with pytest.raises(InputError, match="expected two"):
        align_so3(torch.eye(3)[None], torch.eye(3)[None].expand(2, 3, 3))
