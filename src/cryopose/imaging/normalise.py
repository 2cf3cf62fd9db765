"""Background normalisation of particle images (``relion_preprocess --norm``).

Each image is shifted and scaled so that the pixels *outside* a circle of ``radius_px``
around the centre ``N // 2`` (the background, free of particle density) have mean 0 and
standard deviation 1. Like RELION (``--bg_radius``), a pixel belongs to the background when
its distance from the centre is greater than the radius, and the standard deviation is the
population one (divide by the number of pixels).

>>> import torch
>>> x = 5.0 + 2.0 * torch.randn(3, 32, 32)
>>> y = normalise_background(x, 10.0)
>>> bg = circular_mask(32, 10.0) == 0
>>> bool(torch.allclose(y[:, bg].mean(-1), torch.zeros(3), atol=1e-5))
True
"""

from __future__ import annotations

import torch

from cryopose.imaging.masks import circular_mask

__all__ = ["background_stats", "normalise_background"]


def background_stats(images: torch.Tensor, radius_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation of the pixels outside the circle.

    Parameters
    ----------
    images
        ``(..., H, W)``.
    radius_px
        Background radius in pixels; pixels at distance > radius from ``N // 2`` count.

    Returns
    -------
    tuple of torch.Tensor
        ``(mean, std)``, each of the batch shape ``(...)``.
    """
    h, w = images.shape[-2:]
    bg = circular_mask((h, w), radius_px, device=images.device, dtype=images.dtype) == 0
    if not bool(bg.any()):
        raise ValueError(f"radius {radius_px} px leaves no background pixel in a {h}x{w} box")
    values = images[..., bg]
    mean = values.mean(-1)
    std = values.std(-1, correction=0)
    return mean, std


def normalise_background(
    images: torch.Tensor, radius_px: float, eps: float = 1e-12
) -> torch.Tensor:
    """Normalise images to background mean 0 and standard deviation 1.

    Parameters
    ----------
    images
        ``(..., H, W)``.
    radius_px
        Background radius in pixels (RELION's ``--bg_radius``).
    eps
        Floor for the standard deviation so that flat images do not divide by zero.

    Returns
    -------
    torch.Tensor
        ``(..., H, W)`` normalised images.
    """
    mean, std = background_stats(images, radius_px)
    return (images - mean[..., None, None]) / std.clamp_min(eps)[..., None, None]
