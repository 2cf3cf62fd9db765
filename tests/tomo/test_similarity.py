"""Class similarity at a tomogram's resolution, against analytic Gaussian overlaps."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.geometry.healpix import so3_healpix_grid
from cryopose.tomo.similarity import band_limit, class_similarity, class_similarity_table
from cryopose.tomo.templates import rotate_volumes

BOX = 24
Vec3 = tuple[float, float, float]


def _gaussian(sigmas: Vec3, centre: Vec3) -> torch.Tensor:
    """``(BOX,)*3`` anisotropic Gaussian, ``sigmas`` and ``centre`` in voxels ``(z, y, x)``."""
    z, y, x = torch.meshgrid(*[torch.arange(BOX, dtype=torch.float64)] * 3, indexing="ij")
    r2 = sum(((c - c0) / s) ** 2 for c, c0, s in zip((z, y, x), centre, sigmas, strict=True))
    return torch.exp(-0.5 * r2).to(torch.float32)


def test_two_round_blobs_give_the_analytic_overlap_wherever_they_sit() -> None:
    # <g1, g2> / (|g1| |g2|) = (2 s1 s2 / (s1^2 + s2^2))^(3/2) for concentric Gaussians.
    s1, s2 = 2.5, 3.5
    a = _gaussian((s1, s1, s1), (12.0, 12.0, 12.0))
    b = _gaussian((s2, s2, s2), (10.0, 13.0, 11.0))  # off centre: the shift search finds it
    expected = (2 * s1 * s2 / (s1**2 + s2**2)) ** 1.5  # 0.920
    assert class_similarity(a, b, angpix=10.0, order=0) == pytest.approx(expected, abs=2e-3)
    # Turning the narrow blob instead resamples it trilinearly, which widens it a little and
    # raises the overlap (measured 0.926): the bias the module docstring states.
    assert class_similarity(b, a, angpix=10.0, order=0) == pytest.approx(expected, abs=1e-2)


def test_a_rotated_copy_is_found_and_a_different_shape_is_not() -> None:
    rod = _gaussian((5.0, 2.0, 2.0), (12.0, 12.0, 12.0))
    disc = _gaussian((1.5, 4.0, 4.0), (12.0, 12.0, 12.0))
    on_grid = so3_healpix_grid(1, dtype=torch.float32)[137]
    turned = rotate_volumes(rod, on_grid.T[None])[0]  # the grid rotation turns it back
    assert class_similarity(rod, turned, angpix=10.0, order=1) > 0.99
    # A rod against a disc: at best the rod lies in the disc's plane, which pairs the axes
    # (5, 4), (2, 4), (2, 1.5) (Fiedler: det(A + R B R^T) is least with the variances paired
    # in the same order); measured 0.870, the turned disc slightly thickened by resampling.
    best = math.prod(math.sqrt(2 * u * v / (u * u + v * v)) for u, v in ((5, 4), (2, 4), (2, 1.5)))
    assert class_similarity(rod, disc, angpix=10.0, order=1) == pytest.approx(best, abs=1e-2)


def test_band_limit_removes_what_tells_two_shapes_apart() -> None:
    # Two rods of slightly different length differ in fine detail only.
    long_rod = _gaussian((4.0, 1.2, 1.2), (12.0, 12.0, 12.0))
    short_rod = _gaussian((3.0, 1.2, 1.2), (12.0, 12.0, 12.0))
    sharp = class_similarity(long_rod, short_rod, angpix=10.0, order=0, max_freq=0.05)
    blurred = class_similarity(long_rod, short_rod, angpix=10.0, order=0, max_freq=0.01)
    assert blurred > sharp
    flat = band_limit(long_rod, 10.0, 0.0)  # only the mean survives
    assert torch.allclose(flat, torch.full_like(flat, float(long_rod.mean())), atol=1e-6)


def test_table_puts_each_class_against_a_turned_copy_of_itself() -> None:
    rod = _gaussian((5.0, 2.0, 2.0), (12.0, 12.0, 12.0))
    ball = _gaussian((3.0, 3.0, 3.0), (12.0, 12.0, 12.0))
    lines: list[str] = []
    table = class_similarity_table({"rod": rod, "ball": ball}, 10.0, order=1, progress=lines.append)
    assert set(table) == {("rod", "rod"), ("rod", "ball"), ("ball", "ball")}
    assert len(lines) == 3 and lines[1].startswith("rod ball: ")
    # The ball is the same in every orientation; the rod turned off the grid loses a little.
    assert table[("ball", "ball")] > 0.999
    assert table[("rod", "ball")] < table[("rod", "rod")] < 1.0
    expected = ((2 * 5 * 3 / (25 + 9)) * (2 * 2 * 3 / (4 + 9)) ** 2) ** 0.5  # aligned axes
    assert table[("rod", "ball")] == pytest.approx(expected, abs=2e-3)


def test_rejects_a_volume_that_is_not_a_cube() -> None:
    with pytest.raises(ValueError, match="cubic"):
        class_similarity(torch.zeros(4, 4, 5), torch.zeros(4, 4, 4), angpix=10.0)
    with pytest.raises(ValueError, match="zero"):
        class_similarity(torch.zeros(8, 8, 8), torch.ones(8, 8, 8), angpix=10.0)
    assert math.isfinite(class_similarity(torch.ones(8, 8, 8), torch.ones(8, 8, 8), 10.0, 0))
