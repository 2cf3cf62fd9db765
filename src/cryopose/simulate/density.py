"""Atomic model -> 3D Coulomb potential map (the density cryo-EM images are projections of).

Physics
-------
Each atom's electron scattering factor is the 5-Gaussian fit of Peng et al. (1996), as tabulated
in International Tables for Crystallography vol. C, table 4.3.2.2 (gemmi's ``Element.c4322``)::

    f_e(s) = sum_i a_i exp(-b_i s^2),   s = q / 2 = sin(theta) / lambda,   a_i in Angstrom.

Its Fourier transform, times the Mott-Bethe constant ``h^2 / (2 pi m0 e) = 47.8756 V A^2``, is
the atom's Coulomb potential, a sum of 5 normalised 3D Gaussians of variance
``sigma_i^2 = b_i' / (8 pi^2)`` (Angstrom^2) and weights ``47.8756 * occupancy * a_i``
(V A^3), where ``b_i' = b_i + B`` and ``B`` collects everything that blurs:

* ``bfactor``: a global B-factor (A^2) for all atoms, plus each atom's own B-factor when
  ``atom_bfactors=True``;
* ``resolution`` R (Angstrom): a Gaussian low-pass filter whose transfer function is
  ``exp(-(q R)^2)``, i.e. it falls to 1/e at spatial frequency ``q = 1/R``. This is UCSF
  Chimera's ``molmap`` convention (real-space sigma ``R / (pi sqrt 2)``), and it equals an
  extra B-factor of ``4 R^2``.

Sampling
--------
The value stored in a voxel is the potential *averaged over the voxel* (each Gaussian is
integrated exactly over the voxel's cube with error functions), not sampled at its centre.
Averaging keeps the integral exact however narrow an atom is compared to the pixel (a bare
carbon is 0.06 A wide), so ``map.sum() * angpix**3`` equals ``47.8756 * sum(occupancy *
f_e(0))`` up to the truncation of each atom at ``cutoff_sigmas`` standard deviations.

Units and layout
----------------
Volts (mean Coulomb potential in the voxel, vacuum zero, no solvent). Volumes are stored
``(z, y, x)`` = ``(D, H, W)``; the centre chosen by ``center`` lands on voxel index
``box // 2`` along each axis (the RELION origin), and voxel ``(k, j, i)`` is centred at
``(x, y, z) = center + ((i, j, k) - box // 2) * angpix``.

Example
-------
>>> from cryopose.simulate.density import density_from_file
>>> vol = density_from_file("6z6u.pdb", angpix=1.5, box=128, resolution=4.0)  # doctest: +SKIP
>>> vol.shape  # doctest: +SKIP
torch.Size([128, 128, 128])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import gemmi
import torch

from cryopose.io.structure import Atoms, read_structure

__all__ = ["MOTT_BETHE_V_A2", "density_from_file", "density_map", "scattering_coefficients"]

# h^2 / (2 pi m0 e) in V * Angstrom^2 (CODATA 2018): converts an electron scattering factor
# (Angstrom) into a Coulomb potential integral (V * Angstrom^3).
_H = 6.62607015e-34
_M0 = 9.1093837015e-31
_E = 1.602176634e-19
MOTT_BETHE_V_A2 = _H**2 / (2.0 * math.pi * _M0 * _E) * 1e20


def scattering_coefficients(
    atomic_numbers: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Peng (1996) / ITC 4.3.2.2 electron scattering factor coefficients.

    Parameters
    ----------
    atomic_numbers
        ``(N,)`` int64 atomic numbers, 0 to 98 (0 = unknown element: gemmi's ``X`` row).

    Returns
    -------
    a, b
        ``(N, 5)`` float64 each: ``f_e(s) = sum_i a_i exp(-b_i s^2)`` with ``a`` in Angstrom
        and ``b`` in Angstrom^2, ``s = sin(theta) / lambda``.

    Raises
    ------
    ValueError
        For atomic numbers above 98, which the table does not cover.
    """
    table = torch.full((119, 10), math.nan, dtype=torch.float64)
    for z in range(119):
        c4322 = gemmi.Element(z).c4322
        if c4322 is not None:  # the table stops at Cf (98)
            table[z] = torch.tensor(c4322.get_coefs(), dtype=torch.float64)
    rows = table[atomic_numbers.cpu()]
    if rows.isnan().any():
        bad = sorted({int(z) for z in atomic_numbers.cpu()[rows.isnan().any(1)]})
        raise ValueError(f"no electron scattering factors for atomic numbers {bad} (max 98)")
    rows = rows.to(atomic_numbers.device)
    return rows[:, :5], rows[:, 5:]


