"""Ligand-like density at a surface pocket: placement, size and symmetry."""

from __future__ import annotations

import torch

from cryopose.geometry import symmetry_group
from cryopose.simulate.ligand import add_ligand, pocket_scores
from cryopose.simulate.tomogram import rotate_density


def _notched_cube() -> torch.Tensor:
    v = torch.zeros(40, 40, 40)
    v[10:30, 10:30, 10:30] = 1.0
    v[16:24, 16:24, 22:30] = 0.0  # an 8 x 8 x 8 pocket open on the +x face
    return v


def test_the_pocket_is_found_inside_the_notch() -> None:
    scores = pocket_scores(_notched_cube(), angpix=1.0, pocket_radius_angst=4.0)
    z, y, x = (int(i) for i in torch.unravel_index(scores.argmax(), scores.shape))
    assert 16 <= z < 24 and 16 <= y < 24 and 22 <= x < 30
    # Solvent next to a flat face sees less than a half-ball of protein; far solvent scores 0.
    assert 0.2 < float(scores[14, 14, 30]) < 0.5
    assert float(scores[14, 14, 36]) == 0.0
    assert float(scores.max()) > 0.6


def test_ligand_sits_in_solvent_and_has_the_requested_mass() -> None:
    v = _notched_cube()
    bound, site = add_ligand(v, angpix=1.0, n_atoms=8, radius_angst=1.5, amplitude=1.0, seed=1)
    added = bound - v
    assert site.centres_vox.shape == (1, 3)
    z, y, x = site.centres_vox[0].round().long().tolist()
    assert v[z, y, x] == 0 and added[z, y, x] > 0.3
    # Most of the added density lies in what was solvent, within the pocket's reach.
    assert float(added[v == 0].sum()) > 0.6 * float(added.sum())
    assert abs(float(added.max()) - 1.0) < 1e-5
    assert int(site.mask.sum()) < 500  # a small molecule, not a domain


def test_symmetric_copies_keep_the_map_symmetric() -> None:
    # A D2-symmetric protein: a box with three different edge lengths.
    v = torch.zeros(48, 48, 48, dtype=torch.float64)
    v[14:34, 10:38, 6:42] = 1.0
    v[22:26, 22:26, 36:42] = 0.0  # pocket on +x, copied by D2 to -x
    v[22:26, 22:26, 6:12] = 0.0
    bound, site = add_ligand(v, angpix=1.0, n_atoms=6, radius_angst=1.5, symmetry="D2", seed=0)
    assert site.centres_vox.shape == (4, 3)
    added = bound - v
    for g in symmetry_group("D2")[1:]:
        rotated = rotate_density(added, g)
        corr = torch.corrcoef(torch.stack([rotated.flatten(), added.flatten()]))[0, 1]
        assert corr > 0.95
