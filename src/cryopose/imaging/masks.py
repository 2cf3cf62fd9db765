"""Circular (2D) and spherical (3D) masks with a raised-cosine soft edge, centred at N // 2.

The value at distance ``r`` (pixels) from the centre is 1 for ``r <= radius``,
``0.5 + 0.5 cos(pi (r - radius) / soft_edge)`` for ``radius < r < radius + soft_edge`` and 0
beyond, as RELION's soft masks (``relion_mask_create --width_soft_edge``).

>>> m = circular_mask(8, 2.0)
>>> int(m.sum()), float(m[4, 4]), float(m[4, 7])
(13, 1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["circular_mask", "radial_distance", "soft_edge", "spherical_mask"]


def radial_distance(
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Distance in pixels of every element from the centre ``N // 2`` of each axis.

    Parameters
    ----------
    shape
        ``(H, W)`` or ``(D, H, W)``.

    Returns
    -------
    torch.Tensor
        Array of ``shape``.
    """
    axes = [torch.arange(n, device=device, dtype=dtype) - n // 2 for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum((g * g for g in grids), torch.zeros_like(grids[0])))


def soft_edge(r: torch.Tensor, radius: float, width: float) -> torch.Tensor:
    """Raised-cosine step: 1 for ``r <= radius``, 0 for ``r >= radius + width``.

    Parameters
    ----------
    r
        Distances (any shape and unit).
    radius
        Where the fall-off starts.
    width
        Length of the fall-off; 0 gives a hard edge (``r <= radius``).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``r``.
    """
    if width < 0:
        raise ValueError(f"soft edge width must be >= 0, got {width}")
    hard = (r <= radius).to(r.dtype)
    if width == 0:
        return hard
    t = ((r - radius) / width).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


def _shape(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,) * ndim
    shape = tuple(int(s) for s in size)
    if len(shape) != ndim:
        raise ValueError(f"expected an int or {ndim} sizes, got {shape}")
    return shape


def circular_mask(
    size: int | Sequence[int],
    radius_px: float,
    soft_edge_px: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """2D disc of ``radius_px`` around ``(H // 2, W // 2)``.

    Parameters
    ----------
    size
        Box size N or ``(H, W)``.
    radius_px
        Radius in pixels of the region where the mask is 1.
    soft_edge_px
        Width in pixels of the raised-cosine fall-off outside the radius.

    Returns
    -------
    torch.Tensor
        ``(H, W)`` mask in [0, 1].
    """
    r = radial_distance(_shape(size, 2), device=device, dtype=dtype)
    return soft_edge(r, radius_px, soft_edge_px)


def spherical_mask(
    size: int | Sequence[int],
    radius_px: float,
    soft_edge_px: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """3D ball of ``radius_px`` around ``(D // 2, H // 2, W // 2)``.

    Parameters
    ----------
    size
        Box size N or ``(D, H, W)``.
    radius_px
        Radius in pixels of the region where the mask is 1.
    soft_edge_px
        Width in pixels of the raised-cosine fall-off outside the radius.

    Returns
    -------
    torch.Tensor
        ``(D, H, W)`` mask in [0, 1].
    """
    r = radial_distance(_shape(size, 3), device=device, dtype=dtype)
    return soft_edge(r, radius_px, soft_edge_px)
