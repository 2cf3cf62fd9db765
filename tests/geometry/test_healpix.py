"""HEALPix SO(3) grids, checked against healpy and brute force over the whole grid."""

from __future__ import annotations

import functools
import math
import time

import healpy
import numpy as np
import pytest
import torch

from cryopose.geometry.euler import euler_to_matrix_rad
from cryopose.geometry.healpix import (
    grid_neighbours,
    grid_resolution_deg,
    grid_size,
    nearest_grid_index,
    so3_healpix_angles,
    so3_healpix_grid,
    viewing_direction_pixel,
)


def random_rotations(n: int, seed: int) -> torch.Tensor:
    """Uniform random rotations (normalised Gaussian quaternions), float64."""
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    m = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, -1) for row in m], -2)


def geodesic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation angle of a^T b in radians, broadcasting over leading dimensions."""
    trace = (a * b).sum(dim=(-2, -1))
    return torch.arccos(((trace - 1) / 2).clamp(-1, 1))


def trace_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) trace(a_n^T b_m) as one matrix product (monotone in the geodesic distance)."""
    return a.reshape(-1, 9) @ b.reshape(-1, 9).T


def hard_rotations(order: int, seed: int) -> torch.Tensor:
    """Rotations whose viewing direction is at a pole or on pixel corners and edges.

    Half of them have psi exactly half-way between two grid psi values (ties in psi).
    """
    rng = np.random.default_rng(seed)
    nside = 2**order
    pix = rng.integers(0, 12 * nside**2, 60)
    edges = np.asarray(healpy.boundaries(nside, pix, step=2, nest=True))  # corners + midpoints
    v = edges.transpose(0, 2, 1).reshape(-1, 3)
    v = np.concatenate([v, v + rng.normal(0, 1e-9, v.shape)])
    tilt = np.arccos(np.clip(v[:, 2] / np.linalg.norm(v, axis=1), -1, 1))
    rot = np.arctan2(v[:, 1], v[:, 0])
    poles = np.array([0.0, 1e-9, 1e-4, math.pi, math.pi - 1e-9, math.pi - 1e-4])
    tilt = np.concatenate([tilt, np.repeat(poles, 20)])
    rot = np.concatenate([rot, rng.uniform(-math.pi, math.pi, 120)])
    n = len(tilt)
    step = 2 * math.pi / (6 * nside)
    psi = np.where(
        np.arange(n) % 2 == 0,
        (rng.integers(0, 6 * nside, n) + 0.5) * step,
        rng.uniform(-math.pi, math.pi, n),
    )
    return euler_to_matrix_rad(torch.from_numpy(np.stack([rot, tilt, psi], -1)))


