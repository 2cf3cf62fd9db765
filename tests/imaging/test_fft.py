"""Centred FFT conventions and frequency grids against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.imaging.fft import (
    fftshift_rfft,
    ifftshift_rfft,
    irfftn_centred,
    rfft_freq_grid,
    rfft_radial_freq,
    rfftn_centred,
)


@pytest.mark.parametrize("shape", [(8, 8), (9, 9), (6, 7), (5, 6, 8)])
def test_delta_at_origin_has_flat_real_spectrum(shape: tuple[int, ...]) -> None:
    x = torch.zeros(shape, dtype=torch.float64)
    x[tuple(s // 2 for s in shape)] = 1.0
    f = rfftn_centred(x, ndim=len(shape))
    assert torch.allclose(f, torch.ones_like(f))
    assert torch.allclose(irfftn_centred(f, shape), x)


def test_freq_grids_match_numpy() -> None:
    ky, kx = rfft_freq_grid((6, 7), angpix=2.0, dtype=torch.float64)
    assert ky.shape == kx.shape == (6, 4)
    np.testing.assert_allclose(ky[:, 0].numpy(), np.fft.fftfreq(6, d=2.0))
    np.testing.assert_allclose(kx[0].numpy(), np.fft.rfftfreq(7, d=2.0))
    kz, ky3, kx3 = rfft_freq_grid((4, 6, 8), fftshift=True)
    np.testing.assert_allclose(kz[:, 0, 0].numpy(), np.fft.fftshift(np.fft.fftfreq(4)))
    r = rfft_radial_freq((4, 6, 8))
    assert torch.allclose(r, torch.fft.ifftshift(torch.sqrt(kz**2 + ky3**2 + kx3**2), dim=(0, 1)))


def test_fftshift_rfft_round_trip() -> None:
    f = torch.randn(3, 6, 4)
    g = fftshift_rfft(f)
    assert torch.equal(g[:, 3], f[:, 0])  # DC row moves to index N // 2
    assert torch.equal(ifftshift_rfft(g), f)
