"""Peak extraction, z-scores, SHREC angles and the TM-T / TM-F pick selections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from cryopose.simulate.tomogram import euler_zxz_to_matrix
from cryopose.tomo.peaks import (
    Candidates,
    filter_picks,
    find_peaks,
    matrix_to_shrec_angles,
    robust_zscore,
    top_n_per_class,
)


def _blob(shape: tuple[int, int, int], zyx: tuple[int, int, int], height: float) -> torch.Tensor:
    """Gaussian bump of ``height`` at ``zyx``, sigma 1.5 voxels (one local maximum)."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    r2 = (zz - zyx[0]) ** 2 + (yy - zyx[1]) ** 2 + (xx - zyx[2]) ** 2
    return height * torch.exp(-r2 / (2 * 1.5**2))


def test_find_peaks_exclusion_radius() -> None:
    shape = (20, 24, 28)
    # Strong at A; B is 4 voxels from A (suppressed by radius 5, kept by radius 3);
    # C far away; D weaker than the threshold.
    a, b, c, d = (10, 10, 10), (10, 10, 14), (5, 20, 22), (15, 4, 4)
    score = torch.maximum(_blob(shape, a, 5.0), _blob(shape, b, 4.0))
    score = torch.maximum(score, _blob(shape, c, 3.0))
    score = torch.maximum(score, _blob(shape, d, 1.0))
    zyx, values = find_peaks(score, n=10, min_distance=5.0, threshold=2.0)
    assert [tuple(p) for p in zyx.tolist()] == [a, c]
    torch.testing.assert_close(values, torch.tensor([5.0, 3.0]))
    zyx, _ = find_peaks(score, n=10, min_distance=3.0, threshold=2.0)
    assert [tuple(p) for p in zyx.tolist()] == [a, b, c]
    # Exactly at the radius is allowed (strictly closer clashes).
    zyx, _ = find_peaks(score, n=10, min_distance=4.0, threshold=2.0)
    assert [tuple(p) for p in zyx.tolist()] == [a, b, c]
    zyx, _ = find_peaks(score, n=2, min_distance=3.0)
    assert [tuple(p) for p in zyx.tolist()] == [a, b]
    zyx, _ = find_peaks(score, n=10, min_distance=3.0, border=6)
    assert [tuple(p) for p in zyx.tolist()] == [a, b]  # c lies 5 voxels from the y face
    assert find_peaks(score, n=0, min_distance=3.0)[0].shape == (0, 3)


def test_find_peaks_shoulder_is_not_a_peak() -> None:
    """A plateau edge next to a suppressed maximum is not a local maximum, so never picked."""
    score = torch.zeros(1, 1, 16)
    score[0, 0, :] = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1, 0.5, 0.25])
    zyx, values = find_peaks(score, n=5, min_distance=2.0)
    assert zyx[:, 2].tolist() == [7]
    assert values.tolist() == [7.0]


def test_robust_zscore_of_gaussian_noise_with_outliers() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = 3.0 + 2.0 * torch.randn((40, 50, 60), generator=gen)
    noise[:4] = 100.0  # 10 % outliers (particles)
    z = robust_zscore(noise)
    background = z[4:]
    # Reference: median m and MAD a of 0.9 N(0, 1) + 0.1 (point at +inf), in units of sigma:
    # 0.9 Phi(m) = 0.5 and 0.9 (Phi(m + a) - Phi(m - a)) = 0.5.
    m = norm.ppf(0.5 / 0.9)
    a = brentq(lambda t: 0.9 * (norm.cdf(m + t) - norm.cdf(m - t)) - 0.5, 0.1, 3.0)
    assert float(background.mean()) == pytest.approx(-m / (1.4826 * a), abs=0.02)
    assert float(background.std()) == pytest.approx(1.0 / (1.4826 * a), abs=0.02)
    clean = robust_zscore(noise[4:])
    assert float(clean.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(clean.std()) == pytest.approx(1.0, abs=0.02)


def test_shrec_angles_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    angles = torch.rand((200, 3), generator=gen, dtype=torch.float64)
    angles = angles * torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64)
    angles[:3, 1] = torch.tensor([0.0, 180.0, 90.0], dtype=torch.float64)  # gimbal lock too
    rot = euler_zxz_to_matrix(angles)
    back = matrix_to_shrec_angles(rot)
    torch.testing.assert_close(euler_zxz_to_matrix(back), rot, atol=1e-9, rtol=0)
    # Away from gimbal lock the angles themselves come back (modulo 360).
    diff = torch.remainder(back[3:] - angles[3:] + 180.0, 360.0) - 180.0
    assert float(diff.abs().max()) < 1e-7


def _cands(name: str, xyz: list[list[float]], scores: list[float], radius: float) -> Candidates:
    n = len(scores)
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
    return Candidates(
        name,
        torch.tensor(xyz, dtype=torch.float64).reshape(n, 3),
        eye,
        torch.tensor(scores, dtype=torch.float64),
        radius,
    )


def test_filter_picks_across_classes() -> None:
    big = _cands("4cr2", [[10, 10, 10], [40, 10, 10], [70, 10, 10]], [9.0, 6.0, 2.0], 15.0)
    # Small class: one peak 8 voxels from the strongest big one (clash: 8 < 0.5 (15 + 5)),
    # one 11 voxels from the second big one (no clash: 11 >= 10) but stronger than it.
    small = _cands("3qm1", [[18, 10, 10], [40, 21, 10]], [8.0, 7.0], 5.0)
    picks = filter_picks([big, small], threshold=3.0, overlap=0.5)
    assert picks.class_ids.tolist() == ["4cr2", "3qm1", "4cr2"]
    np.testing.assert_array_equal(picks.coords, [[10, 10, 10], [40, 21, 10], [40, 10, 10]])
    assert picks.scores is not None
    np.testing.assert_array_equal(picks.scores, [9.0, 7.0, 6.0])
    assert picks.angles is not None
    np.testing.assert_allclose(picks.angles, 0.0, atol=1e-12)
    # A larger overlap factor makes the second pair clash too (11 < 0.6 * 20 = 12).
    picks = filter_picks([big, small], threshold=3.0, overlap=0.6)
    assert picks.class_ids.tolist() == ["4cr2", "3qm1"]
    assert len(filter_picks([big, small], threshold=3.0, max_picks=1)) == 1
    assert len(filter_picks([big, small], threshold=10.0)) == 0


def test_top_n_per_class_keeps_overlaps() -> None:
    big = _cands("4cr2", [[10, 10, 10], [40, 10, 10], [70, 10, 10]], [9.0, 6.0, 2.0], 15.0)
    small = _cands("3qm1", [[10, 10, 10]], [8.0], 5.0)
    picks = top_n_per_class([big, small], 2)
    assert picks.class_ids.tolist() == ["4cr2", "4cr2", "3qm1"]
    np.testing.assert_array_equal(picks.coords[[0, 2]], [[10, 10, 10], [10, 10, 10]])
    picks = top_n_per_class([big, small], {"4cr2": 3})
    assert picks.class_ids.tolist() == ["4cr2"] * 3


@pytest.mark.parametrize("angle", [30.0, 90.0, 150.0])
def test_shrec_angles_of_pure_x_turn(angle: float) -> None:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rx = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    torch.testing.assert_close(
        matrix_to_shrec_angles(rx), torch.tensor([0.0, angle, 0.0], dtype=torch.float64)
    )
