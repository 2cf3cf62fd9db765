"""Siamese network that estimates the orientation distance between two projections.

Step (i) of distance learning (Banjac, Donati, Defferrard): one encoder ``f`` maps a
projection to a feature vector, and the distance between two projections is a function of
the angle between their features,

    d_hat(p_i, p_j) = pi * (1 - cos(f(p_i), f(p_j))) / 2   in [0, pi],

trained to regress ``d_q(q_i, q_j) = 2 acos |<q_i, q_j>|``. The two branches share every
weight (they are one module applied twice), so ``d_hat`` is symmetric and ``d_hat(p, p) = 0``.

**Why ``pi (1 - cos) / 2`` and not ``acos(cos)``.** Both are monotone maps of the cosine onto
``[0, pi]``. The derivative of ``acos`` is infinite at ``cos = +-1``, exactly where the
pairs at distance 0 and pi put the features, so regression on small distances (the ones that
matter most for recovery) would see exploding gradients. The affine map has a constant
derivative ``-pi / 2``, needs no clamping, and still spans the whole target range.

**Encoder.** Fully convolutional: blocks of two 3x3 convolutions with GroupNorm (independent
of the batch, so a pair gets the same features whatever else is in the batch) and ReLU,
2x average pooling between blocks, then a 1x1 convolution to ``features`` channels and a
global average over the image. Convolutions commute with shifts and the global average
discards position, so the features are invariant to shifts up to the pooling grid, and any
image size is accepted (the network is trained and used at one pixel size, though). The last
layer is linear: features of either sign make cosines in ``[-1, 1]`` reachable.

Inputs are ``(B, 1, H, W)`` images, normalised per image by :func:`standardise` (mean 0,
standard deviation 1 over the image) so the distance does not depend on intensity scale.

>>> import torch
>>> net = SiameseDistance(SiameseConfig(widths=(4, 8), features=8))
>>> a, b = torch.randn(3, 1, 24, 24), torch.randn(3, 1, 24, 24)
>>> d = net(a, b)
>>> d.shape, bool((d >= 0).all() and (d <= torch.pi).all())
(torch.Size([3]), True)
>>> bool(torch.allclose(net(a, a), torch.zeros(3), atol=1e-5))
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cryopose.errors import InputError

__all__ = ["SiameseConfig", "SiameseDistance", "feature_distance", "standardise"]


@dataclass(frozen=True)
class SiameseConfig:
    """Architecture of :class:`SiameseDistance` (saved with every checkpoint).

    Attributes
    ----------
    widths
        Channels of each convolution block; one 2x average pooling between consecutive blocks.
    features
        Length of the feature vector (channels of the final 1x1 convolution).
    groups
        GroupNorm groups (``min(groups, width)`` per block, and dividing the width).
    """

    widths: tuple[int, ...] = (8, 16, 32, 64)
    features: int = 64
    groups: int = 8

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {"widths": list(self.widths), "features": self.features, "groups": self.groups}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SiameseConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(None, f"unknown network settings {unknown}", "config network")
        kw = dict(values)
        if "widths" in kw:
            kw["widths"] = tuple(int(w) for w in kw["widths"])
        return cls(**kw)


def standardise(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise every image to mean 0 and standard deviation 1 over its pixels.

    Parameters
    ----------
    images
        ``(..., H, W)`` real images.
    eps
        Floor of the standard deviation (a flat image stays finite).

    Returns
    -------
    torch.Tensor
        ``(..., H, W)``, same dtype.
    """
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True, correction=0)
    return (images - mean) / std.clamp_min(eps)


def feature_distance(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """``pi * (1 - cos(fa, fb)) / 2``: distance in radians between feature vectors.

    Parameters
    ----------
    fa, fb
        ``(..., F)`` feature vectors (any norm; leading dims broadcast).

    Returns
    -------
    torch.Tensor
        ``(...)`` distances in ``[0, pi]``.
    """
    cos = nn.functional.cosine_similarity(fa, fb, dim=-1, eps=1e-8)
    return math.pi * (1.0 - cos) / 2.0


def _block(c_in: int, c_out: int, groups: int, last: bool) -> nn.Sequential:
    g = math.gcd(c_out, groups)
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(g, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(g, c_out),
    ]
    # The last block stays signed: GroupNorm output has mean 0 per group, so pooled features
    # are not dominated by one direction shared by all images (which would start every
    # cosine near 1 and every d_hat near 0).
    if not last:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SiameseDistance(nn.Module):
    """Two weight-shared branches and the cosine distance of their features.

    Parameters
    ----------
    config
        Architecture; default :class:`SiameseConfig()`.
    """

    def __init__(self, config: SiameseConfig | None = None) -> None:
        super().__init__()
        self.config = SiameseConfig() if config is None else config
        widths = self.config.widths
        if not widths or min(widths) < 1 or self.config.features < 1:
            raise InputError(
                None,
                f"widths {widths} and features {self.config.features}; expected positive values",
                "config network",
            )
        layers: list[nn.Module] = []
        c_in = 1
        for k, width in enumerate(widths):
            if k > 0:
                layers.append(nn.AvgPool2d(2, ceil_mode=True))
            layers.append(_block(c_in, width, self.config.groups, k == len(widths) - 1))
            c_in = width
        layers.append(nn.Conv2d(c_in, self.config.features, 1, bias=False))
        self.encoder = nn.Sequential(*layers)
        # Projections of one particle look alike, so raw pooled features share a large common
        # direction and every cosine starts near 1 (d_hat near 0, far from most targets).
        # Centring and scaling each feature over the data (batch statistics in training,
        # running averages in eval mode) removes it.
        self.centre = nn.BatchNorm1d(self.config.features, affine=False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features of one branch.

        Parameters
        ----------
        images
            ``(B, 1, H, W)`` or ``(B, H, W)`` images, already :func:`standardise`-d.

        Returns
        -------
        torch.Tensor
            ``(B, features)``: the global average of the final feature maps.
        """
        if images.dim() == 3:
            images = images[:, None]
        if images.dim() != 4 or images.shape[1] != 1:
            raise InputError(
                None,
                f"images of shape {tuple(images.shape)}; expected (B, 1, H, W) or (B, H, W)",
                "argument images",
            )
        out: torch.Tensor = self.centre(self.encoder(images).mean(dim=(-2, -1)))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Estimated orientation distance ``d_hat`` in radians of image pairs.

        Parameters
        ----------
        a, b
            ``(B, 1, H, W)`` (or ``(B, H, W)``) standardised images; pair ``k`` is
            ``(a[k], b[k])``.

        Returns
        -------
        torch.Tensor
            ``(B,)`` distances in ``[0, pi]``.
        """
        # One pass over both halves: GroupNorm makes this identical to two separate passes.
        f = self.embed(torch.cat([a, b]))
        return feature_distance(f[: a.shape[0]], f[a.shape[0] :])