@functools.cache
def brute_force(order: int, n_random: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rotations, brute-force min distance, brute-force argmin) over the whole grid."""
    R = torch.cat([random_rotations(n_random, seed=order), hard_rotations(order, seed=order)])
    G = so3_healpix_grid(order, dtype=torch.float64)
    best, arg = [], []
    for chunk in R.split(1024):
        value, index = trace_products(chunk, G).max(dim=1)
        best.append(value)
        arg.append(index)
    d = torch.arccos(((torch.cat(best) - 1) / 2).clamp(-1, 1))
    return R, d, torch.cat(arg)


@pytest.mark.parametrize(("order", "size"), [(0, 72), (1, 576), (2, 4608), (3, 36864), (4, 294912)])
def test_grid_size(order: int, size: int) -> None:
    assert grid_size(order) == size
    assert so3_healpix_angles(order).shape == (size, 3)
    if order <= 3:
        assert so3_healpix_grid(order).shape == (size, 3, 3)


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_grid_rotations_orthonormal_and_distinct(order: int) -> None:
    G = so3_healpix_grid(order, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(G @ G.transpose(-1, -2), eye.expand_as(G), atol=1e-12)
    assert torch.allclose(torch.linalg.det(G), torch.ones(len(G), dtype=torch.float64))
    keys = np.round(G.reshape(-1, 9).numpy(), 6)
    assert len(np.unique(keys, axis=0)) == grid_size(order)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_grid_min_separation_positive(order: int) -> None:
    G = so3_healpix_grid(order, dtype=torch.float64)
    trace = trace_products(G, G)
    trace.fill_diagonal_(-1.0)
    min_separation = torch.arccos(((trace.max() - 1) / 2).clamp(-1, 1)).item()
    psi_step = 2 * math.pi / (6 * 2**order)
    # Distinct, and no closer than 0.6 psi steps (the closest pairs sit near the poles).
    assert 0.6 * psi_step < min_separation <= psi_step + 1e-9


@pytest.mark.parametrize("order", [0, 2, 4])
def test_grid_layout_matches_healpy_nest(order: int) -> None:
    nside, npix, npsi = 2**order, 12 * 4**order, 6 * 2**order
    angles = so3_healpix_angles(order)
    theta, phi = healpy.pix2ang(nside, np.arange(npix), nest=True)
    idx = torch.arange(grid_size(order))
    pix, j = idx % npix, idx // npix
    assert torch.allclose(angles[:, 0], torch.from_numpy(phi)[pix])
    assert torch.allclose(angles[:, 1], torch.from_numpy(theta)[pix])
    assert torch.allclose(angles[:, 2], 2 * math.pi * j.double() / npsi)
    G = so3_healpix_grid(order, dtype=torch.float64)
    centres = torch.from_numpy(np.stack(healpy.pix2vec(nside, np.arange(npix), nest=True), -1))
    assert torch.allclose(G[:, 2, :], centres[pix], atol=1e-12)
    # Psi is RELION's in-plane angle: grid rotation (p, j) = Rz(psi_j) @ grid rotation (p, 0).
    psi = angles[:, 2]
    c, s, zero, one = psi.cos(), psi.sin(), torch.zeros_like(psi), torch.ones_like(psi)
    rz = torch.stack(
        [torch.stack(r, -1) for r in ([c, s, zero], [-s, c, zero], [zero, zero, one])], -2
    )
    assert torch.allclose(G, rz @ G[pix], atol=1e-12)


def test_angles_are_fresh_tensors() -> None:
    first = so3_healpix_angles(1)
    first.zero_()
    assert so3_healpix_angles(1).abs().sum() > 0
    grid = so3_healpix_grid(1)
    grid.zero_()
    assert so3_healpix_grid(1).abs().sum() > 0


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_viewing_direction_pixel_of_grid_is_its_pixel(order: int) -> None:
    G = so3_healpix_grid(order)
    npix = 12 * 4**order
    expected = torch.arange(grid_size(order)) % npix
    assert torch.equal(viewing_direction_pixel(G, 2**order), expected)


def test_viewing_direction_pixel_matches_healpy_ang2pix() -> None:
    R = random_rotations(1000, seed=7)
    tilt = torch.arccos(R[:, 2, 2].clamp(-1, 1))
    rot = torch.atan2(R[:, 2, 1], R[:, 2, 0])
    expected = healpy.ang2pix(8, tilt.numpy(), rot.numpy(), nest=True)
    got = viewing_direction_pixel(R.reshape(10, 100, 3, 3), 8)
    assert got.shape == (10, 100)
    assert np.array_equal(got.reshape(-1).numpy(), expected)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_coverage_within_resolution(order: int) -> None:
    _, d, _ = brute_force(order, 20000)
    assert math.degrees(d.max().item()) <= grid_resolution_deg(order)
    # The bound is not loose by more than 35 %.
    assert math.degrees(d.max().item()) >= grid_resolution_deg(order) / 1.35


def test_resolution_against_pixel_size_order_4() -> None:
    pixel_size = math.degrees(math.sqrt(4 * math.pi / 3072))
    assert pixel_size == pytest.approx(3.6645, abs=1e-4)
    # Half psi step (1.875 deg) combined with the max pixel radius (3.78 deg).
    assert grid_resolution_deg(4) == pytest.approx(4.2215, abs=1e-3)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_nearest_matches_brute_force(order: int) -> None:
    R, d, arg = brute_force(order, 20000)
    G = so3_healpix_grid(order, dtype=torch.float64)
    index = nearest_grid_index(R, order)
    d_index = geodesic(R, G[index])
    assert (d_index - d).abs().max() < 1e-6
    # Random rotations have no ties: same index as the argmin. The hard cases may tie.
    assert torch.equal(index[:20000], arg[:20000])


def test_nearest_matches_brute_force_order_4() -> None:
    R = torch.cat([random_rotations(300, seed=44), hard_rotations(4, seed=44)[::4]])
    G = so3_healpix_grid(4, dtype=torch.float64)
    index = nearest_grid_index(R, 4)
    best = torch.cat([trace_products(chunk, G).max(dim=1).values for chunk in R.split(128)])
    d = torch.arccos(((best - 1) / 2).clamp(-1, 1))
    assert (geodesic(R, G[index]) - d).abs().max() < 1e-6


@pytest.mark.parametrize("order", [0, 3, 4])
def test_nearest_of_grid_point_is_itself(order: int) -> None:
    G = so3_healpix_grid(order, dtype=torch.float64)
    idx = torch.arange(grid_size(order))[:: max(1, grid_size(order) // 20000)]
    assert torch.equal(nearest_grid_index(G[idx], order), idx)


def test_nearest_shape_dtype_device() -> None:
    R = random_rotations(24, seed=3).float().reshape(2, 3, 4, 3, 3)
    index = nearest_grid_index(R, 2)
    assert index.shape == (2, 3, 4)
    assert index.dtype == torch.int64
    assert index.device == R.device
    assert torch.equal(index.reshape(-1), nearest_grid_index(R.double().reshape(-1, 3, 3), 2))


def test_nearest_timing_order_4() -> None:
    R = random_rotations(10000, seed=11)
    nearest_grid_index(R, 4)  # build the cached tables first
    start = time.perf_counter()
    nearest_grid_index(R, 4)
    print(f"nearest_grid_index: 10,000 rotations, order 4: {time.perf_counter() - start:.3f} s")


@pytest.mark.parametrize("order", [1, 2, 3])
def test_neighbours_close_to_centre(order: int) -> None:
    G = so3_healpix_grid(order, dtype=torch.float64)
    idx = torch.arange(grid_size(order))
    neigh = grid_neighbours(idx, order)
    assert neigh.shape == (grid_size(order), 27)
    d = torch.rad2deg(geodesic(G[idx][:, None], G[neigh]))
    # Measured max: 1.93, 1.99, 2.03 (and 2.13 at order 4) x resolution.
    assert d.max() <= 2.25 * grid_resolution_deg(order)
    # Every neighbour set contains the 2 rotations nearest to the centre (its psi +- 1).
    assert (neigh == idx[:, None]).any(dim=1).all()


@pytest.mark.parametrize("order", [1, 2])
def test_neighbour_psi_is_best_aligned(order: int) -> None:
    npix, npsi = 12 * 4**order, 6 * 2**order
    G = so3_healpix_grid(order, dtype=torch.float64).reshape(npsi, npix, 3, 3)
    idx = torch.arange(0, grid_size(order), 7)
    neigh = grid_neighbours(idx, order)[:, 3:].reshape(len(idx), 8, 3)  # skip the centre row
    pix = neigh[:, :, 1] % npix
    # Brute force over every psi at the neighbour's direction.
    centre = so3_healpix_grid(order, dtype=torch.float64)[idx]
    d_all = geodesic(centre[:, None, None], G[:, pix].permute(1, 2, 0, 3, 4))  # (N, 8, npsi)
    d_mid = geodesic(centre[:, None], so3_healpix_grid(order, dtype=torch.float64)[neigh[..., 1]])
    padding = neigh[:, :, 1] == idx[:, None]
    assert ((d_mid - d_all.min(dim=-1).values).abs() < 1e-9)[~padding].all()
    # The 3 entries per direction are psi -1, 0, +1 (mod npsi) at the same pixel.
    j, p = neigh // npix, neigh % npix
    assert (
        (((j[..., 1] - j[..., 0]) % npsi == 1) & ((j[..., 2] - j[..., 1]) % npsi == 1)) | padding
    ).all()
    assert ((p == p[..., :1]).all(dim=-1) | padding).all()


def test_neighbours_missing_pixels_are_padded_with_index() -> None:
    order, npix = 2, 192
    raw = healpy.get_all_neighbours(4, np.arange(npix), nest=True).T
    pixels = np.nonzero((raw < 0).any(axis=1))[0]
    # The 3 pixels around each of the 8 vertices where only 3 base pixels meet.
    assert len(pixels) == 24
    idx = torch.from_numpy(pixels) + 5 * npix
    neigh = grid_neighbours(idx, order, include_self=False)
    assert neigh.shape == (24, 26)
    assert torch.equal((neigh == idx[:, None]).sum(dim=1), torch.full((24,), 3))
    expected = {int(p) for p in raw[pixels[0]] if p >= 0}
    real = neigh[0][neigh[0] != idx[0]]
    assert {int(i) % npix for i in real} == expected | {int(pixels[0])}


def test_neighbours_include_self() -> None:
    idx = torch.tensor([[0, 100], [575, 33]])
    with_self = grid_neighbours(idx, 1)
    without = grid_neighbours(idx, 1, include_self=False)
    assert with_self.shape == (2, 2, 27)
    assert without.shape == (2, 2, 26)
    assert torch.equal(with_self[..., 1], idx)
    assert torch.equal(without, torch.cat([with_self[..., :1], with_self[..., 2:]], dim=-1))
    # Psi wraps around: psi index 0 has npsi - 1 as its lower neighbour.
    assert int(with_self[0, 0, 0]) == (6 * 2 - 1) * 48 + 0


def test_bad_inputs_raise() -> None:
    R = random_rotations(3, seed=0)
    with pytest.raises(ValueError, match="order"):
        nearest_grid_index(R, -1)
    with pytest.raises(ValueError, match="order"):
        grid_size(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        nearest_grid_index(R[..., :2], 2)
    bad = R.clone()
    bad[1, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        nearest_grid_index(bad, 2)
    with pytest.raises(ValueError, match="nside"):
        viewing_direction_pixel(R, 12)
    with pytest.raises(ValueError, match=r"\[0, 576\)"):
        grid_neighbours(torch.tensor([576]), 1)
    with pytest.raises(ValueError, match="integer"):
        grid_neighbours(torch.tensor([1.0]), 1)
