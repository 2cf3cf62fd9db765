"""Junk images for simulated datasets: what a picker also picks besides good particles.

Five kinds, each returned as a *clean* image (before noise) with the particle's CTF applied,
so that :func:`cryopose.simulate.particles.simulate_particles` can scale it to the same signal
variance as the true particles and add the same noise. Junk is then not separable from
particles by intensity statistics (mean, variance) alone, only by its content:

``"empty"``
    Ice only: a smooth Gaussian random field (correlation length about ``box / 8`` pixels,
    ice-thickness variation), CTF-modulated.
``"contaminant"``
    One to three dense Gaussian blobs (ethane/ice balls) and, half of the time, a hard-edged
    hexagonal ice crystal, CTF-modulated (fringes at the sharp edges, as in real micrographs).
``"off_centre"``
    The particle at its pose, displaced by 1 to 1.5 particle radii from where its origin says
    (so its recorded origin is wrong by more than a radius).
``"overlap"``
    Two copies of the particle at independent random poses whose centres are 1 to 1.6 radii
    apart, on either side of the box centre: partially overlapping neighbours.
``"other_protein"``
    A projection of a different map (``other``), or when none is given of a random assembly of
    Gaussian blobs of the particle's size (:func:`random_blob_volume`).

Poses of junk rows are drawn uniformly (the star file must hold some pose; a uniform one
carries no information) and their origins follow the same distribution as the particles'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cryopose.imaging.ctf import apply_ctf
from cryopose.imaging.fft import rfft_freq_grid
from cryopose.imaging.projection import Projector
from cryopose.simulate.poses import uniform_poses

__all__ = ["JUNK_KINDS", "junk_images", "random_blob_volume"]

JUNK_KINDS: tuple[str, ...] = ("empty", "contaminant", "off_centre", "overlap", "other_protein")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` float64 uniform in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _unit_vectors_2d(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 2)`` float64 random unit vectors (x, y) in the image plane."""
    phi = _uniform(n, 0.0, 2.0 * math.pi, generator)
    return torch.stack([torch.cos(phi), torch.sin(phi)], dim=-1)


def random_blob_volume(
    box: int, radius_px: float, generator: torch.Generator, n_blobs: int = 12
) -> torch.Tensor:
    """Draw a random compact assembly of Gaussian blobs, a stand-in for an unrelated protein.

    Parameters
    ----------
    box
        Box size D in voxels.
    radius_px
        Radius (voxels) of the sphere, centred at ``D // 2``, that holds the blob centres
        (times 0.7) and most of their mass.
    generator
        CPU torch generator.
    n_blobs
        Number of blobs (sigma 0.15 to 0.3 of the radius, weights 0.5 to 1.5).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` float32 volume, non-negative.
    """
    # Centres uniform in a ball of 0.7 radius: direction uniform, distance ~ cube root.
    d = torch.randn((n_blobs, 3), generator=generator, dtype=torch.float64)
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    r = 0.7 * radius_px * _uniform(n_blobs, 0.0, 1.0, generator) ** (1.0 / 3.0)
    centres = d * r[:, None]
    sigma = radius_px * _uniform(n_blobs, 0.15, 0.3, generator)
    weight = _uniform(n_blobs, 0.5, 1.5, generator)
    ax = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    vol = torch.zeros((box, box, box), dtype=torch.float64)
    for c, s, w in zip(centres, sigma, weight, strict=True):
        r2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
        vol += w * torch.exp(-r2 / (2.0 * s * s))
    return vol.to(torch.float32)


def _empty(n: int, box: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, D, D)`` smooth Gaussian random fields (low-pass filtered white noise)."""
    white = torch.randn((n, box, box), generator=generator, dtype=torch.float64)
    ky, kx = rfft_freq_grid((box, box), dtype=torch.float64)
    # Gaussian low-pass with 1/e^(1/2) at 4 cycles per box: correlation length ~ box / 8.
    s = 4.0 / box
    filt = torch.exp(-(kx * kx + ky * ky) / (2.0 * s * s))
    field: torch.Tensor = torch.fft.irfft2(torch.fft.rfft2(white) * filt, s=(box, box))
    return field


def _contaminant(n: int, box: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, D, D)`` dense blobs and, half of the time, a hard-edged hexagonal crystal."""
    ax = torch.arange(box, dtype=torch.float64) - box // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    out = torch.zeros((n, box, box), dtype=torch.float64)
    for i in range(n):
        n_blobs = int(torch.randint(1, 4, (1,), generator=generator))
        centres = (torch.rand((n_blobs, 2), generator=generator, dtype=torch.float64) - 0.5) * (
            0.6 * box
        )
        sigma = box * _uniform(n_blobs, 0.06, 0.2, generator)
        amp = _uniform(n_blobs, 1.0, 3.0, generator)
        for c, s, a in zip(centres, sigma, amp, strict=True):
            out[i] += a * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2.0 * s * s))
        crystal = float(torch.rand(1, generator=generator)) < 0.5
        c0 = (torch.rand(2, generator=generator, dtype=torch.float64) - 0.5) * (0.5 * box)
        size = box * float(_uniform(1, 0.12, 0.3, generator)[0])
        turn = float(_uniform(1, 0.0, math.pi / 3.0, generator)[0])
        if crystal:
            # Regular hexagon: inside when the projection on each of the 3 face normals
            # is within the apothem.
            inside = torch.ones((box, box), dtype=torch.bool)
            for k in range(3):
                a = turn + k * math.pi / 3.0
                proj = (x - c0[0]) * math.cos(a) + (y - c0[1]) * math.sin(a)
                inside &= proj.abs() <= size
            out[i] += 2.0 * inside.to(torch.float64)
    return out


