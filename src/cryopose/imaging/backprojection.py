"""Single-axis tilt series: projection of a volume along tilted beams, weighted back-projection.

Geometry
--------
Volumes are ``(Z, Y, X)`` and tilt images ``(Y, X)``; the tilt axis is ``y``. The real-space
origin of each axis is index ``N // 2``. The image at tilt angle ``theta`` (degrees) is
RELION's projection at Euler angles ``(rot, tilt, psi) = (0, theta, 0)``::

    A = [[cos t, 0, -sin t], [0, 1, 0], [sin t, 0, cos t]]
    image(x', y) = integral V(A^T (x', y, s)) ds

so voxel ``(x, y, z)`` (relative to the centre) lands on detector column
``x' = x cos t - z sin t`` of row ``y``. Positive tilts bring the ``+z`` half of the volume
towards ``-x'``. Tests check this against :func:`cryopose.imaging.projection.project`, which
reproduces ``relion_project``.

Projector
---------
A ray-driven slab projector (Joseph's method): for ``|t| <= 45`` degrees the line integral is
a sum over the ``z`` planes, each sampled along ``x`` with linear interpolation at the point the
ray crosses it, times the path length per plane ``1 / |cos t|``; for steeper tilts the roles of
``x`` and ``z`` swap. Every voxel is visited, no interpolation happens along the major axis,
and the cost is ``O(Z Y X)`` per tilt with no resampled copy of the volume. This suits a slab
much wider than thick better than a Fourier-slice projector, whose padded 3D FFT would be
cubic in the widest edge. Rays leave the box through its sides: content outside the volume is
zero (subtract a constant background first, see :mod:`cryopose.simulate.tomogram`).

Weighted back-projection
------------------------
Each image row (along ``x'``, perpendicular to the tilt axis) is convolved with the discrete
Ram-Lak ramp of Kak & Slaney (1988, eq. 61: ``h[0] = 1/4``, ``h[n] = -1 / (pi n)^2`` for odd
``n``, 0 for even ``n``), applied by FFT with zero padding to ``2 X'`` so that rows do not
wrap around. Its DC is not zero, which avoids the offset a plain ``|k|`` filter leaves. The
filtered images are smeared back along their rays (pixel driven: linear interpolation on the
detector) and weighted by the angular spacing in radians, so that a full ``180`` degree series
inverts the projector (the filtered back-projection formula). With a limited range (a missing
wedge) the reconstruction of a point is elongated along ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["angular_weights", "backproject", "project_tilt_series", "ramp_filter", "wbp"]

# Bound the temporaries of one gather to about 64 M elements (256 MB float32).
_CHUNK_ELEMENTS = 1 << 26

Progress = Callable[[int], None]


def _as_angles(angles_deg: torch.Tensor | list[float], device: torch.device) -> torch.Tensor:
    """``(T,)`` float64 tilt angles in radians."""
    a = torch.as_tensor(angles_deg, dtype=torch.float64).reshape(-1)
    return torch.deg2rad(a).to(device)


def _linear_gather(
    data: torch.Tensor, pos: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return indices and weights of linear interpolation at positions ``pos`` along an axis.

    Positions outside ``[0, length - 1]`` get weight 0 on the missing neighbour (zero padding).
    Returns ``(i0, i1, w0, w1)`` with indices clamped into range; ``data`` only sets the dtype.
    """
    i0 = torch.floor(pos)
    frac = (pos - i0).to(data.dtype)
    i0 = i0.to(torch.int64)
    i1 = i0 + 1
    w0 = (1.0 - frac) * ((i0 >= 0) & (i0 < length)).to(data.dtype)
    w1 = frac * ((i1 >= 0) & (i1 < length)).to(data.dtype)
    return i0.clamp(0, length - 1), i1.clamp(0, length - 1), w0, w1


def _project_major(
    layout: torch.Tensor, minor_pos: torch.Tensor, weight: float, chunk: int
) -> torch.Tensor:
    """Sum ``layout`` ``(A, B, Y)`` over the major axis ``A`` at ``minor_pos`` ``(A, W)``.

    ``minor_pos[a, w]`` is the float index along ``B`` where the ray of detector column ``w``
    crosses plane ``a``. Returns ``(Y, W)`` times ``weight`` (path length per plane).
    """
    n_a, n_b, n_y = layout.shape
    width = minor_pos.shape[1]
    i0, i1, w0, w1 = _linear_gather(layout, minor_pos, n_b)
    flat = layout.reshape(n_a * n_b, n_y)
    out = torch.zeros(width, n_y, dtype=layout.dtype, device=layout.device)
    for start in range(0, n_a, chunk):
        sl = slice(start, min(n_a, start + chunk))
        base = (torch.arange(sl.start, sl.stop, device=layout.device) * n_b)[:, None]
        for idx, w in ((i0[sl] + base, w0[sl]), (i1[sl] + base, w1[sl])):
            vals = flat.index_select(0, idx.reshape(-1)).reshape(-1, width, n_y)
            out += (vals * w[:, :, None]).sum(0)
    return (out * weight).T.contiguous()


