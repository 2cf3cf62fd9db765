"""The grid-cell slice cache of the candidate ranking (cryopose.pose._slice_cache)."""

from __future__ import annotations

import torch

from cryopose.geometry.euler import euler_to_matrix_rad
from cryopose.geometry.healpix import grid_size, so3_healpix_angles
from cryopose.imaging.projection import Projector
from cryopose.pose._slice_cache import GridSliceCache


def _projector() -> Projector:
    g = torch.Generator().manual_seed(3)
    return Projector(torch.randn(24, 24, 24, generator=g))


def _direct(
    projector: Projector, indices: torch.Tensor, order: int, box: int, kmax: float
) -> torch.Tensor:
    rot = euler_to_matrix_rad(so3_healpix_angles(order)[indices.reshape(-1)])
    out = projector.slices(rot, box=box, kmax=kmax)
    return out.reshape(*indices.shape, *out.shape[-2:])


def test_cached_slices_are_the_projected_ones_and_each_cell_is_projected_once() -> None:
    projector = _projector()
    cache = GridSliceCache(projector, box=16, kmax=0.2)
    first = torch.tensor([[5, 9, 5], [9, 100, 7]])
    got = cache.slices(first, torch.tensor([2, 2]))
    assert got is not None
    torch.testing.assert_close(got, _direct(projector, first, 2, 16, 0.2), rtol=0, atol=0)
    assert cache.projected == 4  # 5, 7, 9, 100
    second = torch.tensor([[7, 8, 100]])
    got = cache.slices(second, torch.tensor([2]))
    assert got is not None
    torch.testing.assert_close(got, _direct(projector, second, 2, 16, 0.2), rtol=0, atol=0)
    assert cache.projected == 5  # only 8 is new


def test_rows_of_different_grid_orders() -> None:
    projector = _projector()
    cache = GridSliceCache(projector, box=24, kmax=0.5)
    indices = torch.tensor([[3, grid_size(1) - 1], [500, 4]])
    got = cache.slices(indices, torch.tensor([1, 2]))
    assert got is not None
    torch.testing.assert_close(got[0], _direct(projector, indices[:1], 1, 24, 0.5)[0])
    torch.testing.assert_close(got[1], _direct(projector, indices[1:], 2, 24, 0.5)[0])


def test_a_grid_too_large_for_the_memory_cap_is_not_cached() -> None:
    cache = GridSliceCache(_projector(), box=16, kmax=0.2, max_bytes=1000)
    assert cache.slices(torch.tensor([[0, 1]]), torch.tensor([1])) is None
    assert cache.projected == 0
