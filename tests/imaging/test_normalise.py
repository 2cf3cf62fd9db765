"""Background normalisation against a numpy brute-force computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.imaging.normalise import background_stats, normalise_background


@pytest.mark.parametrize("n", [40, 41])
def test_background_mean_zero_std_one(n: int) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.normal(3.0, 2.5, (4, n, n))
    imgs[:, n // 2 - 5 : n // 2 + 5, n // 2 - 5 : n // 2 + 5] += 50.0  # particle inside
    radius = 12.0
    yy, xx = np.mgrid[:n, :n] - n // 2
    bg = xx**2 + yy**2 > radius**2
    expected = (imgs - imgs[:, bg].mean(1)[:, None, None]) / imgs[:, bg].std(1)[:, None, None]
    out = normalise_background(torch.from_numpy(imgs), radius).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-10)
    np.testing.assert_allclose(out[:, bg].mean(1), 0.0, atol=1e-10)
    np.testing.assert_allclose(out[:, bg].std(1), 1.0, atol=1e-10)
    mean, std = background_stats(torch.from_numpy(imgs), radius)
    np.testing.assert_allclose(mean.numpy(), imgs[:, bg].mean(1))
    np.testing.assert_allclose(std.numpy(), imgs[:, bg].std(1))


def test_radius_without_background_is_rejected() -> None:
    with pytest.raises(ValueError, match="no background"):
        normalise_background(torch.zeros(1, 8, 8), 100.0)
