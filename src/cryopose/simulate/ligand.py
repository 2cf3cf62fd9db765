"""A ligand-like density bound at a surface pocket of a map (the drug-discovery test case).

A "ligand-bound" map is the apo map plus a small compact density (a cluster of Gaussian
pseudo-atoms about the size of a drug-like molecule) placed in the most buried solvent voxel
next to the protein surface that has room for it. For a symmetric protein the ligand binds
every copy: the site is replicated by the point group, so the bound map keeps the symmetry.

Pocket score: with ``P`` the protein mask (``volume > threshold``), every solvent voxel with no
protein within the ligand's radius, but some within a few voxels more, is scored by the fraction
of ``P`` inside a ball of ``pocket_radius_angst`` around it; the best-scoring voxel is the most
enclosed place a small molecule can sit without overlapping the protein.

>>> import torch
>>> v = torch.zeros(32, 32, 32); v[8:24, 8:24, 8:24] = 1.0; v[14:18, 14:18, 20:24] = 0.0
>>> bound, site = add_ligand(v, angpix=2.0, n_atoms=4, radius_angst=2.0, seed=0)
>>> site.centres_vox.shape, bool((bound - v).sum() > 0)
(torch.Size([1, 3]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryopose.errors import InputError
from cryopose.geometry.symmetry import symmetry_group

__all__ = ["LigandSite", "add_ligand", "pocket_scores"]


@dataclass(frozen=True)
class LigandSite:
    """Where the ligand was put.

    Attributes
    ----------
    centres_vox
        ``(S, 3)`` float site centres in voxels ``(z, y, x)`` (one per symmetry copy).
    pocket_score
        Fraction of protein voxels in the ball around the chosen site (0 to 1).
    mask
        ``(D, H, W)`` bool voxels where the added density exceeds 10% of its peak.
    """

    centres_vox: torch.Tensor
    pocket_score: float
    mask: torch.Tensor


def _ball_kernel_fft(shape: tuple[int, int, int], radius_vox: float) -> torch.Tensor:
    """FFT of a ball of ``radius_vox`` centred at the origin (wrap-around layout)."""
    axes = [torch.fft.fftfreq(n, 1.0 / n) for n in shape]  # signed integer offsets
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    ball = ((zz**2 + yy**2 + xx**2) <= radius_vox**2).to(torch.float32)
    out: torch.Tensor = torch.fft.rfftn(ball / ball.sum())
    return out


def pocket_scores(
    volume: torch.Tensor,
    angpix: float,
    threshold: float | None = None,
    pocket_radius_angst: float = 8.0,
    surface_distance: int = 2,
    clearance_angst: float = 0.0,
) -> torch.Tensor:
    """Pocket score of every voxel (0 for protein voxels and voxels far from the surface).

    Parameters
    ----------
    volume
        ``(D, H, W)`` map.
    angpix
        Voxel size in Angstrom.
    threshold
        Protein iso-level; ``None``: 10% of the map's maximum.
    pocket_radius_angst
        Radius of the ball in which the protein fraction is measured.
    surface_distance
        Solvent voxels at most this many voxels (Chebyshev distance) beyond the clearance from
        the protein qualify.
    clearance_angst
        Qualifying voxels have no protein voxel within this distance (room for the ligand).

    Returns
    -------
    torch.Tensor
        ``(D, H, W)`` float32 scores in ``[0, 1]``.
    """
    if volume.ndim != 3:
        raise InputError(None, f"expected a (D, H, W) map, got shape {tuple(volume.shape)}")
    level = 0.1 * float(volume.max()) if threshold is None else threshold
    protein = (volume > level).to(torch.float32)
    if not bool(protein.any()):
        raise InputError(None, f"no voxel above the protein threshold {level:g}")
    shape = (int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2]))
    kernel = _ball_kernel_fft(shape, pocket_radius_angst / angpix)
    enclosure = torch.fft.irfftn(torch.fft.rfftn(protein) * kernel, s=shape)
    clear = protein == 0
    if clearance_angst > 0:
        inside = torch.fft.irfftn(
            torch.fft.rfftn(protein) * _ball_kernel_fft(shape, clearance_angst / angpix), s=shape
        )
        clear = inside < 1e-4
    reach = surface_distance + math.ceil(clearance_angst / angpix)
    near = torch.nn.functional.max_pool3d(protein[None, None], 2 * reach + 1, 1, reach)[0, 0]
    candidates = (near > 0) & clear
    # Keep away from the box edge so the ligand fits inside the map.
    edge = torch.zeros_like(candidates)
    margin = max(reach, math.ceil(pocket_radius_angst / angpix))
    edge[margin:-margin, margin:-margin, margin:-margin] = True
    return torch.where(candidates & edge, enclosure.clamp(0, 1), torch.zeros_like(enclosure))


def _site_copies(centre: torch.Tensor, box: tuple[int, ...], symmetry: str) -> torch.Tensor:
    """``(|G|, 3)`` voxel positions ``(z, y, x)`` of the site under the point group."""
    middle = torch.tensor([n // 2 for n in box], dtype=torch.float64)
    xyz = (centre.to(torch.float64) - middle).flip(-1)  # (x, y, z) from the centre
    copies = symmetry_group(symmetry) @ xyz  # (|G|, 3): g x for every g
    return copies.flip(-1) + middle


def _splat_gaussians(atoms: torch.Tensor, sigma: float, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum of unit-peak Gaussians at ``atoms`` ``(A, 3)`` (voxels z, y, x), within 4 sigma."""
    reach = math.ceil(4 * sigma)
    steps = torch.arange(-reach, reach + 1, dtype=torch.float64)
    window = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    voxels = atoms.round()[:, None, :] + window  # (A, W, 3) integer voxel positions
    values = torch.exp(-0.5 * ((voxels - atoms[:, None, :]) ** 2).sum(-1) / sigma**2)
    size = torch.tensor(shape, dtype=torch.float64)
    inside = ((voxels >= 0) & (voxels < size)).all(-1)
    index = voxels[inside].long()
    flat = (index[:, 0] * shape[1] + index[:, 1]) * shape[2] + index[:, 2]
    out = torch.zeros(math.prod(shape), dtype=torch.float64)
    out.index_add_(0, flat, values[inside])
    return out.reshape(shape)


