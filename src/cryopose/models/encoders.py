"""2D image encoders for the pose networks: a small U-Net (default) and a small ResNet.

Both map ``(B, C, H, W)`` images to ``(B, out_channels, h, w)`` feature maps and are sized for
CPU training (a few hundred thousand parameters at width 16). GroupNorm instead of BatchNorm
keeps every prediction independent of what else is in the batch.

:class:`RotationAveragedEncoder` wraps any encoder so that its features rotate exactly with the
image under 90 degree rotations (frame averaging over the four rotations), at 4x the cost.

>>> import torch
>>> enc = build_encoder("unet", in_channels=1, width=8)
>>> enc(torch.zeros(2, 1, 32, 32)).shape
torch.Size([2, 16, 16, 16])
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EncoderKind",
    "ResNetEncoder",
    "RotationAveragedEncoder",
    "UNetEncoder",
    "build_encoder",
    "encoder_channels",
]

EncoderKind = Literal["unet", "resnet"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            _norm(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            _norm(c_out),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(nn.Module):
    """Three-level U-Net whose decoder stops at half resolution.

    Levels at full, 1/2 and 1/4 resolution with ``width``, ``2 width`` and ``4 width``
    channels; the decoder upsamples the 1/4 level, concatenates the 1/2 skip connection and
    returns ``2 width`` channels at 1/2 resolution (full resolution is not needed by the
    hemisphere projection and costs 4x the memory).

    Parameters
    ----------
    in_channels
        Image channels.
    width
        Channels of the first level.

    Attributes
    ----------
    out_channels : int
        ``2 * width``.
    """

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.level0 = _ConvBlock(in_channels, width)
        self.level1 = _ConvBlock(width, 2 * width)
        self.level2 = _ConvBlock(2 * width, 4 * width)
        self.decode1 = _ConvBlock(6 * width, 2 * width)
        self.out_channels = 2 * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, C, H, W)`` images into ``(B, 2 width, ceil(H/2), ceil(W/2))`` features."""
        x0 = self.level0(images)
        x1 = self.level1(F.avg_pool2d(x0, 2, ceil_mode=True))
        x2 = self.level2(F.avg_pool2d(x1, 2, ceil_mode=True))
        up = F.interpolate(x2, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        out: torch.Tensor = self.decode1(torch.cat([x1, up], dim=1))
        return out


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and a shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``(B, c_in, H, W)``."""
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Small ResNet: a 3x3 stem and three stages of basic blocks, output at 1/4 resolution.

    Parameters
    ----------
    in_channels
        Image channels.
    width
        Channels of the first stage; the stages have ``width``, ``2 width``, ``4 width``.

    Attributes
    ----------
    out_channels : int
        ``4 * width``.
    """

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), _norm(width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            _BasicBlock(width, width, 1),
            _BasicBlock(width, 2 * width, 2),
            _BasicBlock(2 * width, 4 * width, 2),
        )
        self.out_channels = 4 * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, C, H, W)`` images into ``(B, 4 width, ~H/4, ~W/4)`` features."""
        out: torch.Tensor = self.stages(self.stem(images))
        return out


class RotationAveragedEncoder(nn.Module):
    """Frame averaging over the four 90 degree rotations: exactly rot90-equivariant features.

    ``E'(x) = 1/4 sum_k rot90(E(rot90(x, k)), -k)``, so ``E'(rot90(x)) = rot90(E'(x))`` for
    any encoder E whose output for a square input is square (Puny et al., ICLR 2022).

    Parameters
    ----------
    encoder
        Any encoder with an ``out_channels`` attribute.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_channels = encoder_channels(encoder)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode square ``(B, C, N, N)`` images; the four rotations run as one batch."""
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"rotation averaging needs square images, got {tuple(images.shape)}")
        batch = images.shape[0]
        stacked = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
        features = self.encoder(stacked)
        chunks = features.split(batch)
        aligned = [torch.rot90(chunks[k], -k, dims=(-2, -1)) for k in range(4)]
        return torch.stack(aligned).mean(dim=0)


def encoder_channels(encoder: nn.Module) -> int:
    """Return the ``out_channels`` attribute every encoder here carries."""
    value = getattr(encoder, "out_channels", None)
    if not isinstance(value, int):
        raise ValueError(f"{type(encoder).__name__} has no integer out_channels attribute")
    return value


def build_encoder(
    kind: EncoderKind, in_channels: int, width: int, rotation_averaged: bool = False
) -> nn.Module:
    """Build an image encoder by name.

    Parameters
    ----------
    kind
        ``"unet"`` (:class:`UNetEncoder`, 1/2 resolution) or ``"resnet"``
        (:class:`ResNetEncoder`, 1/4 resolution).
    in_channels
        Image channels.
    width
        Base width.
    rotation_averaged
        Wrap in :class:`RotationAveragedEncoder`.

    Returns
    -------
    nn.Module
        Module with an ``out_channels`` attribute mapping ``(B, C, H, W)`` to feature maps.
    """
    encoder: nn.Module
    if kind == "unet":
        encoder = UNetEncoder(in_channels, width)
    elif kind == "resnet":
        encoder = ResNetEncoder(in_channels, width)
    else:
        raise ValueError(f"unknown encoder kind {kind!r}; expected 'unet' or 'resnet'")
    return RotationAveragedEncoder(encoder) if rotation_averaged else encoder
