"""Difference maps: what a bound map has that the apo map has not (e.g. a ligand).

The two maps are brought to the same scale first (least-squares scale and offset of ``apo``
onto ``bound``, over the whole map or a given mask), then ``bound - scaled apo`` is low-pass
filtered. The significance of a site is its mean difference
density divided by the standard deviation of the difference map over the rest of the protein
region: a ligand that was really recovered stands out by several sigma, a map that only
reproduces the apo structure gives about zero.

>>> import torch
>>> apo = torch.zeros(16, 16, 16); apo[4:12, 4:12, 4:12] = 1.0
>>> bound = apo.clone(); bound[7:9, 7:9, 12:14] = 1.0
>>> site = torch.zeros(16, 16, 16, dtype=torch.bool); site[7:9, 7:9, 12:14] = True
>>> d = difference_map(bound, apo, angpix=1.0)
>>> float(d[site].mean()) > 0.9
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryopose.errors import InputError
from cryopose.imaging.filters import lowpass

__all__ = ["SiteSignificance", "difference_map", "site_significance"]


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(
            None,
            f"expected two maps of the same (D, H, W) shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}",
        )


def difference_map(
    bound: torch.Tensor,
    apo: torch.Tensor,
    angpix: float,
    resolution_angst: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``bound - (s * apo + c)`` with ``s, c`` fitted by least squares, optionally low-passed.

    Parameters
    ----------
    bound, apo
        ``(D, H, W)`` maps on the same grid.
    angpix
        Voxel size in Angstrom.
    resolution_angst
        Low-pass the difference to this resolution; ``None`` for no filter.
    mask
        ``(D, H, W)`` bool region used for the scale fit; ``None``: the whole map (protein and
        solvent together pin down both the scale and the offset).

    Returns
    -------
    torch.Tensor
        ``(D, H, W)`` float32 difference map.
    """
    _check(bound, apo)
    a = apo.to(torch.float64)
    b = bound.to(torch.float64)
    region = mask if mask is not None else torch.ones_like(a, dtype=torch.bool)
    x, y = a[region], b[region]
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    solution = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    diff = b - (solution[0] * a + solution[1])
    if resolution_angst is not None:
        diff = lowpass(diff, angpix, resolution_angst, ndim=3)
    out: torch.Tensor = diff.to(torch.float32)
    return out


@dataclass(frozen=True)
class SiteSignificance:
    """How strongly a site shows in a difference map.

    Attributes
    ----------
    site_mean
        Mean difference density inside the site.
    background_std
        Standard deviation of the difference inside the reference region, outside the site.
    sigma
        ``site_mean / background_std``.
    """

    site_mean: float
    background_std: float
    sigma: float


def site_significance(
    diff: torch.Tensor, site: torch.Tensor, region: torch.Tensor | None = None
) -> SiteSignificance:
    """Mean difference density in ``site`` in units of the difference map's spread elsewhere.

    Parameters
    ----------
    diff
        ``(D, H, W)`` difference map (:func:`difference_map`).
    site
        ``(D, H, W)`` bool voxels of the site (e.g. a ligand mask).
    region
        ``(D, H, W)`` bool reference region for the spread (e.g. the protein, dilated);
        ``None``: the whole map. The site is excluded from it.
    """
    if site.shape != diff.shape or not bool(site.any()):
        raise InputError(None, "expected a non-empty site mask of the difference map's shape")
    ref = (torch.ones_like(site) if region is None else region) & ~site
    if int(ref.sum()) < 2:
        raise InputError(None, "the reference region outside the site is empty")
    mean = float(diff[site].to(torch.float64).mean())
    std = float(diff[ref].to(torch.float64).std())
    return SiteSignificance(mean, std, mean / std if std > 0 else float("inf"))
