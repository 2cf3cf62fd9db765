"""Local pose refinement by projection matching against a reference map.

The network's poses are a few degrees off (they sit on a HEALPix grid); this polishes them as
cryoPARES does, with a short local search. For every particle and every candidate pose
``dR @ R`` (``R`` the particle's pose, ``dR`` a small rotation from
:func:`cryopose.pose._local_grid.local_rotation_grid`, image-frame meaning explained there):

1. the reference projection is one central slice of the map's padded rfft
   (:class:`cryopose.imaging.Projector`: all ``B x K`` slices of a batch in one call),
   multiplied by the particle's CTF (RELION's, :func:`cryopose.imaging.ctf_2d`);
2. both the particle image (first re-centred by its current origin) and the projection are
   band-limited to ``0 < |k| <= angpix / resolution`` (no DC: the correlation ignores the mean)
   and normalised, so the cross-correlation is the real-space Pearson-like correlation
   ``sum a b / sqrt(sum a^2 sum b^2)`` of the two band-passed images;
3. one batched inverse FFT of the cross-power spectrum gives that correlation at every
   translation; its peak inside the disc of radius ``max_shift`` around the current origin
   (sub-pixel by a parabola through the peak and its neighbours, along x and along y) is the
   candidate's shift and score.

Before that, when the particles carry the network's top-k grid poses
(:mod:`cryopose.pose.candidates`; ``cryopose infer`` writes them), each particle is matched
once against its input pose and each of its first ``RefineConfig.candidates`` grid poses
(:func:`match_candidates`: the same correlation, CTF and shift search, no local grid), and the
local search starts from the best. A network trained for minutes often has the true pose
among its top 10 while its averaged pose lies tens of degrees away, out of a local search's
reach. ``cryoposeRefineCandidate`` records where the search started (0: the input pose).
The ranking runs at a low resolution (``RefineConfig.rank_resolution_angst``), and each grid
cell's slice is projected once and reused by every particle that has it as a candidate
(:mod:`cryopose.pose._slice_cache`).

The best candidate wins: new pose, new origin (RELION sign: the image is the centred
projection translated by ``-origin``) and its correlation ``cryoposeRefineCC``. An optional
second, finer pass repeats the search around the winner. Particles stream from memory-mapped
stacks in batches, so memory is bounded by the batch size, not the particle count.

Score
-----
The significance of the match is the z-score of the winning correlation among all ``D^2``
translations of its correlation map, ``z = (cc - mean) / std``: a true particle at its pose
gives a sharp peak (measured on 64 px, SNR 0.1 simulations: z = 7.1 +- 0.7), pure noise
does not (2.6 +- 0.5), a particle at a wrong pose lies in between (4.4 +- 0.6). (The z-score
of the best candidate among the ``K`` local poses, ``MatchResult.zscore``, is not used: the
local landscape is smooth for particles and noise alike, about 2.2 vs 2.6.)
``cryoposeRefineScore`` combines it with the network's confidence ``p``
(``rlnMaxValueProbDistribution`` clipped to [0, 1], or 1 when the column is absent)::

    cryoposeRefineScore = p / (1 + exp(-(z - z_mid) / z_width))     # in (0, 1)

with ``z_mid = 4`` and ``z_width = 1`` by default (``RefineConfig.score_z_mid``,
``score_z_width``). ``rlnMaxValueProbDistribution`` itself is left unchanged (it keeps the
network's value). The significance itself is written as ``cryoposeRefinePeakZ``, and
:func:`refine_star` adds ``cryoposeRefineZScore``, its robust z-score against all the particles
of the star file (:func:`cryopose.pose.pruning.refine_zscores`), which ``cryopose prune
--score cryoposeRefineZScore`` prunes junk by (see :mod:`cryopose.pose.pruning`).

Map and particles must agree: same box and same pixel size (1e-3 relative), else an
:class:`~cryopose.errors.InputError` names both files, e.g. ``map box 128 at 1.000 A/px vs
particles box 64 at 2.000 A/px``. With ``RefineConfig(rescale_map=True)`` a map at another
pixel size is instead Fourier-resampled to the particles' pixel size (its box becomes
``round(D * angpix_map / angpix)``, the pixel size actually reached differs by less than one
part in that box) and then cropped or zero-padded in real space to the particles' box.

>>> from cryopose.pose.refine import RefineConfig, refine_star  # doctest: +SKIP
>>> result = refine_star("particles.star", "map.mrc", "refined.star", RefineConfig(fine=True))
... # doctest: +SKIP
>>> float(result.angle_change_deg.median())  # doctest: +SKIP
2.3
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose._progress import progress as progress_bar
from cryopose.data.predictions import write_predictions
from cryopose.errors import InputError
from cryopose.geometry.distance import geodesic_distance
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.fft import rfft_freq_grid, rfftn_centred
from cryopose.imaging.projection import Projector
from cryopose.imaging.resample import fourier_resize, resize_rfft, window_centred
from cryopose.imaging.shift import fourier_shift_rfft, origin_to_image_shift
from cryopose.io.mrc import StackCache, read_images, read_map
from cryopose.io.particles import ParticleTable, read_particles
from cryopose.pose._local_grid import local_rotation_grid, local_rotations
from cryopose.pose._slice_cache import GridSliceCache
from cryopose.pose.candidates import Candidates, table_candidates
from cryopose.pose.pruning import REFINE_ZSCORE_COLUMN, refine_zscores

__all__ = [
    "MatchResult",
    "PreparedReference",
    "RefineConfig",
    "RefineResult",
    "load_reference",
    "match_candidates",
    "match_local",
    "refine_particles",
    "refine_star",
    "slice_band",
    "working_box",
]

PROB_COLUMN = "rlnMaxValueProbDistribution"
CC_COLUMN = "cryoposeRefineCC"
SCORE_COLUMN = "cryoposeRefineScore"
PEAK_Z_COLUMN = "cryoposeRefinePeakZ"
CANDIDATE_COLUMN = "cryoposeRefineCandidate"


@dataclass(frozen=True)
class RefineConfig:
    """Settings of a local refinement (saved as JSON next to the output star file).

    Attributes
    ----------
    range_deg, step_deg
        Coarse pass: candidate rotations within ``range_deg`` degrees of the pose, on a cubic
        axis-angle grid of spacing ``step_deg`` (defaults +-6 at 3 degrees: 33 candidates).
    fine
        Run a second pass around the coarse winner.
    fine_range_deg, fine_step_deg
        Grid of the fine pass (defaults +-2 degrees at 1: 33 candidates). Measured on 64 px,
        SNR 0.1, poses off by 5 degrees: these defaults reach a median error of 1.96 degrees at
        35-39 particles/s on one thread, where one pass of +-6 at 2 degrees (123 candidates)
        reaches 2.10 at 18 particles/s; cropping the coarse pass to half the box was worse.
    max_shift_angst
        Translations searched: the disc of this radius (Angstrom) around the particle's
        current origin.
    resolution_angst
        Low-pass for matching in Angstrom (frequencies ``|k| <= 1 / resolution``); ``None``
        uses everything up to Nyquist.
    ctf
        Multiply the projections by each particle's CTF (needs the CTF columns).
    subpixel
        Refine the correlation peak by parabolic interpolation (else whole pixels).
    batch_size
        Particles matched at once (each holds ``K`` projections and correlation maps).
    device
        Torch device.
    pad_factor
        Fourier oversampling of the map's transform (RELION's default 2).
    rescale_map
        Fourier-resample a map whose pixel size differs from the particles' (see the module
        docstring) instead of raising.
    score_z_mid, score_z_width
        Peak z-score at which ``cryoposeRefineScore`` is half the network confidence, and
        the width of the logistic (module docstring).
    symmetry
        Point group of the map, only recorded (refinement works on any pose).
    candidates
        When the particles come with the network's top-k grid poses
        (:mod:`cryopose.pose.candidates`), match each particle against its input pose and its
        first ``candidates`` of them (one correlation each, CTF and shift search included)
        and run the local search from the best; ``0`` ignores them. Measured with
        ``benchmarks/bench_pruning.py --minutes 6`` (1,000 particles of 64 px, SNR 0.1, a
        network at 14.5 degrees median error): median error of the true particles after
        refinement 9.6 degrees without candidates, 3.5 with 10 (94% of the particles start
        from a candidate), junk-pruning ROC AUC of ``cryoposeRefineZScore`` 0.984 -> 0.987,
        for 34.5 instead of 25.9 s per 1,000 particles on one (shared) thread. Ranked at the
        coarse resolution, more candidates are cheap, and a network trained for minutes often
        has the true cell further down its list: on ``benchmarks/bench_pipeline.py``'s data
        (1,000 particles, a network at 16.7 degrees median error), 10 / 50 / 100 / 200
        candidates put 66 / 86 / 91 / 94% of the particles within 10 degrees and the map at
        6.9 / 4.6 / 4.4 / 4.4 A (FSC 0.5 against the true map) in 10.0 / 10.9 / 13.1 / 20.1 s
        for the whole ``cryopose pipeline``. ``cryopose pipeline`` asks the network for as
        many; ``cryopose infer --top-k`` and ``cryopose refine --candidates`` default to 100
        too.
    coarse_resolution_angst
        Low-pass (Angstrom) of the candidate ranking and of the coarse pass when a fine pass
        follows (the coarser of this and ``resolution_angst``); the fine pass, whose
        correlation gives the scores, uses ``resolution_angst``. These passes only have to
        land within the fine pass's reach, and at a low resolution they run on a
        Fourier-cropped box (:func:`working_box`: 36 instead of 64 px at 2 A/px). ``None``:
        as the fine pass.
    rank_resolution_angst
        Low-pass (Angstrom) of the candidate ranking alone (the coarser of this and the
        coarse pass's); ``None``: as the coarse pass. The ranking only has to pick the right
        region for the coarse pass, and it is the costliest step (``candidates`` + 1
        correlations per particle). Measured on ``benchmarks/bench_pipeline.py``'s data
        (1,000 particles, 100 candidates from its 25-min network, the previous experiment's
        map as reference, one thread): ranking at 8 / 12 / 16 A gives a median error after
        refinement of 1.91 / 1.94 / 2.09 degrees, 96.1 / 96.4 / 95.0% within 10 degrees, in
        10.0 / 8.1 / 7.2 s.
    """

    range_deg: float = 6.0
    step_deg: float = 3.0
    fine: bool = True
    fine_range_deg: float = 2.0
    fine_step_deg: float = 1.0
    max_shift_angst: float = 10.0
    resolution_angst: float | None = None
    ctf: bool = True
    subpixel: bool = True
    batch_size: int = 16
    device: str = "cpu"
    pad_factor: float = 2.0
    rescale_map: bool = False
    score_z_mid: float = 4.0
    score_z_width: float = 1.0
    symmetry: str = "C1"
    candidates: int = 100
    coarse_resolution_angst: float | None = 8.0
    rank_resolution_angst: float | None = 12.0

    def validate(self) -> None:
        """Raise :class:`InputError` (no file) for settings that cannot work."""
        checks = [
            (self.range_deg >= 0 and self.step_deg > 0, "range >= 0 and step > 0 degrees"),
            (
                self.fine_range_deg >= 0 and self.fine_step_deg > 0,
                "fine range >= 0 and fine step > 0 degrees",
            ),
            (self.max_shift_angst >= 0, "max shift >= 0 Angstrom"),
            (
                self.resolution_angst is None or self.resolution_angst > 0,
                "a positive resolution in Angstrom",
            ),
            (self.batch_size >= 1, "batch size >= 1"),
            (self.pad_factor >= 1, "pad factor >= 1"),
            (self.score_z_width > 0, "score z width > 0"),
            (self.candidates >= 0, "candidates >= 0"),
            (
                self.coarse_resolution_angst is None or self.coarse_resolution_angst > 0,
                "a positive coarse resolution in Angstrom",
            ),
            (
                self.rank_resolution_angst is None or self.rank_resolution_angst > 0,
                "a positive ranking resolution in Angstrom",
            ),
        ]
        for ok, expected in checks:
            if not ok:
                raise InputError(None, f"refinement settings {self}: expected {expected}")


@dataclass
class MatchResult:
    """Best candidate of a local search, per particle.

    Attributes
    ----------
    rotations
        ``(B, 3, 3)`` winning RELION rotation matrices.
    origins_angst
        ``(B, 2)`` new origins (x, y) in Angstrom, RELION sign.
    cc
        ``(B,)`` normalised correlation of the winner.
    zscore
        ``(B,)`` z-score of the winner's correlation among the ``K`` candidates.
    peak_zscore
        ``(B,)`` z-score of the winner's correlation among all ``D^2`` translations of its
        correlation map (the significance of the translational peak).
    index
        ``(B,)`` index of the winning candidate in the grid.
    scores
        ``(B, K)`` best correlation of every candidate (over its allowed shifts).
    """

    rotations: torch.Tensor
    origins_angst: torch.Tensor
    cc: torch.Tensor
    zscore: torch.Tensor
    peak_zscore: torch.Tensor
    index: torch.Tensor
    scores: torch.Tensor


@dataclass
class RefineResult:
    """Outcome of :func:`refine_star` / :func:`refine_particles`.

    Attributes
    ----------
    rotations
        ``(N, 3, 3)`` refined rotation matrices (float64).
    origins_angst
        ``(N, 2)`` refined origins in Angstrom (RELION sign).
    cc
        ``(N,)`` correlation of the refined pose (``cryoposeRefineCC``).
    zscore
        ``(N,)`` z-score of the winning correlation peak among all translations.
    score
        ``(N,)`` ``cryoposeRefineScore``.
    angle_change_deg
        ``(N,)`` geodesic angle between input and refined pose, degrees.
    shift_change_angst
        ``(N,)`` length of the origin change, Angstrom.
    n_local_poses
        Candidates per particle in the coarse and (0 without) fine pass.
    seconds
        Wall time of the matching.
    out_star
        The star file written (``None`` from :func:`refine_particles`).
    n_candidates
        Network candidates matched per particle before the local search (0: none).
    candidate
        ``(N,)`` int64 start of the local search: 0 the input pose, ``i >= 1`` the network's
        ``i``-th most probable grid pose (``cryoposeRefineCandidate``); all 0 without
        candidates.
    """

    rotations: torch.Tensor
    origins_angst: torch.Tensor
    cc: torch.Tensor
    zscore: torch.Tensor
    score: torch.Tensor
    angle_change_deg: torch.Tensor
    shift_change_angst: torch.Tensor
    n_local_poses: tuple[int, int]
    seconds: float
    out_star: Path | None = None
    n_candidates: int = 0
    candidate: torch.Tensor | None = None

    @property
    def n_particles(self) -> int:
        """Number of particles refined."""
        return int(self.cc.shape[0])

    @property
    def particles_per_second(self) -> float:
        """Matching throughput."""
        return self.n_particles / max(self.seconds, 1e-9)

    def summary(self) -> dict[str, float]:
        """Median changes, mean CC and score, throughput, candidate use (JSON-friendly)."""
        return {
            "n_particles": float(self.n_particles),
            "median_angle_change_deg": float(self.angle_change_deg.median()),
            "median_shift_change_angst": float(self.shift_change_angst.median()),
            "mean_cc": float(self.cc.mean()),
            "mean_score": float(self.score.mean()),
            "particles_per_second": self.particles_per_second,
            "n_candidates": float(self.n_candidates),
            "started_from_candidate_fraction": (
                float((self.candidate > 0).to(torch.float64).mean())
                if self.candidate is not None
                else 0.0
            ),
        }


# ---------------------------------------------------------------------- matching


def working_box(box: int, angpix: float, resolution: float | None) -> int:
    """Smallest box (even, 2-3-5 smooth, at most ``box``) whose rfft holds the matching band.

    The band ``|k| <= angpix / resolution`` cycles/px of a ``box`` image lies strictly inside
    the Nyquist circle of the returned box (one frequency to spare), so correlating the
    Fourier-cropped images gives the full correlation map at every ``box / result`` pixels.

    >>> working_box(64, 2.0, None), working_box(64, 2.0, 8.0), working_box(256, 1.0, 8.0)
    (64, 36, 72)
    """
    if resolution is None:
        return box
    kmax = min(0.5, angpix / resolution)
    need = 2 * math.ceil(kmax * box - 1e-9) + 2
    size = need + need % 2
    while not _smooth(size):
        size += 2
    return min(box, size)


def slice_band(full: int, angpix: float, resolution: float | None, crop: bool) -> tuple[int, float]:
    """Working box and band limit of :func:`match_candidates`'s slices.

    Returns ``(d, kmax)``: the slices' box (:func:`working_box` when ``crop``, else
    ``full``) and the highest frequency needed, in cycles per pixel of the ``full`` box
    (``Projector.slices(box=d, kmax=kmax)``; a little above the band, whose mask decides).
    """
    d = working_box(full, angpix, resolution) if crop else full
    work_angpix = angpix * full / d
    kmax = (0.5 if resolution is None else min(0.5, work_angpix / resolution)) * d / full
    return d, kmax * (1 + 1e-4)


def _smooth(n: int) -> bool:
    """Whether ``n`` has no prime factor above 5 (fast FFT sizes)."""
    for prime in (2, 3, 5):
        while n % prime == 0:
            n //= prime
    return n == 1


def _band_mask(
    box: int, angpix: float, resolution: float | None, device: torch.device
) -> torch.Tensor:
    """``(D, D // 2 + 1)`` bool: ``0 < |k| <= min(Nyquist, angpix / resolution)`` cycles/px."""
    ky, kx = rfft_freq_grid((box, box), device=device, dtype=torch.float64)
    k2 = kx * kx + ky * ky
    kmax = 0.5 if resolution is None else min(0.5, angpix / resolution)
    return (k2 > 0) & (k2 <= kmax * kmax)


def _hermitian_weights(box: int, device: torch.device) -> torch.Tensor:
    """``(D // 2 + 1,)`` multiplicity of every rfft column in the full spectrum (Parseval)."""
    w = torch.full((box // 2 + 1,), 2.0, device=device)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w


def _window_offsets(radius_px: float, box: int, device: torch.device) -> torch.Tensor:
    """``(W, 2)`` integer (x, y) translations with ``|t| <= radius_px`` (and inside the box)."""
    r = min(math.floor(radius_px + 1e-6), (box - 1) // 2)
    ticks = torch.arange(-r, r + 1, device=device)
    ty, tx = torch.meshgrid(ticks, ticks, indexing="ij")
    t = torch.stack([tx.reshape(-1), ty.reshape(-1)], dim=-1)
    inside = (t * t).sum(-1) <= radius_px * radius_px + 1e-6
    return t[inside]


def _parabola_offset(left: torch.Tensor, mid: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Vertex of the parabola through three equally spaced samples, in [-0.5, 0.5]."""
    denom = left - 2.0 * mid + right
    safe = torch.where(denom < 0, denom, torch.full_like(denom, -1.0))
    off = torch.where(denom < 0, 0.5 * (left - right) / safe, torch.zeros_like(denom))
    return off.clamp(-0.5, 0.5)


def match_local(
    projector: Projector,
    images: torch.Tensor,
    rotations: torch.Tensor,
    origins_angst: torch.Tensor,
    angpix: float,
    grid: torch.Tensor,
    ctf: torch.Tensor | None = None,
    max_shift_angst: float = 10.0,
    resolution_angst: float | None = None,
    subpixel: bool = True,
    crop: bool = False,
) -> MatchResult:
    """Best pose ``dR @ R`` and origin of each particle by local projection matching.

    Parameters
    ----------
    projector
        Projector of the reference map (box ``D`` equal to the images').
    images
        ``(B, D, D)`` particle images.
    rotations
        ``(B, 3, 3)`` current RELION rotation matrices.
    origins_angst
        ``(B, 2)`` current origins (x, y) in Angstrom (RELION sign); the translation search
        is centred on them.
    angpix
        Pixel size in Angstrom.
    grid
        ``(K, 3, 3)`` small rotations (:func:`~cryopose.pose._local_grid.local_rotation_grid`).
    ctf
        ``(B, D, D // 2 + 1)`` CTF (rfft layout of :func:`cryopose.imaging.ctf_2d`) or ``None``.
    max_shift_angst
        Radius of the translation search around the current origin.
    resolution_angst
        Low-pass of the matching (``None``: Nyquist).
    subpixel
        Parabolic sub-pixel peak (else whole-pixel translations from the current origin).
    crop
        Correlate on the smallest box that holds the band (:func:`working_box`): the same
        correlation, cheaper, with translations sampled every ``D / box`` pixels instead of
        every pixel (then refined by the parabola when ``subpixel``).

    Returns
    -------
    MatchResult
    """
    dev = projector.device
    cand = local_rotations(rotations.to(dev, torch.float64), grid.to(dev, torch.float64))
    return match_candidates(
        projector, images, cand, origins_angst, angpix, ctf, max_shift_angst,
        resolution_angst, subpixel, crop,
    )  # fmt: skip


def match_candidates(
    projector: Projector,
    images: torch.Tensor,
    candidates: torch.Tensor,
    origins_angst: torch.Tensor,
    angpix: float,
    ctf: torch.Tensor | None = None,
    max_shift_angst: float = 10.0,
    resolution_angst: float | None = None,
    subpixel: bool = True,
    crop: bool = False,
    slices: torch.Tensor | None = None,
) -> MatchResult:
    """Best of ``K`` given poses per particle (and its origin) by projection matching.

    The same correlation, CTF and translation search as :func:`match_local`, over an
    explicit list of poses per particle instead of a grid around one: e.g. the input pose
    and the network's top-k grid poses (:mod:`cryopose.pose.candidates`). Ties go to the
    lowest candidate index.

    Parameters
    ----------
    projector
        Projector of the reference map (box ``D`` equal to the images').
    images
        ``(B, D, D)`` particle images.
    candidates
        ``(B, K, 3, 3)`` RELION rotation matrices to compare.
    origins_angst
        ``(B, 2)`` current origins (x, y) in Angstrom (RELION sign), centre of the
        translation search.
    angpix, ctf, max_shift_angst, resolution_angst, subpixel, crop
        As in :func:`match_local`.
    slices
        ``(B, K, d, d // 2 + 1)`` central slices of ``candidates`` already projected at the
        box and band of :func:`slice_band` (e.g. from a
        :class:`~cryopose.pose._slice_cache.GridSliceCache`); ``None`` projects them.

    Returns
    -------
    MatchResult
        ``index`` is the winner's position in ``candidates``; ``zscore`` is its correlation's
        z-score among the ``K`` candidates.
    """
    dev = projector.device
    cand = candidates.to(dev, torch.float64)
    if cand.ndim != 4 or cand.shape[0] != images.shape[0] or cand.shape[-2:] != (3, 3):
        raise ValueError(
            f"expected candidates ({images.shape[0]}, K, 3, 3), got {tuple(cand.shape)}"
        )
    b, full = images.shape[0], projector.size
    if images.shape[-2:] != (full, full):
        raise ValueError(f"images are {tuple(images.shape[-2:])}, the projector's box is {full}")
    real = projector.dtype
    # Work on the smallest box that holds the band: the same correlation, sampled on a grid
    # of ``full / d`` pixels (cheaper projections and transforms at a low resolution).
    d, kmax = slice_band(full, angpix, resolution_angst, crop)
    work_angpix = angpix * full / d
    band = _band_mask(d, work_angpix, resolution_angst, dev)
    weights = _hermitian_weights(d, dev).to(real)
    s0 = origin_to_image_shift(origins_angst.to(dev, torch.float64), angpix)  # (B, 2) px
    # Re-centre the images by their current origins: translations are then searched in a
    # fixed disc around index 0 of the correlation map.
    x = rfftn_centred(images.to(dev, real))
    x = fourier_shift_rfft(x, (-s0).to(real), (full, full))
    x = resize_rfft(x, (full, full), (d, d)) * band
    x_norm = torch.sqrt(((x.real**2 + x.imag**2) * weights).sum((-2, -1)))  # (B,)
    # The reference is CTF * slice in the band. The CTF is real, so sum x conj(CTF p) =
    # sum (CTF x) conj(p): it multiplies the B images once instead of the B x K slices.
    half = d * (d // 2 + 1)
    filt = band.to(real) if ctf is None else resize_rfft(ctf.to(dev, real), (full, full), (d, d))
    filt = (filt * band).expand(b, d, d // 2 + 1)
    xf = x * filt
    k = cand.shape[1]
    shape = (b, k, d, d // 2 + 1)
    if slices is None:
        # Only the band's frequencies are projected.
        p = projector.slices(cand.reshape(-1, 3, 3), box=d, kmax=kmax).reshape(shape)
    elif tuple(slices.shape) != shape:
        raise ValueError(f"expected slices {shape}, got {tuple(slices.shape)}")
    else:
        p = slices.to(dev)
    # |CTF p|^2 summed with the Hermitian weights, for all K slices at once: (B, K, F) @ (B, F, 1).
    power = (p.real**2 + p.imag**2).reshape(b, k, half)
    p_norm = torch.sqrt(torch.bmm(power, (filt * filt * weights).reshape(b, half, 1)))[..., 0]
    # corr[t] = sum_x img(x) ref(x - t): peak at the translation t that moves the projection
    # onto the (re-centred) image. irfft2 divides by D^2, Parseval's sum needs that back; the
    # normalisation is applied to the samples used (window, winner's map), not to all maps.
    raw = torch.fft.irfft2(xf[:, None] * p.conj(), s=(d, d))  # (B, K, D, D)
    scale = (d * d) / (x_norm[:, None] * p_norm).clamp_min(1e-30)  # (B, K)
    offsets = _window_offsets(max_shift_angst / work_angpix, d, dev)  # (W, 2)
    flat = (offsets[:, 1] % d) * d + (offsets[:, 0] % d)
    window = raw.reshape(b, k, d * d)[..., flat] * scale[..., None]  # (B, K, W)
    per_cand, where = window.max(dim=-1)  # (B, K)
    cc, best = per_cand.max(dim=-1)  # (B,)
    rows = torch.arange(b, device=dev)
    zscore = _zscore(cc, per_cand)
    best_map = raw[rows, best] * scale[rows, best][:, None, None]  # (B, D, D)
    peak_zscore = _zscore(cc, best_map.reshape(b, -1))
    t = offsets[where[rows, best]].to(torch.float64)  # (B, 2) integer translation
    if subpixel:
        t, cc = _subpixel(best_map, t, cc)
    shift_px = s0 + t * (full / d)  # image = centred projection translated by shift_px
    return MatchResult(
        rotations=cand[rows, best],
        origins_angst=-shift_px * angpix,
        cc=cc.to(torch.float64),
        zscore=zscore.to(torch.float64),
        peak_zscore=peak_zscore.to(torch.float64),
        index=best,
        scores=per_cand,
    )


def _zscore(value: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """``(value - mean) / std`` over the last axis of ``samples`` (0 where std is 0)."""
    if samples.shape[-1] < 2:
        return torch.zeros_like(value)
    mean, std = samples.mean(-1), samples.std(-1)
    return torch.where(std > 0, (value - mean) / std.clamp_min(1e-30), torch.zeros_like(value))


def _subpixel(
    maps: torch.Tensor, t: torch.Tensor, cc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parabolic refinement of integer peaks ``t`` ``(B, 2)`` on correlation maps ``(B, D, D)``."""
    d = maps.shape[-1]
    ix, iy = t[:, 0].long(), t[:, 1].long()
    rows = torch.arange(maps.shape[0], device=maps.device)

    def at(dx: int, dy: int) -> torch.Tensor:
        return maps[rows, (iy + dy) % d, (ix + dx) % d].to(torch.float64)

    mid = at(0, 0)
    left_x, right_x, left_y, right_y = at(-1, 0), at(1, 0), at(0, -1), at(0, 1)
    ox = _parabola_offset(left_x, mid, right_x)
    oy = _parabola_offset(left_y, mid, right_y)
    # Peak value of the two parabolas (separable approximation), never below the sample.
    peak = mid + 0.25 * (ox * (right_x - left_x) + oy * (right_y - left_y))
    return t + torch.stack([ox, oy], dim=-1), torch.maximum(peak, cc.to(torch.float64))


# ---------------------------------------------------------------------- files


def load_reference(
    map_path: str | Path, table: ParticleTable, box: int, rescale: bool = False
) -> tuple[torch.Tensor, float]:
    """Read the reference map and check (or adapt) it to the particles' box and pixel size.

    Parameters
    ----------
    map_path
        Reference map (``.mrc``).
    table
        The particles (one pixel size for all).
    box
        The particles' box in pixels.
    rescale
        Fourier-resample a map at another pixel size (module docstring) instead of raising.

    Returns
    -------
    volume, angpix
        ``(box, box, box)`` float32 map and the particles' pixel size in Angstrom.

    Raises
    ------
    InputError
        Pixel sizes of the particles differ, or the map does not match them.
    """
    apix_all = table.angpix()
    angpix = float(apix_all[0])
    if not np.allclose(apix_all, angpix, rtol=1e-4):
        raise InputError(
            table.path,
            f"particles have different pixel sizes ({sorted(set(apix_all.tolist()))}); "
            "expected one pixel size",
            where="column rlnImagePixelSize",
        )
    volume, map_apix = read_map(map_path)
    d = int(volume.shape[-1])
    same_apix = abs(map_apix - angpix) <= 1e-3 * angpix
    if len(set(volume.shape)) != 1 or ((d != box or not same_apix) and not rescale):
        raise InputError(
            map_path,
            f"map box {d} at {map_apix:.3f} A/px vs particles box {box} at {angpix:.3f} A/px "
            f"(particles: {table.path}); expected the same box and pixel size"
            + ("" if same_apix else " (or RefineConfig(rescale_map=True))"),
        )
    if not same_apix:
        new = max(2, round(d * map_apix / angpix))
        volume = fourier_resize(volume, new, ndim=3)
    if volume.shape[-1] != box:
        volume = window_centred(volume, box, ndim=3)
    return volume.contiguous(), angpix


class PreparedReference:
    """A reference map prepared once for many :func:`refine_particles` calls.

    Holds the map's projector (its padded Fourier transform) and the grid-slice caches of the
    candidate ranking (:class:`~cryopose.pose._slice_cache.GridSliceCache`), so that a stream
    of small files (:mod:`cryopose.pose.stream`) projects each grid cell once in all, not
    once per file.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map at the particles' box and pixel size.
    pad_factor
        Fourier oversampling (``RefineConfig.pad_factor``).
    device
        Torch device (``RefineConfig.device``).
    """

    def __init__(self, volume: torch.Tensor, pad_factor: float = 2.0, device: str = "cpu"):
        self.pad_factor = float(pad_factor)
        self.device = torch.device(device)
        self.projector = Projector(volume.to(self.device), pad_factor=self.pad_factor)
        self._caches: dict[tuple[int, float], GridSliceCache] = {}

    def slice_cache(self, band: tuple[int, float]) -> GridSliceCache:
        """Return the cache of slices at ``band`` (``(box, kmax)`` of :func:`slice_band`)."""
        if band not in self._caches:
            self._caches[band] = GridSliceCache(self.projector, *band)
        return self._caches[band]


def _batch_ctf(
    params: dict[str, torch.Tensor], idx: slice, box: int, angpix: float, device: torch.device
) -> torch.Tensor:
    """``(B, D, D // 2 + 1)`` RELION CTF of the particles ``idx``."""
    return ctf_2d(
        (box, box),
        angpix,
        params["defocus_u"][idx],
        params["defocus_v"][idx],
        params["defocus_angle"][idx],
        params["voltage"][idx],
        params["cs"][idx],
        params["amplitude_contrast"][idx],
        params["phase_shift"][idx],
        params["bfactor"][idx],
        params["ctf_scale"][idx],
        device=device,
    )


def _box_of(table: ParticleTable, cache: StackCache) -> int:
    """Box size of the particles, from the first image's stack."""
    return int(read_images(table.image_locations()[:1], cache=cache).shape[-1])


def _network_probability(table: ParticleTable) -> torch.Tensor:
    """``(N,)`` network confidence in [0, 1]: ``rlnMaxValueProbDistribution`` or ones."""
    if PROB_COLUMN not in table.particles.columns:
        return torch.ones(len(table), dtype=torch.float64)
    values = table.particles[PROB_COLUMN].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(
            table.path,
            f"expected a number, found {values[bad[0]]}",
            where=f"row {bad[0] + 1}, column {PROB_COLUMN}",
        )
    return torch.from_numpy(np.clip(values, 0.0, 1.0))


def _coarse_resolution(cfg: RefineConfig) -> float | None:
    """Low-pass of the candidate ranking and coarse pass (``RefineConfig`` docstring)."""
    if not cfg.fine or cfg.coarse_resolution_angst is None:
        return cfg.resolution_angst
    if cfg.resolution_angst is None:
        return cfg.coarse_resolution_angst
    return max(cfg.resolution_angst, cfg.coarse_resolution_angst)


def _candidate_slices(
    cache: GridSliceCache | None,
    projector: Projector,
    start_rot: torch.Tensor,
    candidates: Candidates,
    idx: slice,
    n_cand: int,
    band: tuple[int, float],
) -> torch.Tensor | None:
    """``(B, 1 + n_cand, d, d // 2 + 1)`` slices of the input poses and the grid candidates.

    The candidates' come from ``cache`` (``None`` when it cannot hold their grid: the
    caller then projects everything).
    """
    if cache is None:
        return None
    grid = cache.slices(candidates.indices[idx, :n_cand], candidates.order[idx])
    if grid is None:
        return None
    d, kmax = band
    first = projector.slices(start_rot.to(projector.device), box=d, kmax=kmax)
    return torch.cat([first[:, None], grid], dim=1)


def _rank_resolution(cfg: RefineConfig) -> float | None:
    """Low-pass of the candidate ranking (``RefineConfig`` docstring)."""
    coarse = _coarse_resolution(cfg)
    if cfg.rank_resolution_angst is None:
        return coarse
    return cfg.rank_resolution_angst if coarse is None else max(coarse, cfg.rank_resolution_angst)


def refine_particles(
    table: ParticleTable,
    volume: torch.Tensor | PreparedReference,
    config: RefineConfig | None = None,
    progress: bool = True,
    candidates: Candidates | None = None,
) -> RefineResult:
    """Refine the poses and origins of every particle of ``table`` against ``volume``.

    Parameters
    ----------
    table
        Particles with images, poses, (origins) and, when ``config.ctf``, CTF columns.
    volume
        ``(D, D, D)`` reference map at the particles' box and pixel size, or the same map
        prepared once for many calls (:class:`PreparedReference`, with the config's pad factor
        and device).
    config
        Search settings (defaults: ``RefineConfig()``).
    progress
        Progress bar.
    candidates
        The network's top-k grid poses of the particles (e.g. from
        :attr:`cryopose.pose.infer.InferenceResult.top_k_indices`); ``None`` reads them from
        the table's ``cryoposeTopKIndices`` / ``cryoposeGridOrder`` columns when present.
        Each particle's local search starts from the best of its input pose and its first
        ``config.candidates`` candidates (none when that is 0).

    Returns
    -------
    RefineResult
        With ``out_star=None``; the table is not modified.
    """
    cfg = RefineConfig() if config is None else config
    cfg.validate()
    n = len(table)
    if n == 0:
        raise InputError(table.path, "no particles to refine")
    if cfg.candidates > 0 and candidates is None:
        candidates = table_candidates(table)
    if candidates is not None and len(candidates) != n:
        raise InputError(table.path, f"{len(candidates)} candidate rows for {n} particles")
    n_cand = 0 if candidates is None else min(cfg.candidates, candidates.k)
    dev = torch.device(cfg.device)
    angpix = float(table.angpix()[0])
    rot_in = table.rotations(dtype=torch.float64)
    origin_in = table.shifts_angst(dtype=torch.float64)
    ctf_params = table.ctf_parameters() if cfg.ctf else None
    prob = _network_probability(table)
    locations = table.image_locations()
    if isinstance(volume, PreparedReference):
        if volume.pad_factor != cfg.pad_factor or volume.device != dev:
            raise ValueError(
                f"reference prepared with pad factor {volume.pad_factor} on {volume.device}, "
                f"the refinement asks for {cfg.pad_factor} on {dev}"
            )
        prepared = volume
    else:
        prepared = PreparedReference(volume, cfg.pad_factor, cfg.device)
    projector = prepared.projector
    coarse = local_rotation_grid(cfg.range_deg, cfg.step_deg).to(dev)
    fine = local_rotation_grid(cfg.fine_range_deg, cfg.fine_step_deg).to(dev) if cfg.fine else None
    rot_out = torch.empty_like(rot_in)
    origin_out = torch.empty_like(origin_in)
    cc = torch.empty(n, dtype=torch.float64)
    zscore = torch.empty(n, dtype=torch.float64)
    chosen = torch.zeros(n, dtype=torch.int64)
    coarse_resolution = _coarse_resolution(cfg)
    rank_resolution = _rank_resolution(cfg)
    rank_band = slice_band(projector.size, angpix, rank_resolution, crop=True)
    slice_cache = prepared.slice_cache(rank_band) if n_cand > 0 else None
    cache = StackCache()
    start_time = time.perf_counter()
    try:
        with progress_bar("refining", total=n, enabled=progress, unit="particles") as advance:
            for start in range(0, n, cfg.batch_size):
                idx = slice(start, min(start + cfg.batch_size, n))
                images = read_images(locations[idx], cache=cache).to(dev)
                box = int(images.shape[-1])
                if box != projector.size:
                    raise InputError(
                        table.path,
                        f"images are {box} px but the reference map is {projector.size} px",
                    )
                ctf = None if ctf_params is None else _batch_ctf(ctf_params, idx, box, angpix, dev)
                kwargs: dict[str, Any] = {
                    "angpix": angpix,
                    "ctf": ctf,
                    "max_shift_angst": cfg.max_shift_angst,
                    "resolution_angst": cfg.resolution_angst,
                    "subpixel": cfg.subpixel,
                }
                coarse_kwargs = {**kwargs, "resolution_angst": coarse_resolution, "crop": True}
                rank_kwargs = {**kwargs, "resolution_angst": rank_resolution, "crop": True}
                origins = origin_in[idx]
                start_rot = rot_in[idx]
                if candidates is not None and n_cand > 0:
                    # The input pose first: a tie keeps it.
                    cand = torch.cat([start_rot[:, None], candidates.rotations(idx, n_cand)], 1)
                    pre = _candidate_slices(
                        slice_cache, projector, start_rot, candidates, idx, n_cand, rank_band
                    )
                    ranked = match_candidates(
                        projector, images, cand, origins, slices=pre, **rank_kwargs
                    )
                    start_rot = ranked.rotations.cpu()
                    chosen[idx] = ranked.index.cpu()
                best = match_local(
                    projector, images, start_rot, origins, grid=coarse, **coarse_kwargs
                )
                if fine is not None:
                    # Same translation disc (around the input origin) for both passes.
                    best = match_local(
                        projector, images, best.rotations, origins, grid=fine, **kwargs
                    )
                rot_out[idx] = best.rotations.cpu()
                origin_out[idx] = best.origins_angst.cpu()
                cc[idx] = best.cc.cpu()
                zscore[idx] = best.peak_zscore.cpu()
                advance(idx.stop - idx.start)
    finally:
        cache.close()
    seconds = time.perf_counter() - start_time
    significance = torch.sigmoid((zscore - cfg.score_z_mid) / cfg.score_z_width)
    return RefineResult(
        rotations=rot_out,
        origins_angst=origin_out,
        cc=cc,
        zscore=zscore,
        score=prob * significance,
        angle_change_deg=torch.rad2deg(geodesic_distance(rot_in, rot_out)),
        shift_change_angst=torch.linalg.vector_norm(origin_out - origin_in, dim=-1),
        n_local_poses=(int(coarse.shape[0]), 0 if fine is None else int(fine.shape[0])),
        seconds=seconds,
        n_candidates=n_cand,
        candidate=chosen,
    )


def refine_star(
    star: str | Path,
    reference_map: str | Path,
    out_star: str | Path,
    config: RefineConfig | None = None,
    progress: bool = True,
    particles_dir: str | Path | None = None,
) -> RefineResult:
    """Refine a particle star file against a reference map and write the refined star file.

    Every input column is kept; angles and ``rlnOriginXAngst/YAngst`` are replaced,
    ``cryoposeRefineCC``, ``cryoposeRefineScore``, ``cryoposeRefinePeakZ`` and
    ``cryoposeRefineZScore`` added (module docstring), and ``cryoposeRefineCandidate`` (the
    start of the local search, :attr:`RefineResult.candidate`) when the star file has the
    network's candidates (``cryoposeTopKIndices``, written by ``cryopose infer``). The star file
    (RELION 3.1 layout) and ``<out_star stem>_refine.json`` (settings and summary) are written
    atomically.

    Parameters
    ----------
    star
        Input particles (RELION 3.0 or 3.1+).
    reference_map
        Map at the particles' box and pixel size (see ``RefineConfig.rescale_map``).
    out_star
        Output star file.
    config
        Search settings.
    progress
        Progress bar.
    particles_dir
        Folder to look for the stacks in first.

    Returns
    -------
    RefineResult

    Raises
    ------
    InputError
        Bad star file or map, mismatched map (both files named), missing CTF columns with
        ``config.ctf``.
    """
    cfg = RefineConfig() if config is None else config
    cfg.validate()
    table = read_particles(star, particles_dir=particles_dir)
    if len(table) == 0:
        raise InputError(star, "no particles to refine")
    if not table.has_poses:
        raise InputError(star, "expected poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi) to refine")
    cache = StackCache()
    try:
        box = _box_of(table, cache)
    finally:
        cache.close()
    volume, _ = load_reference(reference_map, table, box, rescale=cfg.rescale_map)
    result = refine_particles(table, volume, cfg, progress=progress)
    out = Path(out_star)
    columns = {
        CC_COLUMN: result.cc,
        SCORE_COLUMN: result.score,
        PEAK_Z_COLUMN: result.zscore,
        REFINE_ZSCORE_COLUMN: refine_zscores(result.zscore),
    }
    # An integer column (write_predictions writes floats); a stale one from an earlier
    # refinement with candidates is dropped when there were none this time.
    particles = table.particles.drop(columns=[CANDIDATE_COLUMN], errors="ignore")
    if result.n_candidates > 0 and result.candidate is not None:
        particles[CANDIDATE_COLUMN] = result.candidate.numpy()
    blocks = {**table.blocks, table.particles_block: particles}
    table = dataclasses.replace(table, particles=particles, blocks=blocks)
    write_predictions(table, result.rotations, result.origins_angst, columns, out)
    record = {
        "config": dataclasses.asdict(cfg),
        "star": str(star),
        "reference_map": str(reference_map),
        "n_local_poses": list(result.n_local_poses),
        "summary": result.summary(),
    }
    with atomic_path(out.with_name(out.stem + "_refine.json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    result.out_star = out
    return result