def density_map(
    atoms: Atoms,
    angpix: float,
    box: int,
    resolution: float | None = None,
    center: str | Sequence[float] | torch.Tensor | None = "mass",
    bfactor: float = 0.0,
    device: torch.device | str | None = None,
    *,
    atom_bfactors: bool = False,
    cutoff_sigmas: float = 4.5,
) -> torch.Tensor:
    """Coulomb potential map of an atomic model (see the module docstring for the physics).

    Parameters
    ----------
    atoms
        Atomic model, e.g. from :func:`cryopose.io.structure.read_structure`.
    angpix
        Voxel size in Angstrom.
    box
        Edge length of the cubic volume in voxels.
    resolution
        Gaussian low-pass "resolution" R in Angstrom (transfer ``exp(-(q R)^2)``, Chimera
        ``molmap`` convention); ``None`` for no filter.
    center
        Point of the model placed at voxel ``box // 2``: ``"mass"`` (occupancy-weighted centre
        of atomic mass), ``"geometric"`` (mean of the coordinates), an ``(x, y, z)`` point in
        Angstrom, or ``None`` to use the file's coordinates as they are (the file origin at
        ``box // 2``).
    bfactor
        Global B-factor in Angstrom^2 added to every atom (must keep every Gaussian positive).
    device
        Where to compute and return the map (default: the device of ``atoms.coordinates``).
    atom_bfactors
        Also blur each atom by its own B-factor from the file.
    cutoff_sigmas
        Each atom is evaluated in a cube of half-width ``cutoff_sigmas`` times its widest
        Gaussian's sigma (4.5 loses about 1e-5 of the integral).

    Returns
    -------
    torch.Tensor
        ``(box, box, box)`` float32 map ``(z, y, x)`` in volts (mean potential per voxel).
        Atoms outside the box contribute only their parts inside it.
    """
    dev = torch.device(device) if device is not None else atoms.coordinates.device
    coords = atoms.coordinates.to(dev, torch.float64)
    origin = _center(atoms, center).to(dev, torch.float64)
    a, b = scattering_coefficients(atoms.atomic_numbers.to(dev))
    extra = torch.full((len(atoms), 1), float(bfactor), dtype=torch.float64, device=dev)
    if atom_bfactors:
        extra = extra + atoms.bfactors.to(dev, torch.float64)[:, None]
    if resolution is not None:
        extra = extra + 4.0 * float(resolution) ** 2
    bb = b + extra
    if len(atoms) and float(bb.min()) <= 0.0:
        raise ValueError(f"bfactor={bfactor} makes a Gaussian width non-positive")
    sigma = torch.sqrt(bb / (8.0 * math.pi**2))  # (N, 5) Angstrom
    weight = MOTT_BETHE_V_A2 * a * atoms.occupancies.to(dev, torch.float64)[:, None]
    # Atom positions in voxel units, (x, y, z), with the chosen centre at box // 2.
    pos = (coords - origin) / angpix + box // 2
    half = math.ceil(cutoff_sigmas * float(sigma.max()) / angpix) + 1 if len(atoms) else 0
    # Atoms whose window misses the box are dropped; the grid is padded by the window's
    # half-width so that the others can be added without bounds checks, then cropped.
    base = torch.round(pos).to(torch.int64)
    keep = ((base >= -half) & (base < box + half)).all(1)
    pos, base, sigma, weight = pos[keep], base[keep] + half, sigma[keep] / angpix, weight[keep]
    side = box + 2 * half
    grid = torch.zeros(side**3, dtype=torch.float32, device=dev)
    # Each atom gets the window its own widest Gaussian needs (ions such as Na+ are twice as
    # wide as C, N, O); atoms are processed in groups of equal window size.
    halves = torch.ceil(cutoff_sigmas * sigma.max(1).values).to(torch.int64) + 1
    for h in torch.unique(halves).tolist():
        sel = torch.nonzero(halves == h).squeeze(1)
        # Chunks bound the memory of the (atoms, window^3) temporaries to ~100 MB.
        chunk = max(1, 2**22 // (2 * h + 1) ** 3)
        for start in range(0, len(sel), chunk):
            i = sel[start : start + chunk]
            _splat(grid, pos[i] + half, base[i], sigma[i], weight[i], side, h)
    grid = grid.reshape(side, side, side)[half : half + box, half : half + box, half : half + box]
    return (grid / angpix**3).contiguous()


def density_from_file(
    path: str | Path,
    angpix: float,
    box: int | None = None,
    resolution: float | None = None,
    assembly: str | None = None,
) -> torch.Tensor:
    """Read a PDB/mmCIF file and return its potential map centred on the centre of mass.

    Parameters
    ----------
    path
        PDB or mmCIF file (optionally gzipped); waters are dropped.
    angpix
        Voxel size in Angstrom.
    box
        Box edge in voxels. ``None``: the smallest even box whose edge is at least 1.2 times
        the diameter of the sphere, centred on the centre of mass, that holds every atom
        (``2 * max |x - com|``), so that the model plus a 10 % margin per side fits.
    resolution
        Gaussian low-pass resolution in Angstrom (see :func:`density_map`), or ``None``.
    assembly
        Biological assembly to build first (``"1"``, ...), or ``None`` for the file's chains.

    Returns
    -------
    torch.Tensor
        ``(box, box, box)`` float32 map ``(z, y, x)`` in volts, centre of mass at ``box // 2``.
    """
    atoms = read_structure(path, assembly=assembly)
    if box is None:
        com = atoms.center_of_mass()
        radius = float(torch.linalg.vector_norm(atoms.coordinates - com, dim=1).max())
        box = 2 * math.ceil(1.2 * 2.0 * radius / angpix / 2.0)
    return density_map(atoms, angpix, box, resolution=resolution, center="mass")


def _center(atoms: Atoms, center: str | Sequence[float] | torch.Tensor | None) -> torch.Tensor:
    """``(3,)`` float64 point (x, y, z, Angstrom) to put at the box centre."""
    if center is None:
        return torch.zeros(3, dtype=torch.float64)
    if isinstance(center, str):
        if center == "mass":
            return atoms.center_of_mass()
        if center == "geometric":
            return atoms.coordinates.mean(0)
        raise ValueError(f"center must be 'mass', 'geometric', a point or None, got {center!r}")
    point = torch.as_tensor(center, dtype=torch.float64)
    if point.shape != (3,):
        raise ValueError(f"center point must have shape (3,), got {tuple(point.shape)}")
    return point


def _splat(
    grid: torch.Tensor,
    pos: torch.Tensor,
    base: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor,
    side: int,
    half: int,
) -> None:
    """Add voxel-averaged Gaussians to the flat ``(side**3,)`` grid, in place.

    ``pos`` ``(n, 3)`` float64 voxel coordinates (x, y, z) and ``base`` ``(n, 3)`` their
    nearest voxel, at least ``half`` voxels from the grid's faces; ``sigma`` (voxels) and
    ``weight`` ``(n, 5)``. A Gaussian is separable, so its integral over a voxel is the
    product of three 1D integrals, each a difference of error functions at the voxel's edges.
    """
    n, width = pos.shape[0], 2 * half + 1
    edges = torch.arange(-half, half + 2, device=pos.device, dtype=pos.dtype) - 0.5  # (L+1,)
    rel = (base.to(pos.dtype) - pos)[:, :, None] + edges  # (n, 3, L+1), voxels
    cdf = 0.5 * torch.erf(rel[:, None] / (math.sqrt(2.0) * sigma[:, :, None, None]))
    mass_1d = (cdf[..., 1:] - cdf[..., :-1]).to(torch.float32)  # (n, 5, xyz, L)
    wz = mass_1d[:, :, 2] * weight.to(torch.float32)[:, :, None]  # (n, 5, L)
    yx = mass_1d[:, :, 1, :, None] * mass_1d[:, :, 0, None, :]  # (n, 5, L, L)
    # Sum over the 5 Gaussians as a batched matrix product: (n, L, 5) @ (n, 5, L*L).
    vals = torch.bmm(wz.transpose(1, 2), yx.reshape(n, 5, width * width))  # (n, L, L*L)
    offs = torch.arange(-half, half + 1, device=pos.device)
    window = (offs[:, None, None] * side + offs[:, None]) * side + offs  # (L, L, L) z, y, x
    centre = (base[:, 2] * side + base[:, 1]) * side + base[:, 0]  # (n,)
    grid.index_add_(0, (centre[:, None] + window.reshape(-1)).reshape(-1), vals.reshape(-1))
