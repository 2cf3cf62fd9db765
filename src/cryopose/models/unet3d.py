"""3D U-Net for voxel-wise segmentation of tomograms (cryo-ET particle picking).

The network of DeepFinder / SHREC 2020's learned pickers, kept small enough to train on a CPU:
``depth`` resolution levels, each two ``3 x 3 x 3`` convolutions (batch norm, ReLU), max-pooling
by 2 on the way down and transposed convolutions by 2 on the way up, with skip connections;
``width * 2**level`` channels at level ``level``. A final ``1 x 1 x 1`` convolution gives one
logit per class (class 0 = background).

Batch norm (not instance or group norm) on purpose: in evaluation mode it is a fixed affine map,
so the network is translation-equivariant for shifts that are multiples of
:attr:`UNet3D.divisor` and a tomogram can be segmented tile by tile with the same result as in
one piece away from the tile borders (:func:`cryopose.tomo.segmentation.predict_tiled`).

>>> import torch
>>> net = UNet3D(UNet3DConfig(width=4, depth=2, n_classes=3))
>>> net(torch.zeros(1, 1, 8, 8, 8)).shape
torch.Size([1, 3, 8, 8, 8])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["UNet3D", "UNet3DConfig", "conv_block"]


@dataclass(frozen=True)
class UNet3DConfig:
    """Architecture of a :class:`UNet3D` (saved in a model folder's ``config.json``).

    Attributes
    ----------
    in_channels
        Input channels (1: the tomogram).
    n_classes
        Output classes including background (SHREC 2020: 12 proteins + background = 13).
    width
        Channels of the first level; level ``k`` has ``width * 2**k``.
    depth
        Number of resolution levels (``depth - 1`` poolings); inputs must have every edge a
        multiple of ``2**(depth - 1)``.
    """

    in_channels: int = 1
    n_classes: int = 13
    width: int = 16
    depth: int = 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNet3DConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: int(v) for k, v in data.items()})


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two ``3^3`` convolutions, each followed by batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    """3D U-Net mapping ``(B, in_channels, D, H, W)`` to ``(B, n_classes, D, H, W)`` logits.

    Parameters
    ----------
    config
        Architecture; ``D, H, W`` of the input must be multiples of ``2**(config.depth - 1)``.
    """

    def __init__(self, config: UNet3DConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNet3DConfig()
        if self.config.depth < 1 or self.config.width < 1:
            raise ValueError(f"need depth >= 1 and width >= 1, got {self.config}")
        chans = [self.config.width * 2**k for k in range(self.config.depth)]
        self.down = nn.ModuleList()
        c_in = self.config.in_channels
        for c in chans:
            self.down.append(conv_block(c_in, c))
            c_in = c
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_low, c_high in zip(chans[:0:-1], chans[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose3d(c_low, c_high, 2, stride=2))
            self.merge.append(conv_block(2 * c_high, c_high))
        self.head = nn.Conv3d(chans[0], self.config.n_classes, 1)

    @property
    def divisor(self) -> int:
        """Every input edge must be a multiple of this (``2**(depth - 1)``)."""
        return int(2 ** (self.config.depth - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Parameters
        ----------
        x
            ``(B, in_channels, D, H, W)``, edges multiples of :attr:`divisor`.

        Returns
        -------
        torch.Tensor
            ``(B, n_classes, D, H, W)`` logits.
        """
        if any(s % self.divisor for s in x.shape[-3:]):
            raise ValueError(
                f"input edges {tuple(x.shape[-3:])} must be multiples of {self.divisor}"
            )
        skips: list[torch.Tensor] = []
        for k, block in enumerate(self.down):
            if k > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        out: torch.Tensor = self.head(x)
        return out
