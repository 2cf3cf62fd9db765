"""Phase-ramp shifts: integer shifts are rolls, sub-pixel shifts match analytic signals."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.imaging.fft import irfftn_centred, rfftn_centred
from cryopose.imaging.shift import fourier_shift_rfft, origin_to_image_shift, shift_images


def band_limited(n: int, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Sum of a few periodic cosines with frequencies well below Nyquist, shifted analytically."""
    y, x = torch.meshgrid(
        torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij"
    )
    x = x - shift[0]
    y = y - shift[1]
    img = torch.zeros(n, n, dtype=torch.float64)
    for kx, ky, ph, amp in (
        (1, 2, 0.3, 1.0),
        (3, -1, 1.1, 0.5),
        (-2, 4, 2.0, 0.7),
        (5, 3, 0.0, 0.2),
    ):
        img += amp * torch.cos(2 * math.pi * (kx * x + ky * y) / n + ph)
    return img


@pytest.mark.parametrize("n", [32, 31])
def test_integer_shift_equals_roll(n: int) -> None:
    torch.manual_seed(0)
    img = torch.randn(3, n, n, dtype=torch.float64)
    shifts = torch.tensor([[2.0, -3.0], [0.0, 5.0], [-7.0, 1.0]], dtype=torch.float64)
    out = shift_images(img, shifts)
    for i in range(3):
        sx, sy = int(shifts[i, 0]), int(shifts[i, 1])
        assert torch.allclose(out[i], torch.roll(img[i], (sy, sx), dims=(-2, -1)), atol=1e-10)


@pytest.mark.parametrize("n", [32, 31])
def test_subpixel_shift_matches_analytic_and_round_trips(n: int) -> None:
    s = (1.37, -2.71)
    img = band_limited(n)[None]
    moved = shift_images(img, torch.tensor([s], dtype=torch.float64))
    assert torch.allclose(moved[0], band_limited(n, s), atol=1e-10)
    back = shift_images(moved, torch.tensor([[-s[0], -s[1]]], dtype=torch.float64))
    assert torch.allclose(back, img, atol=1e-10)


def test_fourier_shift_rfft_on_centred_transform() -> None:
    img = band_limited(30)
    f = fourier_shift_rfft(
        rfftn_centred(img), torch.tensor([0.5, 2.25], dtype=torch.float64), (30, 30)
    )
    assert torch.allclose(irfftn_centred(f, (30, 30)), band_limited(30, (0.5, 2.25)), atol=1e-10)


def test_origin_sign_is_relion() -> None:
    """Content sits at minus the origin: origin (+6 A, -3 A) at 1.5 A/px moves it by (-4, +2) px."""
    shift = origin_to_image_shift(torch.tensor([[6.0, -3.0]]), 1.5)
    assert torch.equal(shift, torch.tensor([[-4.0, 2.0]]))
    img = torch.zeros(1, 16, 16)
    img[0, 8, 8] = 1.0
    moved = shift_images(img, shift)
    assert divmod(int(moved.argmax()), 16) == (10, 4)  # (row y, column x)