def _project_subset(
    projector: Projector,
    rotations: torch.Tensor,
    shifts_angst: torch.Tensor,
    angpix: float,
    ctf: torch.Tensor | None,
) -> torch.Tensor:
    return projector.project(rotations, shifts_angst=shifts_angst, angpix=angpix, ctf=ctf).to(
        torch.float64
    )


def junk_images(
    kinds: Sequence[str],
    projector: Projector,
    rotations: torch.Tensor,
    shifts_angst: torch.Tensor,
    angpix: float,
    radius_px: float,
    generator: torch.Generator,
    ctf: torch.Tensor | None = None,
    other: Projector | None = None,
) -> torch.Tensor:
    """Clean (noise-free, CTF-modulated) junk images, one per entry of ``kinds``.

    Parameters
    ----------
    kinds
        ``n`` kinds, each one of :data:`JUNK_KINDS`.
    projector
        Projector of the particle's map (box D).
    rotations
        ``(n, 3, 3)`` RELION poses (those written to the star file).
    shifts_angst
        ``(n, 2)`` RELION origins in Angstrom (those written to the star file).
    angpix
        Pixel size in Angstrom.
    radius_px
        Particle radius in pixels (sets the displacement of ``off_centre`` and ``overlap``).
    generator
        CPU torch generator for every random choice made here.
    ctf
        ``(n, D, D // 2 + 1)`` CTF (rfft layout) or ``None`` for no CTF.
    other
        Projector of a different map (box D) for ``other_protein``; a random blob assembly
        (drawn from ``generator``) when ``None``.

    Returns
    -------
    torch.Tensor
        ``(n, D, D)`` float64 images, unscaled (callers match their variance to the
        particles').
    """
    n = len(kinds)
    d = projector.size
    unknown = sorted(set(kinds) - set(JUNK_KINDS))
    if unknown:
        raise ValueError(f"unknown junk kinds {unknown}; expected {', '.join(JUNK_KINDS)}")
    if rotations.shape != (n, 3, 3) or shifts_angst.shape != (n, 2):
        raise ValueError("rotations must be (n, 3, 3) and shifts_angst (n, 2) for n kinds")
    out = torch.zeros((n, d, d), dtype=torch.float64)
    shifts = shifts_angst.to(torch.float64)
    for kind in JUNK_KINDS:
        idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind], dtype=torch.long)
        m = len(idx)
        if m == 0:
            continue
        c = None if ctf is None else ctf[idx]
        if kind in ("empty", "contaminant"):
            img = _empty(m, d, generator) if kind == "empty" else _contaminant(m, d, generator)
            out[idx] = img if c is None else apply_ctf(img, c.to(torch.float64))
        elif kind == "off_centre":
            extra = (
                _unit_vectors_2d(m, generator)
                * (radius_px * angpix * _uniform(m, 1.0, 1.5, generator))[:, None]
            )
            out[idx] = _project_subset(projector, rotations[idx], shifts[idx] + extra, angpix, c)
        elif kind == "overlap":
            half = (
                _unit_vectors_2d(m, generator)
                * (0.5 * radius_px * angpix * _uniform(m, 1.0, 1.6, generator))[:, None]
            )
            second = uniform_poses(m, generator, dtype=rotations.dtype)
            first = _project_subset(projector, rotations[idx], shifts[idx] + half, angpix, c)
            out[idx] = first + _project_subset(projector, second, shifts[idx] - half, angpix, c)
        else:  # other_protein
            if other is None:
                blobs = random_blob_volume(d, radius_px, generator)
                other = Projector(blobs)
            out[idx] = _project_subset(other, rotations[idx], shifts[idx], angpix, c)
    return out