def project_tilt_series(
    volume: torch.Tensor,
    angles_deg: torch.Tensor | list[float],
    progress: Progress | None = None,
) -> torch.Tensor:
    """Line integrals of a volume along the beams of a single-axis (``y``) tilt series.

    Parameters
    ----------
    volume
        ``(Z, Y, X)`` real volume, values per voxel (e.g. volts).
    angles_deg
        ``(T,)`` tilt angles in degrees (any value); image ``i`` is RELION's projection at
        Euler ``(0, angles_deg[i], 0)`` (module docstring).
    progress
        Called with 1 after each tilt (e.g. to advance a progress bar).

    Returns
    -------
    torch.Tensor
        ``(T, Y, X)`` projections, same dtype and device as ``volume``, in units of
        value x voxel length (a sum along the beam, not a mean).
    """
    if volume.dim() != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    n_z, n_y, n_x = volume.shape
    dev = volume.device
    angles = _as_angles(angles_deg, dev)
    out = torch.empty(angles.shape[0], n_y, n_x, dtype=volume.dtype, device=dev)
    det = torch.arange(n_x, device=dev, dtype=torch.float64) - n_x // 2  # x' (detector)
    zc = torch.arange(n_z, device=dev, dtype=torch.float64) - n_z // 2
    xc = torch.arange(n_x, device=dev, dtype=torch.float64) - n_x // 2
    zxy: torch.Tensor | None = None  # (Z, X, Y) copy, made on first use
    xzy: torch.Tensor | None = None  # (X, Z, Y) copy
    for i, t in enumerate(angles.tolist()):
        c, s = math.cos(t), math.sin(t)
        if abs(c) >= abs(s):
            # Ray through detector x' crosses plane z at x = x' / cos t + z tan t.
            if zxy is None:
                zxy = volume.permute(0, 2, 1).contiguous()
            pos = det[None, :] / c + zc[:, None] * (s / c) + n_x // 2
            chunk = max(1, _CHUNK_ELEMENTS // (n_x * n_y))
            out[i] = _project_major(zxy, pos, 1.0 / abs(c), chunk)
        else:
            # ... and plane x at z = x cot t - x' / sin t.
            if xzy is None:
                xzy = volume.permute(2, 0, 1).contiguous()
            pos = xc[:, None] * (c / s) - det[None, :] / s + n_z // 2
            chunk = max(1, _CHUNK_ELEMENTS // (n_x * n_y))
            out[i] = _project_major(xzy, pos, 1.0 / abs(s), chunk)
        if progress is not None:
            progress(1)
    return out


def ramp_filter(
    width: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Frequency response of the discrete Ram-Lak ramp for rows of ``width`` pixels.

    Parameters
    ----------
    width
        Number of detector columns ``X'``.
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor
        ``(width + 1,)`` real filter on the ``rfft`` grid of length ``2 * width`` (rows are
        zero padded to twice their length before filtering). Close to ``|k|`` (cycles per
        pixel), with ``1 / 4`` minus the tail at DC instead of 0 (Kak & Slaney eq. 61).
    """
    n = 2 * width
    k = torch.arange(n, dtype=torch.float64)
    k = torch.minimum(k, n - k)  # |index| on the periodic grid
    h = torch.zeros(n, dtype=torch.float64)
    odd = k % 2 == 1
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    h[0] = 0.25
    filt: torch.Tensor = torch.fft.rfft(h).real
    return filt.to(dtype=dtype, device=device)


def angular_weights(angles_deg: torch.Tensor | list[float]) -> torch.Tensor:
    """Angular spacing (radians) that each tilt stands for in the back-projection integral.

    Parameters
    ----------
    angles_deg
        ``(T,)`` tilt angles in degrees, in any order.

    Returns
    -------
    torch.Tensor
        ``(T,)`` float64: half the distance to each sorted neighbour on each side; the end
        tilts count half a spacing on their outer side as well (a trapezoid rule that gives
        ``pi / T`` to each of ``T`` equally spaced tilts covering 180 degrees).
    """
    a = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float64).reshape(-1))
    if a.numel() == 1:
        return torch.full_like(a, math.pi)
    order = torch.argsort(a)
    s = a[order]
    gaps = s[1:] - s[:-1]
    left = torch.cat([gaps[:1], gaps])
    right = torch.cat([gaps, gaps[-1:]])
    w = torch.empty_like(a)
    w[order] = 0.5 * (left + right)
    return w


def backproject(
    images: torch.Tensor,
    angles_deg: torch.Tensor | list[float],
    thickness: int,
    weights: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Smear images back along their beams (pixel driven, linear interpolation on the detector).

    Parameters
    ----------
    images
        ``(T, Y, X)`` (filtered) tilt images.
    angles_deg
        ``(T,)`` tilt angles in degrees (module docstring for the geometry).
    thickness
        Number of ``z`` slices ``Z`` of the output.
    weights
        ``(T,)`` factor per tilt; default 1.
    progress
        Called with 1 after each tilt.

    Returns
    -------
    torch.Tensor
        ``(Z, Y, X)``: voxel ``(x, y, z)`` collects ``sum_i w_i image_i(y, x cos t_i - z sin
        t_i)``; detector positions outside the image contribute 0.
    """
    if images.dim() != 3:
        raise ValueError(f"images must be (T, Y, X), got shape {tuple(images.shape)}")
    n_t, n_y, n_x = images.shape
    dev = images.device
    angles = _as_angles(angles_deg, dev)
    if angles.shape[0] != n_t:
        raise ValueError(f"{angles.shape[0]} angles for {n_t} images")
    w_all = torch.ones(n_t, dtype=torch.float64) if weights is None else weights.reshape(-1)
    zc = torch.arange(thickness, device=dev, dtype=torch.float64) - thickness // 2
    xc = torch.arange(n_x, device=dev, dtype=torch.float64) - n_x // 2
    # Accumulate as (Y, Z, X): a gather along the detector axis of an image row then writes
    # contiguous memory; one permute at the end gives (Z, Y, X).
    out = torch.zeros(n_y, thickness, n_x, dtype=images.dtype, device=dev)
    rows = max(1, _CHUNK_ELEMENTS // max(1, thickness * n_x))
    for i, t in enumerate(angles.tolist()):
        pos = xc[None, :] * math.cos(t) - zc[:, None] * math.sin(t) + n_x // 2  # (Z, X)
        i0, i1, w0, w1 = _linear_gather(images, pos, n_x)
        w = float(w_all[i])
        w0, w1 = (w0 * w).reshape(-1), (w1 * w).reshape(-1)
        i0, i1 = i0.reshape(-1), i1.reshape(-1)
        for start in range(0, n_y, rows):
            img = images[i, start : start + rows]  # (y, X')
            acc = img.index_select(1, i0) * w0 + img.index_select(1, i1) * w1
            out[start : start + rows] += acc.reshape(-1, thickness, n_x)
        if progress is not None:
            progress(1)
    return out.permute(1, 0, 2).contiguous()


def wbp(
    images: torch.Tensor,
    angles_deg: torch.Tensor | list[float],
    thickness: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Weighted (ramp-filtered) back-projection of a single-axis tilt series.

    Parameters
    ----------
    images
        ``(T, Y, X)`` tilt images, line integrals as from :func:`project_tilt_series` (CTF
        correction, e.g. :func:`cryopose.imaging.ctf.phase_flip`, is up to the caller).
    angles_deg
        ``(T,)`` tilt angles in degrees.
    thickness
        Number of ``z`` slices of the reconstruction.
    progress
        Called with 1 after each tilt is back-projected.

    Returns
    -------
    torch.Tensor
        ``(Z, Y, X)`` reconstruction in the units of the projected volume (a full 180 degree
        series of a band-limited volume reconstructs it).
    """
    if images.dim() != 3:
        raise ValueError(f"images must be (T, Y, X), got shape {tuple(images.shape)}")
    n_x = images.shape[-1]
    filt = ramp_filter(n_x, dtype=images.dtype, device=images.device)
    f = torch.fft.rfft(images, n=2 * n_x, dim=-1) * filt
    filtered = torch.fft.irfft(f, n=2 * n_x, dim=-1)[..., :n_x].contiguous()
    return backproject(
        filtered, angles_deg, thickness, weights=angular_weights(angles_deg), progress=progress
    )
