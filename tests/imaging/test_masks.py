"""Masks: radii and raised-cosine edges against analytic values."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.imaging.masks import circular_mask, spherical_mask


@pytest.mark.parametrize("n", [32, 33])
def test_hard_circle_counts_lattice_points(n: int) -> None:
    r = 9.5
    m = circular_mask(n, r)
    brute = sum(
        1 for y in range(n) for x in range(n) if (x - n // 2) ** 2 + (y - n // 2) ** 2 <= r * r
    )
    assert int(m.sum()) == brute
    assert m[n // 2, n // 2] == 1 and set(m.unique().tolist()) == {0.0, 1.0}


def test_soft_edge_values_are_raised_cosine() -> None:
    m = circular_mask(64, 10.0, soft_edge_px=6.0, dtype=torch.float64)
    row = m[32, 32:]  # distance = column offset along +x
    for d in range(32):
        if d <= 10:
            expected = 1.0
        elif d >= 16:
            expected = 0.0
        else:
            expected = 0.5 + 0.5 * math.cos(math.pi * (d - 10) / 6)
        assert row[d].item() == pytest.approx(expected, abs=1e-12)
    assert m[32, 32 + 13].item() == pytest.approx(0.5)


def test_sphere_volume_and_symmetry() -> None:
    m = spherical_mask(48, 15.0, soft_edge_px=4.0, dtype=torch.float64)
    assert m.shape == (48, 48, 48)
    # Hard part plus the integral of the cosine shell, within lattice error.
    inner = 4 / 3 * math.pi * 15.0**3
    shell = sum(
        4 * math.pi * (15.0 + t) ** 2 * (0.5 + 0.5 * math.cos(math.pi * t / 4.0)) * 0.001
        for t in (i * 0.001 for i in range(4000))
    )
    assert float(m.sum()) == pytest.approx(inner + shell, rel=5e-3)
    # Centre at N // 2: symmetric under negation about index 24.
    assert torch.equal(m[1:, 1:, 1:], m[1:, 1:, 1:].flip(0, 1, 2))
