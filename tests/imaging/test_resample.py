"""Fourier cropping / padding against analytic resampling of band-limited images."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.imaging.resample import fourier_crop, fourier_pad, rescale, window_centred

WAVES = ((1, 2, 0.3, 1.0), (3, -1, 1.1, 0.5), (-2, 4, 2.0, 0.7), (0, 0, 0.0, 3.0))


def analytic(n_old: int, n_new: int) -> torch.Tensor:
    """Band-limited periodic image defined on an n_old box, sampled on an n_new box.

    New pixel i sits at old pixel coordinate n_old // 2 + (i - n_new // 2) * n_old / n_new.
    """
    c = torch.arange(n_new, dtype=torch.float64) - n_new // 2
    pos = c * n_old / n_new  # relative to the old centre
    y, x = torch.meshgrid(pos, pos, indexing="ij")
    img = torch.zeros(n_new, n_new, dtype=torch.float64)
    for kx, ky, ph, amp in WAVES:
        img += amp * torch.cos(2 * math.pi * (kx * x + ky * y) / n_old + ph)
    return img


@pytest.mark.parametrize(("n", "m"), [(64, 32), (64, 27), (45, 20), (45, 16)])
def test_fourier_crop_equals_analytic_downsampling(n: int, m: int) -> None:
    out = fourier_crop(analytic(n, n)[None], m)
    assert out.shape == (1, m, m)
    assert torch.allclose(out[0], analytic(n, m), atol=1e-10)


@pytest.mark.parametrize(("n", "m"), [(32, 64), (32, 45), (27, 64), (27, 40)])
def test_fourier_pad_equals_analytic_interpolation(n: int, m: int) -> None:
    img = analytic(n, n)
    out = fourier_pad(img, m)
    assert torch.allclose(out, analytic(n, m), atol=1e-10)
    # Padding then cropping back is the identity.
    assert torch.allclose(fourier_crop(out, n), img, atol=1e-10)


def test_even_nyquist_split_on_padding() -> None:
    """A Nyquist checkerboard on 8 px padded to 16 px is cos(pi x) sampled twice as finely."""
    x = torch.arange(8, dtype=torch.float64) - 4
    checker = torch.cos(math.pi * x)[None, :] * torch.ones(8, 1, dtype=torch.float64)
    out = fourier_pad(checker, 16)
    x2 = (torch.arange(16, dtype=torch.float64) - 8) / 2
    assert torch.allclose(out, torch.cos(math.pi * x2)[None, :].expand(16, 16), atol=1e-12)


def test_3d_crop_preserves_mean_and_matches_analytic() -> None:
    n, m = 24, 12
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = 2.0 + torch.cos(2 * math.pi * (x + 2 * y - z) / n + 0.4)
    out = fourier_crop(vol, m, ndim=3)
    c2 = (torch.arange(m, dtype=torch.float64) - m // 2) * n / m
    z2, y2, x2 = torch.meshgrid(c2, c2, c2, indexing="ij")
    assert torch.allclose(
        out, 2.0 + torch.cos(2 * math.pi * (x2 + 2 * y2 - z2) / n + 0.4), atol=1e-10
    )
    assert float(out.mean()) == pytest.approx(float(vol.mean()))


def test_rescale_box_sizes_and_window() -> None:
    img = analytic(64, 64)[None]
    out = rescale(img, 1.0, 2.0)
    assert out.shape == (1, 32, 32)
    assert torch.allclose(out[0], analytic(64, 32), atol=1e-10)
    # 64 * 1.0 / 1.5 = 42.67 -> 42 (even, like relion_image_handler --rescale_angpix)
    assert rescale(img, 1.0, 1.5).shape == (1, 42, 42)
    boxed = rescale(img, 1.0, 2.0, size_out=40)
    assert boxed.shape == (1, 40, 40)
    assert torch.equal(boxed[0, 4:36, 4:36], out[0]) and float(boxed[0, :4].abs().max()) == 0.0
    assert torch.equal(window_centred(boxed, 32), out)
