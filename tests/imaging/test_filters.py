"""Low-pass and Gaussian filters against analytic results."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.imaging.fft import rfft_radial_freq
from cryopose.imaging.filters import gaussian_filter, lowpass


@pytest.mark.parametrize("ndim", [2, 3])
def test_lowpass_kills_power_beyond_cutoff_and_keeps_below(ndim: int) -> None:
    torch.manual_seed(0)
    n, angpix, res, edge = 32, 2.0, 8.0, 2.0
    x = torch.randn((2,) + (n,) * ndim, dtype=torch.float64)
    y = lowpass(x, angpix, res, soft_edge_px=edge, ndim=ndim)
    dims = tuple(range(-ndim, 0))
    fx, fy = torch.fft.rfftn(x, dim=dims), torch.fft.rfftn(y, dim=dims)
    k = rfft_radial_freq((n,) * ndim, angpix=angpix, dtype=torch.float64)
    half = edge / 2 / (n * angpix)
    beyond = k > 1 / res + half
    below = k < 1 / res - half
    assert fy[..., beyond].abs().max() < 1e-10 * fx.abs().max()
    assert torch.allclose(fy[..., below], fx[..., below], atol=1e-10)
    # In the edge the transfer is the raised cosine, one half at the cutoff itself.
    edge_zone = ~(beyond | below)
    ratio = (fy[..., edge_zone] / fx[..., edge_zone]).real
    t = (k[edge_zone] - (1 / res - half)) / (2 * half)
    assert torch.allclose(ratio, (0.5 + 0.5 * torch.cos(math.pi * t)).expand_as(ratio), atol=1e-9)


def test_gaussian_filter_widens_gaussian_analytically() -> None:
    n, s0, s = 64, 2.0, 3.0
    yy, xx = torch.meshgrid(
        torch.arange(n, dtype=torch.float64) - n // 2,
        torch.arange(n, dtype=torch.float64) - n // 2,
        indexing="ij",
    )

    def gauss(sig: float) -> torch.Tensor:
        return torch.exp(-(xx**2 + yy**2) / (2 * sig**2)) / (2 * math.pi * sig**2)

    out = gaussian_filter(gauss(s0), s)
    assert torch.allclose(out, gauss(math.hypot(s0, s)), atol=1e-8)


def test_gaussian_filter_3d_preserves_sum_and_matches_separable() -> None:
    torch.manual_seed(1)
    v = torch.randn(16, 16, 16, dtype=torch.float64)
    out = gaussian_filter(v, 1.5, ndim=3)
    assert float(out.sum()) == pytest.approx(float(v.sum()), abs=1e-9)
    # Separable: filtering each 2D slice then along z equals the 3D filter.
    k = torch.fft.fftfreq(16, dtype=torch.float64)
    gz = torch.exp(-2 * math.pi**2 * 1.5**2 * k**2)
    step = gaussian_filter(v, 1.5, ndim=2)
    step = torch.fft.ifft(torch.fft.fft(step, dim=0) * gz[:, None, None], dim=0).real
    assert torch.allclose(out, step, atol=1e-10)
