"""Change the sampling of images and volumes by cropping or padding their Fourier transform.

Fourier cropping from N to M < N pixels keeps the frequencies a box of M pixels can hold
(downsampling, pixel size times N / M); Fourier padding to M > N adds zero frequencies
(interpolation, pixel size times N / M). Intensities are scaled by ``(M / N) ** ndim`` so that
the **mean is preserved**: a smooth image keeps its values, only the sampling changes. The
origin ``N // 2`` maps to ``M // 2``, so new pixel ``i`` sits at old pixel coordinate
``N // 2 + (i - M // 2) * N / M``.

When padding an even box, the Nyquist component is split equally between the +N/2 and
-N/2 frequencies of the larger grid, so interpolation of a band-limited image is exact.
When cropping to an even box, the new Nyquist frequencies take the old values at -M/2
(and +M/2 on the half axis), as RELION's ``windowFourierTransform`` does.

>>> import torch
>>> x = torch.full((1, 16, 16), 3.0)
>>> y = fourier_crop(x, 8)
>>> tuple(y.shape), round(float(y.mean()), 5)
((1, 8, 8), 3.0)
"""

from __future__ import annotations

import torch

from cryopose.imaging.fft import irfftn_centred, rfftn_centred

__all__ = [
    "fourier_crop",
    "fourier_pad",
    "fourier_resize",
    "rescale",
    "resize_rfft",
    "window_centred",
]


def _freq_index(f: torch.Tensor, n: int) -> torch.Tensor:
    return torch.remainder(f, n)


