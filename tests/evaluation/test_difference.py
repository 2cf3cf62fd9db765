"""Difference maps find an added site and ignore a change of scale."""

from __future__ import annotations

import torch

from cryopose.evaluation.difference import difference_map, site_significance


def _blob_map(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(32, 32, 32, dtype=torch.float64)
    v[8:24, 8:24, 8:24] = 1.0
    return v + 0.01 * torch.randn(v.shape, generator=g, dtype=torch.float64)


def test_scale_and_offset_are_removed_exactly() -> None:
    apo = _blob_map(0)
    diff = difference_map(3.0 * apo + 0.5, apo, angpix=1.0)
    assert float(diff.abs().max()) < 1e-5


def test_an_added_site_stands_out_and_a_plain_apo_map_does_not() -> None:
    apo = _blob_map(0)
    site = torch.zeros(apo.shape, dtype=torch.bool)
    site[14:18, 14:18, 24:27] = True
    bound = 2.0 * apo.clone()
    bound[site] += 1.6  # ligand as dense as the (scaled) protein, on its surface
    noise = torch.Generator().manual_seed(1)
    bound += 0.05 * torch.randn(bound.shape, generator=noise, dtype=torch.float64)
    region = apo > 0.5
    region[12:20, 12:20, 22:29] = True
    found = site_significance(difference_map(bound, apo, 1.0, resolution_angst=3.0), site, region)
    # Hand value: mean 1.6 * (low-pass blur) over background std of the filtered noise.
    assert found.site_mean > 0.8 and found.sigma > 8.0
    control = apo + 0.05 * torch.randn(apo.shape, generator=noise, dtype=torch.float64)
    none = site_significance(difference_map(control, apo, 1.0, resolution_angst=3.0), site, region)
    assert abs(none.sigma) < 2.0
