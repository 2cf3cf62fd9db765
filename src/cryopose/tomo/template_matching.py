"""Template matching in tomograms: FLCF over SO(3), coarse to fine, on CPU or GPU.

Score
-----
The fast local correlation function (FLCF, Roseman 2003; as in pytom): for a template ``T``
with mask ``M`` (weights in [0, 1], ``p = sum M``) normalised under the mask to
``T' = M (T - mu_T) / sigma_T`` (:func:`cryopose.tomo.templates.normalise_under_mask`), the
score at voxel ``c`` is the mask-weighted Pearson correlation of the template with the
tomogram ``f`` around ``c``::

    score(c) = sum_u T'(u) f(c + u) / (p sigma_f(c))
    sigma_f(c)^2 = sum_u M(u) f(c + u)^2 / p - (sum_u M(u) f(c + u) / p)^2

``u`` runs over the template box relative to its centre ``B // 2``. All three sums are
circular cross-correlations done with FFTs of the tomogram's size (the volume wraps around at
its faces, as in pytom). The mask is a sphere, so it is the same for every rotation and the
local standard deviation ``sigma_f`` is computed once per class; each rotation then costs one
forward and one inverse FFT, done for a batch of rotations at once.

Filters
-------
The tomogram is band-limited to the first zero of the CTF and, by default, spectrally
whitened (divided by the square root of its radially averaged power spectrum, as
pytom-match-pick's ``--spectral-whitening``); each rotated template is filtered by
``|CTF|`` (zero beyond the first zero), the missing wedge (``+-60`` degrees about ``y``) and the
same whitening filter before it is normalised under its mask
(:func:`cryopose.tomo.templates.template_filter`).

Angular sampling
----------------
The angular step a particle needs is ``resolution / diameter`` radians
(:func:`angular_step_deg`): at the CTF's first zero (24.6 A at 3 um) and 1 nm voxels,
9.9 degrees for Rubisco (1bxn, 14 nm) and 4.6 degrees for the 26S proteasome. An exhaustive
search would use the HEALPix SO(3) grid (:func:`cryopose.geometry.healpix.so3_healpix_grid`)
whose covering radius is below that step (order 3: 36,864 rotations; order 4: 294,912). For a
symmetric template only the asymmetric unit is searched (:func:`asymmetric_unit`).

Coarse to fine
--------------
1. **Coarse**: the tomogram and the templates are binned by ``bin_factor`` (Fourier
   cropping; default 1, none: at 1 nm voxels binning by 2 leaves proteins under 200 kDa a few
   voxels across, and on a 256 x 256 x 100 benchmark at SNR 0.2 it lost a third of the
   particles the unbinned scan finds, TM-F F1 0.71 vs 0.78, for a quarter of the time) and
   low-passed to a resolution matched to the coarse grid
   (``coarse_lowpass`` x covering radius x diameter: finer detail only decorrelates at a
   pose that far off), and every position is scored over a coarse grid (``coarse_order``,
   default 1: 576 rotations, covering radius 31 degrees, divided by the symmetry order).
2. **Peaks**: the coarse score map is turned into z-scores
   (:func:`cryopose.tomo.peaks.robust_zscore`); the ``n_candidates`` strongest maxima at
   least ``radius`` apart with a z-score of at least ``refine_min_score`` go on.
3. **Fine**, at those peaks only and on the unbinned tomogram: the whole coarse grid is
   scored again at the 27 voxels around the peak (:func:`rescore_coarse_grid`, templates
   shared by all peaks); from the ``n_starts`` best rotations a pattern search
   (:func:`refine_peaks`) walks position (+-1 voxel) and orientation (turns of ``+-s`` about
   x, y, z) with ``s`` starting at half the coarse covering radius and halving down to the
   class's angular step. The best start wins.
4. **Scores**: the refined FLCF is turned into a z-score against the same full-size
   rescoring and refinement at ``n_null`` random positions, so that scores compare across
   classes (for
   TM-F, :func:`cryopose.tomo.peaks.filter_picks`); peaks that refinement walked onto the
   same particle are merged.

The cost of the coarse stage is ``|coarse grid| / |G|`` FFT pairs of a tomogram binned
``bin_factor^3`` times; the exhaustive search would cost ``|fine grid| / |G|`` FFT pairs of the
full tomogram. :class:`ClassMatch` records both counts and the measured times.

Example usage (what ``cryopose tomo match tomo0/reconstruction.mrc -o picks.txt`` runs)::

    >>> from cryopose.io.mrc import read_map
    >>> from cryopose.tomo.templates import load_templates
    >>> tomo, angpix = read_map("tomo0/reconstruction.mrc")  # doctest: +SKIP
    >>> result = match_tomogram(tomo, load_templates(angpix=angpix))  # doctest: +SKIP
    >>> picks = filter_picks(result.candidates, threshold=5.0)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import starfile
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.geometry.healpix import grid_resolution_deg, grid_size, so3_healpix_grid
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.geometry.symmetry import symmetry_group
from cryopose.imaging.fft import rfft_freq_grid
from cryopose.imaging.resample import fourier_resize
from cryopose.io.mrc import read_map
from cryopose.io.picks import Picks, write_picks
from cryopose.tomo.peaks import (
    Candidates,
    _greedy_nms,
    filter_picks,
    find_peaks,
    robust_zscore,
    top_n_per_class,
)
from cryopose.tomo.templates import (
    DEFAULT_CTF,
    CtfParams,
    Template,
    ctf_first_zero,
    normalise_under_mask,
    rotate_volumes,
    template_filter,
)

__all__ = [
    "ClassMatch",
    "MatchConfig",
    "MatchResult",
    "angular_step_deg",
    "asymmetric_unit",
    "flcf",
    "grid_order_for_step",
    "match_class",
    "match_tomogram",
    "match_tomogram_file",
    "prepare_tomogram",
    "refine_peaks",
    "rescore_coarse_grid",
    "scan_rotations",
]

_SPATIAL = (-3, -2, -1)
_MAX_ORDER = 5
_SHREC_PARTICLES, _SHREC_CLASSES, _SHREC_VOXELS = 2000, 12, 512 * 512 * 200


@dataclass(frozen=True)
class MatchConfig:
    """Parameters of :func:`match_tomogram` (saved next to its output by the CLI).

    Attributes
    ----------
    ctf
        CTF and tilt range of the tomogram.
    bin_factor
        Binning of the coarse search (1: none).
    coarse_order
        HEALPix SO(3) order of the coarse grid (capped at the class's fine order).
    n_candidates
        Peaks kept per class from the coarse scan; ``None``: three times the particles
        per class of a SHREC-crowded volume of this size (2,000 particles of 12 classes per
        512 x 512 x 200 voxels), 20 to 2,000.
    whiten
        Spectrally whiten tomogram and templates.
    wedge
        Weight templates by the missing wedge.
    use_symmetry
        Search only the asymmetric unit of symmetric templates.
    batch_size
        Rotations per batched FFT.
    refine
        Run the fine stage (off: coarse positions scaled by ``bin_factor``, coarse angles).
    coarse_lowpass
        The coarse scan is low-passed to ``coarse_lowpass`` times the coarse grid's covering
        radius (radians) times the particle diameter (``None``: only the binning limits it).
    n_null
        Random positions whose full-size scores calibrate the fine stage's z-scores.
    n_starts
        Coarse rotations refined per peak (:func:`rescore_coarse_grid`).
    refine_min_score
        Only candidates with a coarse z-score at least this go to the fine stage; with
        ``refine`` the others are dropped (no threshold worth using would keep them).
    """

    ctf: CtfParams = field(default_factory=CtfParams)
    bin_factor: int = 1
    coarse_order: int = 1
    n_candidates: int | None = None
    whiten: bool = True
    wedge: bool = True
    use_symmetry: bool = True
    batch_size: int = 8
    refine: bool = True
    refine_min_score: float = 2.0
    n_starts: int = 3
    coarse_lowpass: float | None = 0.5
    n_null: int = 100


@dataclass(frozen=True)
class ClassMatch:
    """Outcome and cost of matching one class.

    Attributes
    ----------
    candidates
        Refined peaks (coordinates in unbinned voxels, rotations of the class density).
    n_coarse_rotations
        Rotations scanned over the whole (binned) tomogram.
    n_exhaustive_rotations
        Rotations an exhaustive search at the class's angular step would scan, full size.
    n_refine_evaluations
        Rotations times peaks evaluated by the fine stage.
    coarse_seconds, refine_seconds
        Wall time of the two stages.
    angular_step_deg
        Step the class needs (:func:`angular_step_deg`).
    """

    candidates: Candidates
    n_coarse_rotations: int
    n_exhaustive_rotations: int
    n_refine_evaluations: int
    coarse_seconds: float
    refine_seconds: float
    angular_step_deg: float


@dataclass(frozen=True)
class MatchResult:
    """All classes of one tomogram.

    Attributes
    ----------
    classes
        One :class:`ClassMatch` per template, in template order.
    prepare_seconds
        Time spent filtering and binning the tomogram.
    """

    classes: list[ClassMatch]
    prepare_seconds: float

    @property
    def candidates(self) -> list[Candidates]:
        """Per-class candidates, template order."""
        return [c.candidates for c in self.classes]

    @property
    def seconds(self) -> float:
        """Total wall time."""
        return self.prepare_seconds + sum(c.coarse_seconds + c.refine_seconds for c in self.classes)


# ----------------------------------------------------------------------------- sampling


def angular_step_deg(radius_px: float, angpix: float, ctf: CtfParams = DEFAULT_CTF) -> float:
    """Angular step a particle needs: ``resolution / diameter`` radians, in degrees.

    Parameters
    ----------
    radius_px
        Particle radius in voxels.
    angpix
        Voxel size in Angstrom.
    ctf
        Sets the resolution: the CTF's first zero, or Nyquist if finer.

    Returns
    -------
    float
        Degrees.
    """
    resolution = max(1.0 / ctf_first_zero(angpix, ctf), 2.0 * angpix)
    return math.degrees(resolution / (2.0 * radius_px * angpix))


def grid_order_for_step(step_deg: float, max_order: int = _MAX_ORDER) -> int:
    """Smallest HEALPix SO(3) order whose covering radius is at most ``step_deg``.

    Parameters
    ----------
    step_deg
        Wanted angular step, degrees.
    max_order
        Cap.

    Returns
    -------
    int
        Order in ``0 .. max_order``.
    """
    for order in range(max_order + 1):
        if grid_resolution_deg(order) <= step_deg:
            return order
    return max_order


def asymmetric_unit(rotations: torch.Tensor, symmetry: str) -> torch.Tensor:
    """Keep the rotations of a grid that lie in the asymmetric unit of a point group.

    Poses ``R`` and ``R g`` (``g`` in the group) are the same for a symmetric template. A
    rotation is kept when it is at least as close to the identity as all its copies ``R g``
    (the Dirichlet domain around the identity, ties kept), which leaves ``1 / |G|`` of a
    uniform grid.

    Parameters
    ----------
    rotations
        ``(n, 3, 3)`` rotations.
    symmetry
        Point group name (:func:`cryopose.geometry.symmetry.symmetry_group`).

    Returns
    -------
    torch.Tensor
        ``(k, 3, 3)`` the kept rotations, input order.
    """
    group = symmetry_group(symmetry).to(rotations.device, torch.float64)
    if group.shape[0] == 1:
        return rotations
    r = rotations.to(torch.float64)
    # trace(R g) = 1 + 2 cos(angle): the larger the trace, the closer R g is to identity.
    traces = torch.einsum("nij,gji->ng", r, group)
    keep = traces[:, 0] >= traces.max(1).values - 1e-9
    return rotations[keep]


# ----------------------------------------------------------------------------- FLCF


def _shift_ramp(shape: Sequence[int], shift: int, device: torch.device) -> torch.Tensor:
    """``(D, H, W // 2 + 1)`` complex ``exp(-2 pi i k . (s, s, s))``: rolls by ``+s`` voxels."""
    kz, ky, kx = rfft_freq_grid(shape, device=device, dtype=torch.float64)
    phase = -2.0 * math.pi * shift * (kz + ky + kx)
    return torch.polar(torch.ones_like(phase), phase).to(torch.complex64)


class _Correlator:
    """Cross-correlation of one tomogram with centred templates of one box and mask."""

    def __init__(
        self, tomogram: torch.Tensor, mask: torch.Tensor, lowpass: float | None = None
    ) -> None:
        self.box = int(mask.shape[-1])
        self.out_shape = tuple(int(s) for s in tomogram.shape)
        # An axis shorter than the template is zero-padded so the template's FFT holds it
        # whole; zero regions score 0 (see inv_norm) and are cropped off again.
        self.shape = tuple(max(s, self.box) for s in self.out_shape)
        f = tomogram.to(torch.float32)
        if self.shape != self.out_shape:
            pads = [(0, n - s) for s, n in zip(self.out_shape, self.shape, strict=True)]
            f = torch.nn.functional.pad(f, [v for pair in reversed(pads) for v in pair])
        ramp = _shift_ramp(self.shape, self.box // 2, tomogram.device)
        if lowpass is not None:
            f = torch.fft.irfftn(
                torch.fft.rfftn(f, dim=_SPATIAL) * (_radius(self.shape, f.device) <= lowpass),
                s=self.shape,
                dim=_SPATIAL,
            )
        # Shifted transforms: correlating a template stored at [0, B) then gives the score
        # of the position of its centre B // 2 (see module docstring).
        self.f_hat = torch.fft.rfftn(f, dim=_SPATIAL) * ramp
        m_hat = torch.conj(torch.fft.rfftn(mask.to(f), s=self.shape, dim=_SPATIAL))
        self.p = float(mask.sum())
        mean = torch.fft.irfftn(self.f_hat * m_hat, s=self.shape, dim=_SPATIAL) / self.p
        f2_hat = torch.fft.rfftn(f * f, dim=_SPATIAL) * ramp
        second = torch.fft.irfftn(f2_hat * m_hat, s=self.shape, dim=_SPATIAL) / self.p
        var = (second - mean * mean).clamp(min=0.0)
        floor = 1e-6 * float(var.mean()) + 1e-30
        # 1 / (p sigma): constant regions (zero padding) score 0 instead of dividing by 0.
        self.inv_norm = torch.where(
            var > floor, 1.0 / (self.p * torch.sqrt(var.clamp(min=floor))), torch.zeros_like(var)
        )

    def scores(self, normalised: torch.Tensor) -> torch.Tensor:
        """``(n, D, H, W)`` FLCF of ``(n, B, B, B)`` normalised templates."""
        t_hat = torch.fft.rfftn(normalised.to(torch.float32), s=self.shape, dim=_SPATIAL)
        corr = torch.fft.irfftn(torch.conj(t_hat) * self.f_hat, s=self.shape, dim=_SPATIAL)
        out: torch.Tensor = corr * self.inv_norm
        if self.shape != self.out_shape:
            d, h, w = self.out_shape
            out = out[..., :d, :h, :w]
        return out


def flcf(tomogram: torch.Tensor, templates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Locally normalised cross-correlation (module docstring) of templates with a tomogram.

    Parameters
    ----------
    tomogram
        ``(D, H, W)``.
    templates
        ``(n, B, B, B)`` templates centred at ``B // 2`` (normalised here under ``mask``).
    mask
        ``(B, B, B)`` weights in [0, 1].

    Returns
    -------
    torch.Tensor
        ``(n, D, H, W)`` float32 scores in [-1, 1]: the mask-weighted Pearson correlation of
        template ``i`` with the tomogram around each voxel (circular at the faces).
    """
    corr = _Correlator(tomogram, mask.to(tomogram.device))
    return corr.scores(
        normalise_under_mask(templates.to(tomogram.device), mask.to(tomogram.device))
    )


# ----------------------------------------------------------------------------- filters


def _radial_profile(f_hat: torch.Tensor, shape: Sequence[int], n_bins: int) -> torch.Tensor:
    """``(n_bins,)`` mean ``|F|^2`` in shells of width ``0.5 / n_bins`` cycles/voxel."""
    k = _radius(shape, f_hat.device)
    idx = (k * 2 * n_bins).long().clamp(max=n_bins - 1).reshape(-1)
    power = (f_hat.real**2 + f_hat.imag**2).reshape(-1).to(torch.float64)
    total = torch.zeros(n_bins, dtype=torch.float64, device=f_hat.device).index_add_(0, idx, power)
    count = torch.zeros_like(total).index_add_(0, idx, torch.ones_like(power))
    return total / count.clamp(min=1.0)


def _radius(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    kz, ky, kx = rfft_freq_grid(shape, device=device, dtype=torch.float32)
    return torch.sqrt(kz * kz + ky * ky + kx * kx)


def _interp(profile: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Profile of shells ``0.5 / n`` wide (cycles/voxel) at radii ``k``, linear, clamped."""
    n = profile.shape[0]
    x = (k * 2 * n - 0.5).clamp(0.0, n - 1.0)
    lo = x.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (x - lo).to(profile.dtype)
    return profile[lo] * (1 - w) + profile[hi] * w


@dataclass(frozen=True)
class PreparedTomogram:
    """A tomogram filtered for matching, at full size and binned.

    Attributes
    ----------
    full
        ``(D, H, W)`` float32 band-limited (and whitened) tomogram.
    binned
        ``(D', H', W')`` the same, Fourier-cropped by ``bin_factor``.
    bin_factor
        Binning of ``binned``.
    angpix
        Voxel size of ``full``, Angstrom.
    whitening
        ``(n,)`` float64 whitening gain per frequency shell (0.5 / n cycles/voxel of ``full``
        each), or ``None``.
    """

    full: torch.Tensor
    binned: torch.Tensor
    bin_factor: int
    angpix: float
    whitening: torch.Tensor | None


def prepare_tomogram(
    tomogram: torch.Tensor, angpix: float, config: MatchConfig = MatchConfig()
) -> PreparedTomogram:
    """Remove the mean, band-limit to the CTF's first zero, whiten, bin.

    Parameters
    ----------
    tomogram
        ``(D, H, W)``.
    angpix
        Voxel size, Angstrom.
    config
        CTF, whitening, binning.

    Returns
    -------
    PreparedTomogram
        Filtered full-size and binned volumes on the tomogram's device.
    """
    shape = tuple(int(s) for s in tomogram.shape)
    f_hat = torch.fft.rfftn(tomogram.to(torch.float32), dim=_SPATIAL)
    k = _radius(shape, tomogram.device)
    band = (k < ctf_first_zero(angpix, config.ctf) * angpix).to(torch.float32)
    band[0, 0, 0] = 0.0
    f_hat = f_hat * band
    gain: torch.Tensor | None = None
    if config.whiten:
        n_bins = max(shape) // 2
        power = _radial_profile(f_hat, shape, n_bins)
        gain = torch.where(power > 0, 1.0 / torch.sqrt(power.clamp(min=1e-30)), 0.0)
        gain = gain / gain.max().clamp(min=1e-30)
        f_hat = f_hat * _interp(gain, k).to(torch.float32)
    full = torch.fft.irfftn(f_hat, s=shape, dim=_SPATIAL)
    full = full / full.std().clamp(min=1e-30)
    b = config.bin_factor
    binned = full if b == 1 else fourier_resize(full, tuple(max(1, s // b) for s in shape), ndim=3)
    return PreparedTomogram(full.contiguous(), binned.contiguous(), b, angpix, gain)


def _template_weights(
    template: Template, prepared: PreparedTomogram, config: MatchConfig, device: torch.device
) -> torch.Tensor:
    """CTF x wedge (x whitening) on the template's rfft grid."""
    shape = (template.box,) * 3
    filt = template_filter(shape, template.angpix, config.ctf, config.wedge, device=device)
    if prepared.whitening is not None:
        # Whitening was measured in cycles/voxel of the full tomogram: convert via angpix.
        k = _radius(shape, device) * (prepared.angpix / template.angpix)
        filt = filt * _interp(prepared.whitening.to(device), k).to(filt)
    return filt


def _templates_for(
    template: Template, rotations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``(n, B, B, B)`` rotated, filtered, normalised templates."""
    dev = weights.device
    rotated = rotate_volumes(template.density.to(dev), rotations.to(dev, torch.float32))
    b = template.box
    filtered = torch.fft.irfftn(
        torch.fft.rfftn(rotated, dim=_SPATIAL) * weights, s=(b, b, b), dim=_SPATIAL
    )
    return normalise_under_mask(filtered, template.mask.to(dev))


# ----------------------------------------------------------------------------- coarse search


def scan_rotations(
    tomogram: torch.Tensor,
    template: Template,
    rotations: torch.Tensor,
    weights: torch.Tensor,
    batch_size: int = 8,
    lowpass: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best FLCF over rotations at every voxel.

    Parameters
    ----------
    tomogram
        ``(D, H, W)`` prepared tomogram at the template's voxel size.
    template
        The class template.
    rotations
        ``(n, 3, 3)`` rotations of the template (tomogram frame).
    weights
        Template Fourier weights ``(B, B, B // 2 + 1)`` (:func:`template_filter`).
    batch_size
        Rotations per batched FFT.
    lowpass
        Optional cut-off (cycles/voxel) applied to the tomogram; ``weights`` should hold
        the same cut-off.

    Returns
    -------
    best, index
        ``(D, H, W)`` float32 best score and int64 index of the rotation that reached it.
    """
    dev = tomogram.device
    corr = _Correlator(tomogram, template.mask.to(dev), lowpass)
    best = torch.full(corr.out_shape, -float("inf"), device=dev)
    index = torch.zeros(corr.out_shape, dtype=torch.int64, device=dev)
    for start in range(0, rotations.shape[0], batch_size):
        rots = rotations[start : start + batch_size]
        scores = corr.scores(_templates_for(template, rots, weights))
        top, arg = scores.max(0)
        better = top > best
        best = torch.where(better, top, best)
        index = torch.where(better, arg + start, index)
    return best, index


# ----------------------------------------------------------------------------- refinement


def _offsets(device: torch.device) -> torch.Tensor:
    """``(27, 3)`` int64 ``{-1, 0, 1}^3`` in z y x, centre at index 13."""
    r = torch.arange(-1, 2, device=device)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def _patches(volume: torch.Tensor, centres: torch.Tensor, box: int) -> torch.Tensor:
    """``(k, 27, B^3)`` sub-volumes of ``box`` around ``centres + offset`` (zero outside)."""
    pad = box // 2 + 2
    padded = torch.nn.functional.pad(volume[None, None], (pad,) * 6)[0, 0]
    side = box + 2
    r = torch.arange(side, device=volume.device) - (box // 2 + 1)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1)  # (S, S, S, 3)
    idx = centres[:, None, None, None, :] + grid + pad  # (k, S, S, S, 3)
    big = padded[idx[..., 0], idx[..., 1], idx[..., 2]]  # (k, S, S, S)
    win = big.unfold(1, box, 1).unfold(2, box, 1).unfold(3, box, 1)  # (k, 3, 3, 3, B, B, B)
    return win.reshape(centres.shape[0], 27, box**3)


def rescore_coarse_grid(
    tomogram: torch.Tensor,
    template: Template,
    weights: torch.Tensor,
    centres: torch.Tensor,
    grid: torch.Tensor,
    n_starts: int = 3,
    chunk: int = 32,
    neighbours: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every coarse-grid rotation at full size around each peak; keep the best few.

    The coarse search keeps one rotation per voxel, found on a binned tomogram; an elongated
    or pseudo-symmetric particle can prefer a wrong grid rotation there. Scoring the whole
    coarse grid again at full size at the peak (27 positions, templates shared by all peaks)
    and refining from several starts makes the fine stage robust to that.

    Parameters
    ----------
    tomogram
        ``(D, H, W)`` prepared full-size tomogram.
    template, weights
        Full-size template and its Fourier weights.
    centres
        ``(k, 3)`` int64 voxels ``(z, y, x)``.
    grid
        ``(m, 3, 3)`` coarse rotations.
    n_starts
        Starts kept per peak (distinct rotations, best first).
    chunk
        Peaks per batched product.
    neighbours
        Score the 27 voxels around each centre (``False``: the centre only).

    Returns
    -------
    centres, rotations, scores
        ``(k, n, 3)`` int64 best position for each start, ``(k, n, 3, 3)`` float64
        rotations and ``(k, n)`` FLCF scores, ``n = min(n_starts, m)``, best first.
    """
    dev = tomogram.device
    mask = template.mask.to(dev).reshape(-1)
    p = float(mask.sum())
    grid = grid.to(dev, torch.float64)
    temps = torch.cat(
        [
            _templates_for(template, grid[i : i + 64], weights).reshape(-1, template.box**3)
            for i in range(0, grid.shape[0], 64)
        ]
    )  # (m, B^3)
    n = min(n_starts, grid.shape[0])
    out_c, out_r, out_s = [], [], []
    for s in range(0, centres.shape[0], chunk):
        cen = centres[s : s + chunk].to(dev)
        patches = _patches(tomogram, cen, template.box)  # (c, 27, B^3)
        if not neighbours:
            patches = patches[:, 13:14]
        mean = patches @ mask / p
        var = ((patches * patches) @ mask / p - mean * mean).clamp(min=1e-30)
        sc = (patches @ temps.T) / (p * torch.sqrt(var))[..., None]  # (c, 27, m)
        per_rot, pos = sc.max(1)  # (c, m)
        top = per_rot.topk(n, dim=1)  # (c, n)
        offset = _offsets(dev)[torch.gather(pos, 1, top.indices) + (0 if neighbours else 13)]
        out_c.append(cen[:, None, :] + offset)
        out_r.append(grid[top.indices])
        out_s.append(top.values)
    hi = torch.tensor(tomogram.shape, device=dev) - 1
    centres_out = torch.minimum(torch.cat(out_c).clamp(min=0), hi)
    return centres_out, torch.cat(out_r), torch.cat(out_s)


def refine_peaks(
    tomogram: torch.Tensor,
    template: Template,
    weights: torch.Tensor,
    centres: torch.Tensor,
    rotations: torch.Tensor,
    start_step_deg: float,
    final_step_deg: float,
    max_levels: int = 8,
    chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Pattern search in position (+-1 voxel) and orientation at each peak (module docstring).

    Each level scores 27 positions x 7 rotations per peak (:func:`_refine_level`) and moves
    to the best. The angular
    step halves after each level until it is at most ``final_step_deg``; a peak is done when
    its step has reached that and a level leaves its pose unchanged (so a coarse position
    several voxels off is still walked to the optimum), or after ``max_levels`` levels.

    Parameters
    ----------
    tomogram
        ``(D, H, W)`` prepared tomogram at the template's voxel size.
    template, weights
        Template and its Fourier weights.
    centres
        ``(k, 3)`` int64 start voxels ``(z, y, x)``.
    rotations
        ``(k, 3, 3)`` start rotations (template frame to tomogram).
    start_step_deg, final_step_deg
        First perturbation step and the step at which halving stops.
    max_levels
        Most levels per peak.
    chunk
        Peaks processed together (memory: ``chunk * 27 * 2 * B^3`` floats).

    Returns
    -------
    centres, rotations, scores, evaluations
        ``(k, 3)`` int64, ``(k, 3, 3)`` float64, ``(k,)`` float32 FLCF at the refined pose,
        and the number of (rotation, peak) pairs evaluated.
    """
    dev = tomogram.device
    cen = centres.to(dev).clone()
    rot = rotations.to(dev, torch.float64).clone()
    k = cen.shape[0]
    score = torch.full((k,), -float("inf"), device=dev)
    step = torch.full((k,), start_step_deg, dtype=torch.float64, device=dev)
    active = torch.ones(k, dtype=torch.bool, device=dev)
    hi = torch.tensor(tomogram.shape, device=dev) - 1
    evaluations = 0
    for _ in range(max_levels):
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        for s in range(0, idx.numel(), chunk):
            sel = idx[s : s + chunk]
            c_new, r_new, sc, moved = _refine_level(
                tomogram, template, weights, cen[sel], rot[sel], step[sel]
            )
            cen[sel] = torch.minimum(c_new.clamp(min=0), hi)
            rot[sel] = r_new
            score[sel] = sc
            done = (step[sel] <= final_step_deg) & ~moved
            active[sel] = ~done
            step[sel] = torch.where(step[sel] > final_step_deg, step[sel] / 2.0, step[sel])
            evaluations += int(sel.numel()) * 7
    return cen, rot, score, evaluations


def _compass(device: torch.device) -> torch.Tensor:
    """``(7, 3)`` rotation-vector directions: none, then +-x, +-y, +-z."""
    eye = torch.eye(3, dtype=torch.float64, device=device)
    return torch.cat([torch.zeros(1, 3, dtype=torch.float64, device=device), eye, -eye])


def _refine_level(
    tomogram: torch.Tensor,
    template: Template,
    weights: torch.Tensor,
    centres: torch.Tensor,
    rotations: torch.Tensor,
    step_deg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pattern-search level for ``c`` peaks: new centres, rotations, scores, moved flags.

    27 positions (+-1 voxel) times 7 rotations (a compass pattern: unchanged, and turns by
    +-step about x, y and z in the tomogram frame).
    """
    dev = tomogram.device
    mask = template.mask.to(dev).reshape(-1)
    p = float(mask.sum())
    compass = _compass(dev)
    n_rot = compass.shape[0]
    d = compass[None] * torch.deg2rad(step_deg)[:, None, None]
    local = axis_angle_to_matrix(d) @ rotations.to(torch.float64)[:, None]  # (c, 7, 3, 3)
    c = local.shape[0]
    temps = _templates_for(template, local.reshape(-1, 3, 3), weights).reshape(c, n_rot, -1)
    patches = _patches(tomogram, centres, template.box)  # (c, 27 positions, B^3)
    num = patches @ temps.transpose(1, 2)  # (c, 27 positions, 7 rotations)
    mean = patches @ mask / p
    var = ((patches * patches) @ mask / p - mean * mean).clamp(min=1e-30)
    flat = (num / (p * torch.sqrt(var))[..., None]).reshape(c, -1)
    # Ties go to the unchanged pose (centre position 13, rotation 0), so a flat optimum stops.
    same = 13 * n_rot
    stay = flat[:, same]
    best = flat.max(1)
    keep = best.values <= stay
    choice = torch.where(keep, torch.full_like(best.indices, same), best.indices)
    pos, r_i = choice // n_rot, choice % n_rot
    new_rot = local[torch.arange(c, device=dev), r_i]
    new_cen = centres + _offsets(dev)[pos]
    return new_cen, new_rot, torch.maximum(best.values, stay), ~keep


# ----------------------------------------------------------------------------- driver


def _null_positions(
    shape: Sequence[int], n: int, margin: int, device: torch.device
) -> torch.Tensor:
    """``(n, 3)`` int64 random voxels (fixed seed) at least ``margin`` from the faces."""
    gen = torch.Generator().manual_seed(0)
    cols = [
        torch.randint(
            min(margin, s // 2), max(min(margin, s // 2) + 1, s - margin), (n,), generator=gen
        )
        for s in shape
    ]
    return torch.stack(cols, 1).to(device)


def _fine_stage(
    prepared: PreparedTomogram,
    template: Template,
    config: MatchConfig,
    grid: torch.Tensor,
    centres: torch.Tensor,
    rotations: torch.Tensor,
    order: int,
    step: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Rescore the coarse grid at full size, refine from the best starts, calibrate scores.

    Scores become z-scores of the refined FLCF against the same rescoring and refinement
    at random positions (mostly background), so that they compare across classes.
    """
    dev = prepared.full.device
    w_full = _template_weights(template, prepared, config, dev)
    # The null goes through the same rescoring and refinement as the peaks (one start):
    # a maximum over rotations and a walk in position lifts background scores as much.
    null = _null_positions(prepared.full.shape, config.n_null, template.box // 2, dev)
    null_zyx, null_rot, _ = rescore_coarse_grid(prepared.full, template, w_full, null, grid, 1)
    _, _, null_scores, null_eval = refine_peaks(
        prepared.full,
        template,
        w_full,
        null_zyx[:, 0],
        null_rot[:, 0],
        start_step_deg=grid_resolution_deg(order) / 2.0,
        final_step_deg=step,
    )
    med = null_scores.median()
    scale = 1.4826 * (null_scores - med).abs().median().clamp(min=1e-6)
    if centres.shape[0] == 0:
        empty = torch.zeros(0, device=dev)
        return centres, rotations.to(torch.float64), empty, 0
    starts_zyx, starts_rot, _ = rescore_coarse_grid(
        prepared.full, template, w_full, centres, grid, config.n_starts
    )
    new_zyx, new_rots, new_scores, n_eval = refine_peaks(
        prepared.full,
        template,
        w_full,
        starts_zyx.reshape(-1, 3),
        starts_rot.reshape(-1, 3, 3),
        start_step_deg=grid_resolution_deg(order) / 2.0,
        final_step_deg=step,
    )
    n_eval += null_eval + 27 * (centres.shape[0] + null.shape[0]) * int(grid.shape[0])
    n_s = starts_zyx.shape[1]
    best = new_scores.reshape(-1, n_s).max(1)
    pick = torch.arange(centres.shape[0], device=dev) * n_s + best.indices
    z = (best.values - med) / scale
    order_z = torch.argsort(z, descending=True, stable=True)
    # Refinement can walk two peaks onto one particle: separate them again.
    zyx_sorted = new_zyx[pick[order_z]]
    radii = torch.full((order_z.numel(),), max(0.5, template.radius_px / 2.0), device=dev)
    kept = order_z[_greedy_nms(zyx_sorted.to(torch.float64), radii.double(), order_z.numel())]
    return new_zyx[pick[kept]], new_rots[pick[kept]], z[kept], n_eval


def _coarse_cutoff(
    template: Template, coarse: Template, order: int, config: MatchConfig
) -> float | None:
    """Low-pass (cycles/voxel of the binned template) for the coarse scan, or ``None``.

    Resolution ``coarse_lowpass * covering radius (rad) * diameter``, kept if coarser than
    the binned Nyquist.
    """
    if config.coarse_lowpass is None:
        return None
    diameter_a = 2.0 * template.radius_px * template.angpix
    resolution_a = config.coarse_lowpass * math.radians(grid_resolution_deg(order)) * diameter_a
    cutoff = coarse.angpix / resolution_a
    return cutoff if cutoff < 0.5 else None


def _symmetry_size(template: Template, config: MatchConfig) -> int:
    return int(symmetry_group(template.symmetry).shape[0]) if config.use_symmetry else 1


def _default_candidates(shape: Sequence[int]) -> int:
    """Three times the particles per class of a SHREC-crowded volume, 20 to 2,000.

    SHREC 2020 holds about 2,000 particles of 12 classes per 512 x 512 x 200 voxels.
    """
    voxels = float(shape[0] * shape[1] * shape[2])
    per_class = _SHREC_PARTICLES / _SHREC_CLASSES * voxels / _SHREC_VOXELS
    return int(min(2000, max(20, round(3.0 * per_class))))


def match_class(
    prepared: PreparedTomogram, template: Template, config: MatchConfig = MatchConfig()
) -> ClassMatch:
    """Coarse scan, peak picking and refinement of one class (module docstring).

    Parameters
    ----------
    prepared
        From :func:`prepare_tomogram`.
    template
        At ``prepared.angpix``.
    config
        Search parameters.

    Returns
    -------
    ClassMatch
        Candidates (unbinned voxel coordinates x y z, rotations of the class density, coarse
        z-scores) and the cost.
    """
    dev = prepared.full.device
    b = prepared.bin_factor
    step = angular_step_deg(template.radius_px, template.angpix, config.ctf)
    fine_order = grid_order_for_step(step)
    order = min(config.coarse_order, fine_order)
    symmetry = template.symmetry if config.use_symmetry else "C1"
    grid = asymmetric_unit(so3_healpix_grid(order, dtype=torch.float64), symmetry)
    t0 = time.perf_counter()
    coarse = template.binned(b)
    w_coarse = _template_weights(coarse, prepared, config, dev)
    # Resolution matched to the coarse grid: a rotation error of the covering radius moves
    # the particle's edge by radius x angle, so finer detail would only add noise.
    cutoff = _coarse_cutoff(template, coarse, order, config)
    if cutoff is not None:
        w_coarse = w_coarse * (_radius((coarse.box,) * 3, dev) <= cutoff)
    best, index = scan_rotations(
        prepared.binned, coarse, grid, w_coarse, config.batch_size, lowpass=cutoff
    )
    z = robust_zscore(best)
    n_cand = config.n_candidates or _default_candidates(prepared.full.shape)
    zyx, values = find_peaks(z, n_cand, min_distance=max(1.0, coarse.radius_px))
    rots = grid.to(dev)[index[zyx[:, 0], zyx[:, 1], zyx[:, 2]]]
    t1 = time.perf_counter()
    full_zyx = zyx * b
    n_eval = 0
    sel = (values >= config.refine_min_score).nonzero()[:, 0]
    if config.refine:
        full_zyx, rots, values, n_eval = _fine_stage(
            prepared, template, config, grid, full_zyx[sel], rots[sel], order, step
        )
    t2 = time.perf_counter()
    # Rotation of the class density: the template holds V(Q^T r), so R_class = R Q.
    rot_class = rots.to(torch.float64) @ template.frame_matrix().to(dev)
    cands = Candidates(
        template.name,
        full_zyx.flip(-1).to(torch.float64).cpu(),
        rot_class.cpu(),
        values.to(torch.float64).cpu(),
        template.radius_px,
    )
    return ClassMatch(
        cands,
        n_coarse_rotations=int(grid.shape[0]),
        n_exhaustive_rotations=grid_size(fine_order) // _symmetry_size(template, config),
        n_refine_evaluations=n_eval,
        coarse_seconds=t1 - t0,
        refine_seconds=t2 - t1,
        angular_step_deg=step,
    )


def match_tomogram(
    tomogram: torch.Tensor,
    templates: Sequence[Template],
    config: MatchConfig = MatchConfig(),
    angpix: float | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> MatchResult:
    """Match every template against a tomogram (module docstring).

    Parameters
    ----------
    tomogram
        ``(D, H, W)`` reconstruction, protein bright.
    templates
        Class templates at the tomogram's voxel size.
    config
        Search parameters.
    angpix
        Voxel size in Angstrom; default the templates'.
    device
        Torch device for all the work (``"cpu"``, ``"cuda"``, ...).
    progress
        Called with the class id before each class.

    Returns
    -------
    MatchResult
        Per-class candidates and costs.
    """
    if not templates:
        raise ValueError("no templates to match")
    dev = torch.device(device)
    apix = float(templates[0].angpix if angpix is None else angpix)
    t0 = time.perf_counter()
    prepared = prepare_tomogram(tomogram.to(dev), apix, config)
    prep_s = time.perf_counter() - t0
    out = []
    for template in templates:
        if progress is not None:
            progress(template.name)
        out.append(match_class(prepared, template, config))
    return MatchResult(out, prep_s)


def _write_scores_star(picks: Picks, path: Path) -> None:
    """Write the picks with scores as a star file ``read_picks`` reads (angles as extras)."""
    angles = picks.angles if picks.angles is not None else [[0.0, 0.0, 0.0]] * len(picks)
    table = pd.DataFrame(
        {
            "rlnCoordinateX": picks.coords[:, 0],
            "rlnCoordinateY": picks.coords[:, 1],
            "rlnCoordinateZ": picks.coords[:, 2],
            "cryoposeClass": list(picks.class_ids),
            "rlnAutopickFigureOfMerit": picks.scores if picks.scores is not None else 0.0,
            "cryoposeRotZ1": [a[0] for a in angles],
            "cryoposeRotX": [a[1] for a in angles],
            "cryoposeRotZ2": [a[2] for a in angles],
        }
    )
    with atomic_path(path) as tmp:
        starfile.write({"picks": table}, tmp)


def match_tomogram_file(
    tomogram: str | Path,
    output: str | Path,
    classes: Sequence[str] | None = None,
    config: MatchConfig = MatchConfig(),
    mode: str = "filtered",
    threshold: float = 4.0,
    overlap: float = 0.5,
    n_per_class: int = 100,
    structures_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
    assembly: str = "biological",
) -> tuple[Picks, MatchResult]:
    """Match the bundled class templates against a tomogram file and write the picks.

    Writes ``output`` (SHREC text ``pdb x y z rotZ1 rotX rotZ2``, strongest first), the same
    picks with their scores as ``output`` with suffix ``.star`` (``rlnAutopickFigureOfMerit``)
    and the parameters and per-class costs as ``.json``, each atomically.

    Parameters
    ----------
    tomogram
        MRC volume, protein bright; its voxel size sets the templates'.
    output
        Picks file.
    classes
        Class ids to search; default every bundled class.
    config
        Search parameters.
    mode
        ``"filtered"`` (TM-F: :func:`cryopose.tomo.peaks.filter_picks` with ``threshold`` and
        ``overlap``) or ``"top"`` (TM-T: :func:`cryopose.tomo.peaks.top_n_per_class` with
        ``n_per_class``).
    threshold, overlap, n_per_class
        Selection parameters.
    structures_dir
        Folder of class models and maps; default the bundled SHREC structures.
    device
        Torch device.
    progress
        Called with each class id.
    assembly
        What each model contributes to its template, as in the simulation:
        ``"biological"`` (assembly 1) or ``"deposited"`` (the asymmetric unit).

    Returns
    -------
    picks, result
        What was written, and the full matching result.

    Raises
    ------
    InputError
        Unreadable tomogram, unknown class or mode.
    """
    from cryopose.tomo.templates import load_templates

    if mode not in ("filtered", "top"):
        raise InputError(None, f"mode must be 'filtered' or 'top', got {mode!r}")
    path = Path(tomogram)
    volume, angpix = read_map(path)
    if volume.dim() != 3:
        raise InputError(path, f"expected a 3D tomogram, got shape {tuple(volume.shape)}")
    if assembly not in ("biological", "deposited"):
        raise InputError(None, f"assembly must be 'biological' or 'deposited', got {assembly!r}")
    templates = load_templates(
        classes, angpix=angpix, structures_dir=structures_dir, assembly=assembly
    )
    result = match_tomogram(volume, templates, config, angpix, device, progress)
    if mode == "filtered":
        picks = filter_picks(result.candidates, threshold, overlap)
    else:
        picks = top_n_per_class(result.candidates, n_per_class)
    out = Path(output)
    write_picks(picks, out)
    _write_scores_star(picks, out.with_suffix(".star"))
    record = {
        "tomogram": str(path),
        "angpix": angpix,
        "mode": mode,
        "threshold": threshold,
        "overlap": overlap,
        "n_per_class": n_per_class,
        "config": asdict(config),
        "n_picks": len(picks),
        "seconds": round(result.seconds, 3),
        "classes": {
            c.candidates.name: {
                "symmetry": t.symmetry,
                "angular_step_deg": round(c.angular_step_deg, 3),
                "n_coarse_rotations": c.n_coarse_rotations,
                "n_exhaustive_rotations": c.n_exhaustive_rotations,
                "n_refine_evaluations": c.n_refine_evaluations,
                "coarse_seconds": round(c.coarse_seconds, 3),
                "refine_seconds": round(c.refine_seconds, 3),
            }
            for c, t in zip(result.classes, templates, strict=True)
        },
    }
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return picks, result