def _resize_full_axis(f: torch.Tensor, axis: int, n_old: int, n_new: int) -> torch.Tensor:
    k = min(n_old, n_new)
    freqs = torch.arange(-(k // 2), (k + 1) // 2, device=f.device)  # integer frequencies kept
    shape = list(f.shape)
    shape[axis] = n_new
    out = torch.zeros(shape, dtype=f.dtype, device=f.device)
    src = f.index_select(axis, _freq_index(freqs, n_old))
    out.index_copy_(axis, _freq_index(freqs, n_new), src)
    if n_new > n_old and n_old % 2 == 0:
        # The old Nyquist value stood for both +N/2 and -N/2: share it between the two.
        nyq = f.select(axis, n_old // 2) / 2.0
        out.select(axis, n_new - n_old // 2).copy_(nyq)
        out.select(axis, n_old // 2).copy_(nyq)
    return out


def _resize_half_axis(f: torch.Tensor, n_old: int, n_new: int) -> torch.Tensor:
    w_new = n_new // 2 + 1
    keep = min(n_old, n_new) // 2 + 1
    shape = list(f.shape)
    shape[-1] = w_new
    out = torch.zeros(shape, dtype=f.dtype, device=f.device)
    out[..., :keep] = f[..., :keep]
    if n_new > n_old and n_old % 2 == 0:
        # Column N/2 becomes an ordinary frequency whose Hermitian partner is implied.
        out[..., n_old // 2] = out[..., n_old // 2] / 2.0
    return out


def _shape_of(x: torch.Tensor, ndim: int) -> tuple[int, ...]:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {ndim}")
    if x.dim() < ndim:
        raise ValueError(f"expected at least {ndim} dimensions, got shape {tuple(x.shape)}")
    return tuple(x.shape[-ndim:])


def resize_rfft(
    f: torch.Tensor, old_shape: tuple[int, ...], new_shape: tuple[int, ...]
) -> torch.Tensor:
    """Crop or zero-pad an rfft (standard layout) to the rfft of another box, unscaled.

    Parameters
    ----------
    f
        Complex ``(..., *old_shape[:-1], old_shape[-1] // 2 + 1)`` from
        :func:`cryopose.imaging.fft.rfftn_centred` (any number of spatial axes).
    old_shape, new_shape
        Real-space shapes of the spatial axes before and after.

    Returns
    -------
    torch.Tensor
        Complex ``(..., *new_shape[:-1], new_shape[-1] // 2 + 1)``: the frequencies both boxes
        hold are copied (a Nyquist plane shared between the two halves when padding), the rest
        is zero. Values are not rescaled (:func:`fourier_resize` multiplies by the size ratio).
    """
    ndim = len(old_shape)
    if len(new_shape) != ndim:
        raise ValueError(f"shapes {old_shape} and {new_shape} differ in dimensions")
    for i in range(ndim - 1):
        f = _resize_full_axis(f, i - ndim, old_shape[i], new_shape[i])
    return _resize_half_axis(f, old_shape[-1], new_shape[-1])


def fourier_resize(x: torch.Tensor, new_size: int | tuple[int, ...], ndim: int = 2) -> torch.Tensor:
    """Crop or pad the centred Fourier transform of ``x`` to a new box size.

    Parameters
    ----------
    x
        Real ``(..., H, W)`` (``ndim=2``) or ``(..., D, H, W)`` (``ndim=3``).
    new_size
        New box size (same for every axis) or one size per spatial axis.
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        Real ``(..., *new_shape)``, mean preserved.
    """
    old = _shape_of(x, ndim)
    new = (new_size,) * ndim if isinstance(new_size, int) else tuple(new_size)
    if len(new) != ndim or min(new) < 1:
        raise ValueError(f"new size {new_size} does not give {ndim} positive sizes")
    f = resize_rfft(rfftn_centred(x, ndim=ndim), old, new)
    scale = 1.0
    for n_old, n_new in zip(old, new, strict=True):
        scale *= n_new / n_old
    return irfftn_centred(f * scale, new)


def fourier_crop(x: torch.Tensor, new_size: int, ndim: int = 2) -> torch.Tensor:
    """Downsample by Fourier cropping to ``new_size`` (<= current size), mean preserved.

    Parameters
    ----------
    x
        Real ``(..., N, N)`` or ``(..., N, N, N)``.
    new_size
        New box size M <= N; the pixel size grows by N / M.
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        Real ``(..., M, M)`` or ``(..., M, M, M)``.
    """
    if new_size > min(_shape_of(x, ndim)):
        raise ValueError(f"cannot crop {tuple(x.shape[-ndim:])} to a larger size {new_size}")
    return fourier_resize(x, new_size, ndim)


def fourier_pad(x: torch.Tensor, new_size: int, ndim: int = 2) -> torch.Tensor:
    """Upsample by zero-padding the Fourier transform to ``new_size`` (>= current size).

    Parameters
    ----------
    x
        Real ``(..., N, N)`` or ``(..., N, N, N)``.
    new_size
        New box size M >= N; the pixel size shrinks by N / M.
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        Real ``(..., M, M)`` or ``(..., M, M, M)``, mean preserved.
    """
    if new_size < max(_shape_of(x, ndim)):
        raise ValueError(f"cannot pad {tuple(x.shape[-ndim:])} to a smaller size {new_size}")
    return fourier_resize(x, new_size, ndim)


def window_centred(x: torch.Tensor, new_size: int, ndim: int = 2) -> torch.Tensor:
    """Crop or zero-pad in real space, keeping the origin ``N // 2`` at ``M // 2``.

    Parameters
    ----------
    x
        Real ``(..., N, ..., N)`` with ``ndim`` spatial axes.
    new_size
        New box size M.
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        ``(..., M, ..., M)``.
    """
    shape = _shape_of(x, ndim)
    out = x
    for i, n in enumerate(shape):
        axis = x.dim() - ndim + i
        if new_size <= n:
            start = n // 2 - new_size // 2
            out = out.narrow(axis, start, new_size)
        else:
            before = new_size // 2 - n // 2
            pad_shape = list(out.shape)
            pad_shape[axis] = new_size
            padded = torch.zeros(pad_shape, dtype=out.dtype, device=out.device)
            padded.narrow(axis, before, n).copy_(out)
            out = padded
    return out


def rescale(
    x: torch.Tensor,
    angpix_in: float,
    angpix_out: float,
    size_out: int | None = None,
    ndim: int = 2,
) -> torch.Tensor:
    """Change the pixel size by Fourier cropping/padding, then optionally window the box.

    The Fourier box size is ``M = round(N * angpix_in / angpix_out)``, made even when N is
    even (as ``relion_image_handler --rescale_angpix``), so the pixel size reached is
    ``angpix_in * N / M``, which can differ slightly from ``angpix_out``.

    Parameters
    ----------
    x
        Real ``(..., N, N)`` (``ndim=2``) or ``(..., N, N, N)`` (``ndim=3``), cubic.
    angpix_in, angpix_out
        Pixel sizes in Angstrom before and after.
    size_out
        Final box size, reached by centred real-space cropping or zero-padding; defaults to M.
    ndim
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        Real ``(..., S, S)`` or ``(..., S, S, S)`` with ``S = size_out or M``, mean of the
        resampled box preserved.
    """
    shape = _shape_of(x, ndim)
    if len(set(shape)) != 1:
        raise ValueError(f"rescale needs a square/cubic box, got {shape}")
    if angpix_in <= 0 or angpix_out <= 0:
        raise ValueError(f"pixel sizes must be positive, got {angpix_in} and {angpix_out}")
    n = shape[0]
    m = round(n * angpix_in / angpix_out)
    if n % 2 == 0 and m % 2 == 1:
        m += 1 if n * angpix_in / angpix_out > m else -1
    m = max(m, 1)
    y = fourier_resize(x, m, ndim)
    if size_out is not None and size_out != m:
        y = window_centred(y, size_out, ndim)
    return y
