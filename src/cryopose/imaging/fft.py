"""Centred FFT helpers and rfft frequency grids.

cryopose puts the real-space origin of a box of size N at index ``N // 2`` (RELION, teamtomo).
The "centred" transforms below move that origin to index 0 before transforming
(``ifftshift``) and back after the inverse (``fftshift``), so a real, point-symmetric object
about ``N // 2`` has a real Fourier transform and phase ramps describe shifts from the centre.
This holds for even and odd N alike.

Fourier arrays are in the standard (not fftshifted) ``rfft`` layout unless said otherwise:
the last axis holds the non-negative frequencies ``0 .. N//2`` and the other axes the usual
``fftfreq`` order (DC at index 0).

>>> import torch
>>> x = torch.zeros(8, 8)
>>> x[4, 4] = 1.0  # a delta at the origin N // 2
>>> f = rfftn_centred(x, ndim=2)
>>> bool(torch.allclose(f, torch.ones(8, 5, dtype=torch.complex64)))
True
>>> bool(torch.allclose(irfftn_centred(f, (8, 8)), x))
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "fftshift_rfft",
    "ifftshift_rfft",
    "irfftn_centred",
    "rfft_freq_grid",
    "rfft_radial_freq",
    "rfft_shape",
    "rfftn_centred",
]


def _dims(ndim: int) -> tuple[int, ...]:
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
    return tuple(range(-ndim, 0))


def rfft_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the rfft of a real array of ``shape``: last axis ``N // 2 + 1``."""
    shape = tuple(int(s) for s in shape)
    return (*shape[:-1], shape[-1] // 2 + 1)


def rfftn_centred(x: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Real FFT of the last ``ndim`` axes with the real-space origin at index ``N // 2``.

    Parameters
    ----------
    x
        Real tensor ``(..., H, W)`` (``ndim=2``) or ``(..., D, H, W)`` (``ndim=3``).
    ndim
        Number of trailing axes to transform (1, 2 or 3).

    Returns
    -------
    torch.Tensor
        Complex ``(..., H, W // 2 + 1)`` (or 3D analogue), unnormalised forward transform
        (``norm="backward"``), standard rfft layout.
    """
    dims = _dims(ndim)
    out: torch.Tensor = torch.fft.rfftn(torch.fft.ifftshift(x, dim=dims), dim=dims)
    return out


def irfftn_centred(f: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`rfftn_centred`.

    Parameters
    ----------
    f
        Complex ``(..., H, W // 2 + 1)`` or ``(..., D, H, W // 2 + 1)`` in standard rfft layout.
    shape
        Real-space shape of the transformed axes, ``(H, W)`` or ``(D, H, W)``; needed because
        ``W`` even and odd give the same rfft width.

    Returns
    -------
    torch.Tensor
        Real ``(..., *shape)`` with the origin at ``N // 2``.
    """
    s = tuple(int(n) for n in shape)
    dims = _dims(len(s))
    out: torch.Tensor = torch.fft.fftshift(torch.fft.irfftn(f, s=s, dim=dims), dim=dims)
    return out


def fftshift_rfft(f: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Put DC at the centre of all but the last (half) axis of an rfft, e.g. for display."""
    out: torch.Tensor = torch.fft.fftshift(f, dim=_dims(ndim)[:-1])
    return out


def ifftshift_rfft(f: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Inverse of :func:`fftshift_rfft`."""
    out: torch.Tensor = torch.fft.ifftshift(f, dim=_dims(ndim)[:-1])
    return out


def rfft_freq_grid(
    shape: Sequence[int],
    angpix: float | None = None,
    fftshift: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Frequency coordinates of every rfft sample.

    Parameters
    ----------
    shape
        Real-space shape ``(H, W)`` or ``(D, H, W)``.
    angpix
        Pixel size in Angstrom. ``None`` gives cycles/pixel; otherwise 1/Angstrom.
    fftshift
        Whether the non-half axes are fftshifted (DC at index ``N // 2``).
    device, dtype
        Of the returned tensors.

    Returns
    -------
    tuple of torch.Tensor
        ``(ky, kx)`` for 2D or ``(kz, ky, kx)`` for 3D, each of the full rfft shape
        ``(H, W // 2 + 1)`` / ``(D, H, W // 2 + 1)``. ``kx`` runs along the last (image x)
        axis, ``ky`` along rows (image y), both increasing with the array index.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (H, W) or (D, H, W), got {shape}")
    scale = 1.0 if angpix is None else 1.0 / float(angpix)
    axes = []
    for n in shape[:-1]:
        k = torch.fft.fftfreq(n, device=device, dtype=dtype)
        axes.append(torch.fft.fftshift(k) if fftshift else k)
    axes.append(torch.fft.rfftfreq(shape[-1], device=device, dtype=dtype))
    grids = torch.meshgrid(*[a * scale for a in axes], indexing="ij")
    return tuple(grids)


def rfft_radial_freq(
    shape: Sequence[int],
    angpix: float | None = None,
    fftshift: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Modulus of the frequency of every rfft sample (cycles/pixel, or 1/A with ``angpix``).

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` or ``(D, H, W // 2 + 1)``.
    """
    grids = rfft_freq_grid(shape, angpix=angpix, fftshift=fftshift, device=device, dtype=dtype)
    return torch.sqrt(sum((g * g for g in grids), torch.zeros_like(grids[0])))