def add_ligand(
    volume: torch.Tensor,
    angpix: float,
    n_atoms: int = 24,
    radius_angst: float = 4.0,
    amplitude: float | None = None,
    symmetry: str = "C1",
    threshold: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, LigandSite]:
    """Return ``volume`` plus a ligand-like density at its best surface pocket.

    Parameters
    ----------
    volume
        ``(D, H, W)`` apo map.
    angpix
        Voxel size in Angstrom.
    n_atoms
        Gaussian pseudo-atoms in the ligand (24: a drug-like molecule of ~300 Da).
    radius_angst
        The pseudo-atoms lie within this radius of the site centre.
    amplitude
        Peak value of one pseudo-atom; ``None``: the mean of the protein voxels, so the ligand
        is as dense as the protein around it.
    symmetry
        Point group of the map; the site is copied to every symmetry mate.
    threshold
        Protein iso-level for the pocket search (see :func:`pocket_scores`).
    seed
        Seed of the pseudo-atom positions.

    Returns
    -------
    tuple[torch.Tensor, LigandSite]
        The bound map (same shape and dtype) and the site.
    """
    scores = pocket_scores(
        volume,
        angpix,
        threshold,
        pocket_radius_angst=2 * radius_angst + 2.0,
        clearance_angst=radius_angst,
    )
    best = int(scores.argmax())
    if float(scores.flatten()[best]) <= 0:
        raise InputError(None, "found no solvent voxel next to the protein surface")
    shape = tuple(int(s) for s in volume.shape)
    centre = torch.tensor(
        [best // (shape[1] * shape[2]), (best // shape[2]) % shape[1], best % shape[2]],
        dtype=torch.float64,
    )
    level = 0.1 * float(volume.max()) if threshold is None else threshold
    peak = float(volume[volume > level].mean()) if amplitude is None else amplitude
    generator = torch.Generator().manual_seed(seed)
    # Pseudo-atoms uniform in a ball: direction x radius^(1/3) law.
    direction = torch.randn(n_atoms, 3, generator=generator, dtype=torch.float64)
    direction /= direction.norm(dim=1, keepdim=True)
    r = radius_angst / angpix * torch.rand(n_atoms, 1, generator=generator, dtype=torch.float64)
    offsets = direction * r ** (1.0 / 3.0) * (radius_angst / angpix) ** (2.0 / 3.0)
    sigma = 1.0 / angpix  # 1 A: a carbon atom blurred to ~2.4 A resolution
    copies = _site_copies(centre, shape, symmetry)
    group = symmetry_group(symmetry)
    # Rotate the pseudo-atom cloud with its site so every copy is the same molecule.
    atoms = torch.cat(
        [site + (g @ offsets.flip(-1).T).T.flip(-1) for g, site in zip(group, copies, strict=True)]
    )
    added = _splat_gaussians(atoms, sigma, shape)
    added *= peak / float(added.max())
    mask = added > 0.1 * peak
    bound = volume + added.to(volume.dtype)
    return bound, LigandSite(copies.to(torch.float32), float(scores.flatten()[best]), mask)
