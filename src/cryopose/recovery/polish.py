"""Polishing recovered orientations by projection matching against their own reconstruction.

Orientations recovered from distances (:mod:`cryopose.recovery.spectral`) are degrees to
tens of degrees off (E_OR 7.6 to 35 deg in the benchmark below), and they are determined
only up to O(4). Every ab initio pipeline ends the same way: reconstruct a map from the
current orientations, re-assign each projection's orientation by projection matching
against that map, repeat. Nothing here uses the truth.

**Frame** (:func:`resolve_frame`). Distances fix the orientations only up to
``R -> L R B`` or ``R -> L R^T B`` (:mod:`cryopose.recovery.align`). The right factor ``B``
is a change of map frame and harmless, but the left factor ``L`` and the transpose are not:
with them the poses do not describe the images and the reconstruction is a blur. They are
found by search: for every candidate ``L`` of a HEALPix SO(3) grid (order 1, 576 rotations)
and both transpose options, the poses ``L f(R_i)`` of a random subset are reconstructed
into two half maps (images Fourier-cropped to a small box), scored by the mean half-map FSC
over the low shells, and the best candidate is refined on local grids. The correct frame
gives coherent half maps; a wrong one averages unrelated views.

**Polishing** (:func:`polish_orientations`). Each round reconstructs gold-standard half maps
from the current poses (particles split by a fixed random half-set label), takes the
resolution where their FSC drops below ``fsc_threshold`` and matches every particle against
the map of *its own* half. First a global search (:func:`global_match`: every rotation of a
HEALPix SO(3) grid, order 2 by default, scored by band-limited correlation with the CTF, no
translations) finds each particle's best grid pose, so that particles the distances put far
off are found again; then local searches (:func:`cryopose.pose.refine.match_local`:
candidates ``dR @ R`` on a local grid, Fourier cross-correlation band-limited at that
resolution) run in successive passes, each around the previous winner (default +-15 deg at
7.5, +-5 at 2.5, +-2 at 1); the first pass runs both from the current pose and from the
global winner and keeps the better. Orientations only: the images are centred by their
origins and the origins are kept. Measured by ``benchmarks/bench_recovery.py --max-minutes
15`` (5,000 projections of 5j0n polished at 7.33 A/px, 40 px, one thread on a shared 2-core
machine): frame search 12-25 s, a round 28-65 s; E_OR from distances alone -> polished (3
rounds): 7.6 -> 0.6 deg noiseless, 8.1 -> 1.1 deg at noise variance 4, 14.5 -> 2.4 deg at
variance 16, 35.2 -> 4.7 deg at variance 36.

Example usage::

    images, angpix = load_images(table, angpix=7.3)
    R = resolve_frame(images, R_recovered, angpix).rotations
    result = polish_orientations(images, R, angpix)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from cryopose._progress import progress as progress_reporter
from cryopose.errors import InputError
from cryopose.evaluation.fsc import fsc, resolution_at
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.healpix import so3_healpix_grid
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.fft import rfft_freq_grid, rfftn_centred
from cryopose.imaging.projection import Projector
from cryopose.imaging.reconstruct import FourierReconstructor
from cryopose.imaging.resample import fourier_crop, rescale, window_centred
from cryopose.imaging.shift import origin_to_image_shift, shift_images
from cryopose.io.mrc import StackCache, read_images
from cryopose.io.particles import ParticleTable
from cryopose.pose._local_grid import local_rotation_grid
from cryopose.pose.refine import match_local

__all__ = [
    "FrameResult",
    "PolishResult",
    "PolishSettings",
    "global_match",
    "load_images",
    "polish_orientations",
    "resolve_frame",
    "table_ctf",
]


@dataclass(frozen=True)
class PolishSettings:
    """Settings of :func:`resolve_frame` and :func:`polish_orientations`.

    Attributes
    ----------
    rounds
        Reconstruct-and-match rounds (0: no polishing).
    first_passes
        ``(range, step)`` in degrees of the successive local searches of the first round,
        each around the previous winner (``local_rotation_grid``; 33 candidates each when
        ``range = 2 step``).
    passes
        The same for the later rounds.
    fsc_threshold
        The matching uses frequencies up to where the half-map FSC drops below this.
    min_resolution_angst
        Never match at a resolution worse than this (early rounds' FSC can be pessimistic).
    frame_particles
        Particles reconstructed per frame candidate.
    frame_box
        Box the images are Fourier-cropped to for the frame search.
    frame_order
        Order of the HEALPix SO(3) grid of frame candidates.
    global_order
        Order of a HEALPix SO(3) grid searched globally for every particle in every round
        (2: 4,608 rotations, about 15 deg apart); the first local pass then starts both from
        the current pose and from the global winner and keeps the better. ``None``: local
        searches only (safer for tiny, coarse images: at 20 px and 11.4 A/px about 1% of
        noiseless EMD-3197 particles correlated better with a far-off view).
    batch_size
        Particles matched at once.
    seed
        Seed of the half-set split and of the frame subset.
    """

    rounds: int = 3
    first_passes: tuple[tuple[float, float], ...] = ((15.0, 7.5), (5.0, 2.5), (2.0, 1.0))
    passes: tuple[tuple[float, float], ...] = ((15.0, 7.5), (5.0, 2.5), (2.0, 1.0))
    fsc_threshold: float = 0.143
    min_resolution_angst: float = 30.0
    frame_particles: int = 300
    frame_box: int = 20
    frame_order: int = 1
    global_order: int | None = 2
    batch_size: int = 16
    seed: int = 0


@dataclass(frozen=True)
class FrameResult:
    """Outcome of :func:`resolve_frame`.

    Attributes
    ----------
    rotations
        ``(n, 3, 3)`` float64 poses ``L f(R_i)`` in a frame consistent with the images.
    left
        ``(3, 3)`` the left factor ``L``.
    transposed
        Whether ``f(R) = R^T``.
    score
        Mean low-shell half-map FSC of the winner.
    runner_up
        Best score among candidates of the other transpose option.
    """

    rotations: torch.Tensor
    left: torch.Tensor
    transposed: bool
    score: float
    runner_up: float


@dataclass(frozen=True)
class PolishResult:
    """Outcome of :func:`polish_orientations`.

    Attributes
    ----------
    rotations
        ``(n, 3, 3)`` float64 polished poses.
    resolution_angst
        Half-map FSC resolution (at ``fsc_threshold``) before each round and after the last.
    median_change_deg
        Median pose change of each round, degrees.
    """

    rotations: torch.Tensor
    resolution_angst: list[float] = field(default_factory=list)
    median_change_deg: list[float] = field(default_factory=list)


CtfFn = Callable[[torch.Tensor], torch.Tensor]
"""``ctf(index (B,) int64) -> (B, D, D // 2 + 1)`` CTF of those particles (rfft layout)."""


def load_images(
    table: ParticleTable,
    angpix: float | None = None,
    box: int | None = None,
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[torch.Tensor, float]:
    """All particle images of a table, centred by their origins, at a working pixel size.

    Parameters
    ----------
    table
        Particles with ``rlnImageName`` and one pixel size.
    angpix
        Working pixel size in Angstrom (Fourier-resampled); ``None`` keeps the images'.
    box
        Working box (real-space window after resampling); ``None``: the whole field of view.
    batch_size
        Images read at once.
    progress
        Report progress.

    Returns
    -------
    images, angpix
        ``(n, D, D)`` float32 images (memory ``4 n D^2`` bytes) and their pixel size.
    """
    apix_all = table.angpix()
    apix = float(apix_all[0])
    if not np.allclose(apix_all, apix, rtol=1e-4):
        raise InputError(table.path, "particles have different pixel sizes; expected one")
    n = len(table)
    locations = table.image_locations()
    shifts = table.shifts_angst(dtype=torch.float64) if table.has_shifts else None
    target = apix if angpix is None else float(angpix)
    parts = []
    out_apix = apix
    with (
        StackCache() as cache,
        progress_reporter("reading images", n, enabled=progress, unit="images") as advance,
    ):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = read_images(locations[start:stop], cache).to(torch.float64)
            if shifts is not None:
                x = shift_images(x, -origin_to_image_shift(shifts[start:stop], apix))
            size = int(x.shape[-1])
            if abs(target - apix) > 1e-3 * apix:
                x = rescale(x, apix, target)
                out_apix = apix * size / int(x.shape[-1])
            if box is not None:
                x = window_centred(x, box)
            parts.append(x.to(torch.float32))
            advance(stop - start)
    return torch.cat(parts), out_apix


def table_ctf(table: ParticleTable, box: int, angpix: float) -> CtfFn | None:
    """CTF callable for :func:`polish_orientations` (``None`` when the table has no CTF)."""
    if not table.has_ctf:
        return None
    p = table.ctf_parameters()

    def ctf(index: torch.Tensor) -> torch.Tensor:
        i = index.cpu()
        return ctf_2d(
            (box, box), angpix, p["defocus_u"][i], p["defocus_v"][i], p["defocus_angle"][i],
            p["voltage"][i], p["cs"][i], p["amplitude_contrast"][i], p["phase_shift"][i],
            p["bfactor"][i], p["ctf_scale"][i],
        )  # fmt: skip

    return ctf


def _half_labels(n: int, seed: int) -> torch.Tensor:
    """``(n,)`` labels 1 and 2, balanced, in random order."""
    gen = torch.Generator().manual_seed(seed)
    labels = 1 + (torch.arange(n) % 2)
    return labels[torch.randperm(n, generator=gen)]


def _half_maps(
    images: torch.Tensor,
    rotations: torch.Tensor,
    labels: torch.Tensor,
    angpix: float,
    ctf: CtfFn | None,
    index: torch.Tensor | None = None,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two half maps ``(D, D, D)`` from ``images`` at ``rotations`` split by ``labels``."""
    box = int(images.shape[-1])
    maps = []
    for k in (1, 2):
        rec = FourierReconstructor(box, angpix)
        sel = torch.nonzero(labels == k).flatten()
        for start in range(0, int(sel.numel()), batch_size):
            rows = sel[start : start + batch_size]
            c = None if ctf is None else ctf(rows if index is None else index[rows])
            rec.insert(images[rows], rotations[rows], None, c, None)
        maps.append(rec.finalize())
    return maps[0], maps[1]


def _frame_score(h1: torch.Tensor, h2: torch.Tensor) -> float:
    """Mean FSC of shells 2 to D / 4: the low resolutions a blurred frame still fills."""
    curve = fsc(h1.to(torch.float64), h2.to(torch.float64))
    top = max(3, int(h1.shape[-1]) // 4 + 1)
    return float(curve[2:top].mean())


def resolve_frame(
    images: torch.Tensor,
    rotations: torch.Tensor,
    angpix: float,
    settings: PolishSettings | None = None,
    *,
    ctf: CtfFn | None = None,
    progress: bool = True,
) -> FrameResult:
    """Undo the left factor and transpose that distances leave open (module docstring).

    Parameters
    ----------
    images
        ``(n, D, D)`` centred particle images.
    rotations
        ``(n, 3, 3)`` recovered poses, correct up to ``R -> L R B`` or ``L R^T B``.
    angpix
        Pixel size of ``images`` in Angstrom.
    settings
        ``frame_particles``, ``frame_box``, ``frame_order`` and ``seed`` are used.
    ctf
        CTF of particles by index, at ``images``' box and pixel size (not used in the frame
        search, which works at low resolution where the CTF is close to its sign).
    progress
        Report progress.

    Returns
    -------
    FrameResult
    """
    del ctf  # low resolution: the first CTF zero is beyond the frame box's Nyquist
    s = PolishSettings() if settings is None else settings
    n, d = int(images.shape[0]), int(images.shape[-1])
    gen = torch.Generator().manual_seed(s.seed + 1)
    pick = torch.randperm(n, generator=gen)[: min(n, s.frame_particles)]
    fbox = min(d, s.frame_box)
    x = fourier_crop(images[pick].to(torch.float64), fbox).to(torch.float32)
    fapix = angpix * d / fbox
    labels = _half_labels(int(pick.numel()), s.seed + 2)
    R64 = rotations.to(torch.float64)
    options = (R64[pick], R64[pick].transpose(-1, -2))

    def score(left: torch.Tensor, t: int) -> float:
        h1, h2 = _half_maps(x, left @ options[t], labels, fapix, None)
        return _frame_score(h1, h2)

    grid = so3_healpix_grid(s.frame_order, dtype=torch.float64)
    results: list[tuple[float, int, torch.Tensor]] = []
    with progress_reporter(
        "frame search", 2 * grid.shape[0], enabled=progress, unit="frames"
    ) as advance:
        for t in (0, 1):
            for g in grid:
                results.append((score(g, t), t, g))
                advance(1)
    results.sort(key=lambda r: -r[0])
    # Refine the best few on two local grids around them.
    best = results[0]
    for start in results[:1]:
        cur = start
        for radius, step in ((20.0, 10.0), (8.0, 4.0), (3.0, 1.5)):
            for dr in local_rotation_grid(radius, step)[1:]:
                cand = dr @ cur[2]
                value = score(cand, cur[1])
                if value > cur[0]:
                    cur = (value, cur[1], cand)
        if cur[0] > best[0]:
            best = cur
    other = max(r[0] for r in results if r[1] != best[1])
    left, t = best[2], best[1]
    full = R64.transpose(-1, -2) if t else R64
    return FrameResult(left @ full, left, bool(t), best[0], other)


def _band(box: int, angpix: float, resolution: float) -> torch.Tensor:
    """``(D, D // 2 + 1)`` bool: ``0 < |k| <= min(Nyquist, angpix / resolution)`` cycles/px."""
    ky, kx = rfft_freq_grid((box, box), dtype=torch.float64)
    k2 = kx * kx + ky * ky
    kmax = min(0.5, angpix / resolution)
    return (k2 > 0) & (k2 <= kmax * kmax)


def global_match(
    projector: Projector,
    images: torch.Tensor,
    angpix: float,
    grid: torch.Tensor,
    resolution_angst: float,
    *,
    ctf: CtfFn | None = None,
    index: torch.Tensor | None = None,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rotation of a grid for every image, by band-limited normalised correlation.

    No translation search (the images are centred). The correlation of image ``x`` and
    reference ``p`` (times the particle's CTF ``c``) over the band is
    ``sum Re(x conj(p)) c / sqrt(sum |x|^2 sum |p|^2 c^2)`` (Hermitian weights included), so
    both sums over all grid rotations are matrix products, CTF or not.

    Parameters
    ----------
    projector
        Projector of the reference (box ``D``).
    images
        ``(n, D, D)`` centred images.
    angpix
        Pixel size in Angstrom.
    grid
        ``(K, 3, 3)`` candidate rotations.
    resolution_angst
        Low-pass of the matching.
    ctf
        CTF of particles by index (``None``: no CTF).
    index
        ``(n,)`` particle indices passed to ``ctf`` (default ``0 .. n - 1``).
    batch_size
        Images scored at once (memory ``batch_size x K`` floats).

    Returns
    -------
    rotations, cc
        ``(n, 3, 3)`` float64 best grid rotations and ``(n,)`` their correlations.
    """
    d = projector.size
    mask = _band(d, angpix, resolution_angst)
    w = torch.full((d // 2 + 1,), 2.0, dtype=torch.float64)
    w[0] = 1.0
    if d % 2 == 0:
        w[-1] = 1.0
    wm = w.expand(d, -1)[mask]  # (M,)
    p = projector.slices(grid)[:, mask].to(torch.complex128)  # (K, M)
    ref = torch.cat([p.real, p.imag], dim=1).T.contiguous()  # (2M, K)
    ref2 = (p.real**2 + p.imag**2).T.contiguous()  # (M, K)
    n = int(images.shape[0])
    idx = torch.arange(n) if index is None else index
    best_r, best_cc = [], []
    for start in range(0, n, batch_size):
        x = rfftn_centred(images[start : start + batch_size].to(torch.float64))[:, mask]
        c = None if ctf is None else ctf(idx[start : start + batch_size])[:, mask]
        cw = wm if c is None else c.to(torch.float64) * wm
        num = torch.cat([x.real * cw, x.imag * cw], dim=1) @ ref  # (B, K)
        c2w = wm.expand(x.shape[0], -1) if c is None else c.to(torch.float64) * cw
        den = torch.sqrt(c2w @ ref2) * torch.sqrt(((x.real**2 + x.imag**2) * wm).sum(-1))[:, None]
        cc, best = (num / den.clamp_min(1e-30)).max(dim=1)
        best_r.append(grid[best].to(torch.float64))
        best_cc.append(cc)
    return torch.cat(best_r), torch.cat(best_cc)


def polish_orientations(
    images: torch.Tensor,
    rotations: torch.Tensor,
    angpix: float,
    settings: PolishSettings | None = None,
    *,
    ctf: CtfFn | None = None,
    progress: bool = True,
) -> PolishResult:
    """Reconstruct-and-match rounds from poses in a consistent frame (module docstring).

    Parameters
    ----------
    images
        ``(n, D, D)`` centred particle images.
    rotations
        ``(n, 3, 3)`` poses (e.g. :attr:`FrameResult.rotations`).
    angpix
        Pixel size in Angstrom.
    settings
        Polishing settings.
    ctf
        CTF of particles by index (``None``: no CTF).
    progress
        Report progress.

    Returns
    -------
    PolishResult
    """
    s = PolishSettings() if settings is None else settings
    n, d = int(images.shape[0]), int(images.shape[-1])
    if rotations.shape != (n, 3, 3):
        raise InputError(None, f"rotations {tuple(rotations.shape)}; expected ({n}, 3, 3)")
    labels = _half_labels(n, s.seed)
    R = rotations.to(torch.float64).clone()
    resolutions: list[float] = []
    changes: list[float] = []
    zero = torch.zeros(1, 2, dtype=torch.float64)
    global_grid = (
        None if s.global_order is None else so3_healpix_grid(s.global_order, dtype=torch.float64)
    )
    for r in range(s.rounds + 1):
        h1, h2 = _half_maps(images, R, labels, angpix, ctf)
        curve = fsc(h1.to(torch.float64), h2.to(torch.float64))
        res = resolution_at(curve, d, angpix, s.fsc_threshold)
        resolutions.append(res)
        if r == s.rounds:
            break
        band = min(res, s.min_resolution_angst)
        grids = [local_rotation_grid(a, b) for a, b in (s.first_passes if r == 0 else s.passes)]
        new = R.clone()
        projectors = {1: Projector(h1), 2: Projector(h2)}
        starts: dict[int, torch.Tensor] = {}
        if global_grid is not None:
            for k in (1, 2):
                sel = torch.nonzero(labels == k).flatten()
                starts[k], _ = global_match(
                    projectors[k], images[sel], angpix, global_grid, band, ctf=ctf, index=sel
                )
        with progress_reporter(
            f"polishing round {r + 1} at {band:.1f} A", n, enabled=progress, unit="particles"
        ) as advance:
            for k in (1, 2):
                sel = torch.nonzero(labels == k).flatten()
                for start in range(0, int(sel.numel()), s.batch_size):
                    rows = sel[start : start + s.batch_size]
                    c = None if ctf is None else ctf(rows)
                    origins = zero.expand(int(rows.numel()), 2)
                    cur = R[rows]
                    for p, grid in enumerate(grids):
                        m = match_local(
                            projectors[k], images[rows], cur, origins, angpix, grid, ctf=c,
                            max_shift_angst=0.0, resolution_angst=band, subpixel=False,
                        )  # fmt: skip
                        cur = m.rotations.to(torch.float64)
                        if p == 0 and k in starts:
                            # The same pass from the global winners; keep the better start.
                            g0 = starts[k][start : start + s.batch_size]
                            g = match_local(
                                projectors[k], images[rows], g0, origins, angpix, grid, ctf=c,
                                max_shift_angst=0.0, resolution_angst=band, subpixel=False,
                            )  # fmt: skip
                            cur = torch.where(
                                (g.cc > m.cc)[:, None, None], g.rotations.to(torch.float64), cur
                            )
                    new[rows] = cur
                    advance(int(rows.numel()))
        changes.append(float(torch.rad2deg(geodesic_distance(R, new)).median()))
        R = new
    return PolishResult(R, resolutions, changes)
