"""Sub-pixel image shifts by Fourier phase ramps, and RELION's origin sign.

A shift ``s = (sx, sy)`` in pixels moves image content towards ``+x`` (columns) and ``+y``
(rows): ``shifted(x, y) = image(x - sx, y - sy)``, with periodic boundaries.

RELION's ``rlnOriginXAngst/YAngst`` give the position of the particle centre *with the
opposite sign*: a particle image is its centred projection translated by ``-origin``, and
centring the image translates it by ``+origin`` (DESIGN.md; checked against
``relion_project`` in ``tests/imaging/test_projection.py``).

>>> import torch
>>> img = torch.zeros(1, 8, 8)
>>> img[0, 4, 4] = 1.0
>>> moved = shift_images(img, torch.tensor([[2.0, -1.0]]))
>>> [int(i) for i in divmod(int(moved.argmax()), 8)]  # row (y), column (x)
[3, 6]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cryopose.imaging.fft import rfft_freq_grid

__all__ = ["fourier_shift_rfft", "origin_to_image_shift", "phase_ramp_rfft", "shift_images"]


def origin_to_image_shift(origin_angst: torch.Tensor, angpix: float) -> torch.Tensor:
    """Shift in pixels that turns a centred projection into the particle image.

    Parameters
    ----------
    origin_angst
        ``(..., 2)`` (``rlnOriginXAngst``, ``rlnOriginYAngst``) in Angstrom.
    angpix
        Pixel size in Angstrom.

    Returns
    -------
    torch.Tensor
        ``(..., 2)`` ``(sx, sy)`` in pixels, equal to ``-origin / angpix`` (RELION's sign).
        Pass its negative to :func:`shift_images` to centre a particle image.
    """
    return -origin_angst / angpix


def phase_ramp_rfft(
    shifts_px: torch.Tensor,
    image_shape: Sequence[int],
    dtype: torch.dtype = torch.complex64,
) -> torch.Tensor:
    """Fourier factor ``exp(-2 pi i (kx sx + ky sy))`` that shifts content by ``(sx, sy)``.

    Parameters
    ----------
    shifts_px
        ``(..., 2)`` shifts (x, y) in pixels.
    image_shape
        Real-space ``(H, W)``.
    dtype
        Complex dtype of the result.

    Returns
    -------
    torch.Tensor
        ``(..., H, W // 2 + 1)`` phase factors in rfft layout (not fftshifted).
    """
    if shifts_px.shape[-1] != 2:
        raise ValueError(f"shifts must have shape (..., 2) (x, y), got {tuple(shifts_px.shape)}")
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    ky, kx = rfft_freq_grid(image_shape, device=shifts_px.device, dtype=real)
    s = shifts_px.to(real)
    phase = -2.0 * math.pi * (kx * s[..., 0, None, None] + ky * s[..., 1, None, None])
    return torch.polar(torch.ones_like(phase), phase).to(dtype)


def fourier_shift_rfft(
    f: torch.Tensor, shifts_px: torch.Tensor, image_shape: Sequence[int]
) -> torch.Tensor:
    """Shift images given as rffts (layout of :func:`cryopose.imaging.fft.rfftn_centred`).

    Parameters
    ----------
    f
        Complex ``(..., H, W // 2 + 1)``.
    shifts_px
        ``(..., 2)`` shifts (x, y) in pixels, broadcastable against ``f``'s batch shape.
    image_shape
        Real-space ``(H, W)`` (W's parity is not recoverable from ``f``).

    Returns
    -------
    torch.Tensor
        Complex ``(..., H, W // 2 + 1)``.
    """
    return f * phase_ramp_rfft(shifts_px, image_shape, dtype=f.dtype)


def shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Shift real images by sub-pixel amounts with periodic boundaries.

    Parameters
    ----------
    images
        Real ``(..., H, W)``.
    shifts_px
        ``(..., 2)`` shifts (x, y) in pixels; content moves towards +x, +y.

    Returns
    -------
    torch.Tensor
        Real ``(..., H, W)``. Integer shifts equal ``torch.roll``; sub-pixel shifts are exact
        for images band-limited below Nyquist.
    """
    h, w = images.shape[-2:]
    complex_dtype = torch.complex128 if images.dtype == torch.float64 else torch.complex64
    f = torch.fft.rfft2(images)
    f = f * phase_ramp_rfft(shifts_px, (h, w), dtype=complex_dtype)
    out: torch.Tensor = torch.fft.irfft2(f, s=(h, w))
    return out
