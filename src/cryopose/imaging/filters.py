"""Fourier-space filters for images ``(..., H, W)`` and volumes ``(..., D, H, W)``.

``ndim`` says how many trailing axes are spatial (2 for images, 3 for volumes); filters act
as periodic convolutions, so the origin convention does not matter for them.

>>> import torch
>>> x = torch.randn(2, 32, 32)
>>> y = lowpass(x, angpix=2.0, resolution_angst=8.0)
>>> tuple(y.shape)
(2, 32, 32)
"""

from __future__ import annotations

import math

import torch

from cryopose.imaging.fft import rfft_radial_freq
from cryopose.imaging.masks import soft_edge

__all__ = ["apply_fourier_filter", "gaussian_filter", "lowpass", "lowpass_filter_rfft"]


def _spatial_shape(x: torch.Tensor, ndim: int) -> tuple[int, ...]:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {ndim}")
    if x.dim() < ndim:
        raise ValueError(f"expected at least {ndim} dimensions, got shape {tuple(x.shape)}")
    return tuple(x.shape[-ndim:])


def apply_fourier_filter(x: torch.Tensor, filt: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Multiply the rfft of ``x`` by a real filter and transform back.

    Parameters
    ----------
    x
        Real ``(..., H, W)`` (``ndim=2``) or ``(..., D, H, W)`` (``ndim=3``).
    filt
        Real filter in rfft layout (not fftshifted), broadcastable to the rfft of ``x``.
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        Real array of ``x``'s shape.
    """
    shape = _spatial_shape(x, ndim)
    dims = tuple(range(-ndim, 0))
    f = torch.fft.rfftn(x, dim=dims) * filt.to(x.dtype)
    out: torch.Tensor = torch.fft.irfftn(f, s=shape, dim=dims)
    return out


def lowpass_filter_rfft(
    shape: tuple[int, ...],
    angpix: float,
    resolution_angst: float,
    soft_edge_px: float = 2.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Raised-cosine low-pass filter on an rfft grid (RELION's ``lowPassFilterMap``).

    The filter is 1 below ``1 / resolution - edge / 2``, 0 above ``1 / resolution + edge / 2``
    and a raised cosine in between, where ``edge = soft_edge_px / (W * angpix)`` (1/A): the
    edge is ``soft_edge_px`` Fourier shells of the last axis wide, centred on the cutoff.

    Parameters
    ----------
    shape
        Real-space ``(H, W)`` or ``(D, H, W)``.
    angpix
        Pixel size in Angstrom.
    resolution_angst
        Cutoff resolution in Angstrom.
    soft_edge_px
        Width of the edge in Fourier pixels (shells); 0 for a hard cutoff (keep ``k <= cutoff``).

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` or ``(D, H, W // 2 + 1)`` filter in [0, 1].
    """
    if resolution_angst <= 0:
        raise ValueError(f"resolution must be positive, got {resolution_angst} A")
    k = rfft_radial_freq(shape, angpix=angpix, device=device, dtype=dtype)
    width = soft_edge_px / (shape[-1] * angpix)
    cutoff = 1.0 / resolution_angst
    return soft_edge(k, cutoff - width / 2.0, width)


def lowpass(
    x: torch.Tensor,
    angpix: float,
    resolution_angst: float,
    soft_edge_px: float = 2.0,
    ndim: int = 2,
) -> torch.Tensor:
    """Low-pass filter images or volumes to ``resolution_angst`` with a raised-cosine edge.

    Parameters
    ----------
    x
        Real ``(..., H, W)`` (``ndim=2``) or ``(..., D, H, W)`` (``ndim=3``).
    angpix
        Pixel size in Angstrom.
    resolution_angst
        Cutoff resolution in Angstrom; nothing beyond ``1/resolution + edge/2`` survives.
    soft_edge_px
        Edge width in Fourier shells, centred on the cutoff (see :func:`lowpass_filter_rfft`).
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        Filtered array of ``x``'s shape.
    """
    shape = _spatial_shape(x, ndim)
    filt = lowpass_filter_rfft(
        shape, angpix, resolution_angst, soft_edge_px, device=x.device, dtype=x.dtype
    )
    return apply_fourier_filter(x, filt, ndim)


def gaussian_filter(x: torch.Tensor, sigma_px: float, ndim: int = 2) -> torch.Tensor:
    """Convolve with a normalised Gaussian of standard deviation ``sigma_px`` (periodic).

    The Fourier transform of the kernel is ``exp(-2 pi^2 sigma^2 k^2)`` (k in cycles/pixel),
    so the sum of ``x`` is preserved.

    Parameters
    ----------
    x
        Real ``(..., H, W)`` (``ndim=2``) or ``(..., D, H, W)`` (``ndim=3``).
    sigma_px
        Standard deviation in pixels (>= 0).
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        Smoothed array of ``x``'s shape.
    """
    if sigma_px < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma_px}")
    shape = _spatial_shape(x, ndim)
    k = rfft_radial_freq(shape, device=x.device, dtype=x.dtype)
    filt = torch.exp(-2.0 * math.pi**2 * sigma_px**2 * k * k)
    return apply_fourier_filter(x, filt, ndim)
