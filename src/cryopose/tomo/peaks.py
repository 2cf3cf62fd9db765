"""Peaks of template-matching score maps, and the two ways SHREC 2020 turned them into picks.

:func:`find_peaks` takes the local maxima of a score map (26-neighbourhood), strongest first,
and keeps a maximum only if no stronger kept one lies within ``min_distance`` voxels (greedy
non-maximum suppression with a spherical exclusion zone). Taking local maxima first means a
shoulder of a suppressed peak never becomes a pick of its own.

Scores of different classes are compared on a common scale by :func:`robust_zscore`: the
score map minus its median, divided by 1.4826 times its median absolute deviation (the
standard deviation of the background for Gaussian noise, unmoved by the particles).

SHREC 2020's template-matching entries turned per-class peaks into picks in two ways:

* **TM-T** (:func:`top_n_per_class`): every class keeps its ``n`` best peaks. Classes do not
  compete, so one particle is often reported by several classes.
* **TM-F** (:func:`filter_picks`): peaks of all classes above a score threshold are pooled,
  strongest first, and a peak is dropped when a stronger kept peak of any class lies closer
  than ``overlap`` times the sum of the two classes' radii (two proteins cannot be closer
  than that without overlapping).

Angles are written in SHREC's ``rotZ1 rotX rotZ2`` convention
(:func:`matrix_to_shrec_angles`, the inverse of
:func:`cryopose.simulate.tomogram.euler_zxz_to_matrix`).

>>> import torch
>>> score = torch.zeros(1, 1, 12)
>>> score[0, 0, 2], score[0, 0, 4], score[0, 0, 9] = 3.0, 2.0, 1.0
>>> zyx, values = find_peaks(score, n=5, min_distance=3.0, threshold=0.5)
>>> zyx[:, 2].tolist(), values.tolist()
([2, 9], [3.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cryopose.io.picks import Picks

__all__ = [
    "Candidates",
    "filter_picks",
    "find_peaks",
    "matrix_to_shrec_angles",
    "robust_zscore",
    "top_n_per_class",
]

_MAD_TO_STD = 1.4826  # standard deviation / median absolute deviation for a Gaussian
_ZSCORE_SAMPLES = 1 << 21  # voxels used for the median: plenty for two significant digits


@dataclass(frozen=True)
class Candidates:
    """Peaks of one class.

    Attributes
    ----------
    name
        Class id.
    coords
        ``(k, 3)`` float64 centres in voxels, x y z.
    rotations
        ``(k, 3, 3)`` float64 active rotations of the class density (SHREC convention).
    scores
        ``(k,)`` float64 scores, comparable across classes (z-scores), strongest first.
    radius_px
        Radius of the class (voxels), for overlap filtering.
    """

    name: str
    coords: torch.Tensor
    rotations: torch.Tensor
    scores: torch.Tensor
    radius_px: float

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def robust_zscore(score: torch.Tensor) -> torch.Tensor:
    """``(score - median) / (1.4826 MAD)`` over the volume (a strided sample for big ones).

    Parameters
    ----------
    score
        ``(D, H, W)`` map.

    Returns
    -------
    torch.Tensor
        Same shape, float32.
    """
    flat = score.reshape(-1)
    step = max(1, flat.numel() // _ZSCORE_SAMPLES)
    sample = flat[::step].to(torch.float64)
    med = sample.median()
    mad = (sample - med).abs().median().clamp(min=1e-12)
    return ((score - med) / (_MAD_TO_STD * mad)).to(torch.float32)


def find_peaks(
    score: torch.Tensor,
    n: int,
    min_distance: float,
    threshold: float = -float("inf"),
    border: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` local maxima, strongest first, at least ``min_distance`` voxels apart.

    Parameters
    ----------
    score
        ``(D, H, W)`` map.
    n
        Most peaks returned.
    min_distance
        Exclusion radius in voxels: a maximum closer than this (Euclidean, strictly) to a
        stronger kept one is dropped.
    threshold
        Only maxima with ``score >= threshold``.
    border
        Ignore maxima within this many voxels of the volume's faces.

    Returns
    -------
    zyx, values
        ``(k, 3)`` int64 voxel indices ``(z, y, x)`` and ``(k,)`` scores, ``k <= n``.
    """
    dev = score.device
    empty = (torch.zeros((0, 3), dtype=torch.int64, device=dev), score.new_zeros(0))
    if n <= 0:
        return empty
    pooled = F.max_pool3d(score[None, None], 3, stride=1, padding=1)[0, 0]
    keep = (score == pooled) & (score >= threshold)
    if border > 0:
        inner = torch.zeros_like(keep)
        sl = tuple(slice(border, max(border, s - border)) for s in score.shape)
        inner[sl] = True
        keep &= inner
    zyx = keep.nonzero()
    if zyx.shape[0] == 0:
        return empty
    values = score[zyx[:, 0], zyx[:, 1], zyx[:, 2]]
    order = torch.argsort(values, descending=True, stable=True)
    zyx, values = zyx[order], values[order]
    kept = _greedy_nms(zyx.to(torch.float64), torch.full_like(values, min_distance / 2), n)
    return zyx[kept], values[kept]


def _greedy_nms(points: torch.Tensor, radii: torch.Tensor, n: int) -> torch.Tensor:
    """Return the indices (input order) of the points greedy NMS keeps, at most ``n``.

    Points ``i, j`` clash when closer than ``radii[i] + radii[j]``; points must be sorted
    strongest first.
    """
    kept: list[int] = []
    if n <= 0:
        return torch.zeros(0, dtype=torch.int64, device=points.device)
    kept_pts = points.new_zeros((0, 3))
    kept_r = radii.new_zeros(0)
    # Blocks of candidates are checked against the kept set at once, then resolved in order.
    block = 4096
    for start in range(0, points.shape[0], block):
        pts = points[start : start + block]
        rad = radii[start : start + block].to(points.dtype)
        if kept_pts.shape[0]:
            clash = (torch.cdist(pts, kept_pts) < rad[:, None] + kept_r[None, :]).any(1)
        else:
            clash = torch.zeros(pts.shape[0], dtype=torch.bool, device=pts.device)
        for i in (~clash).nonzero()[:, 0].tolist():
            if kept_pts.shape[0]:
                d = torch.linalg.vector_norm(kept_pts - pts[i], dim=1)
                if bool((d < rad[i] + kept_r).any()):
                    continue
            kept.append(start + i)
            kept_pts = torch.cat([kept_pts, pts[i : i + 1]])
            kept_r = torch.cat([kept_r, rad[i : i + 1]])
            if len(kept) >= n:
                return torch.tensor(kept, dtype=torch.int64, device=points.device)
    return torch.tensor(kept, dtype=torch.int64, device=points.device)


def matrix_to_shrec_angles(rotations: torch.Tensor) -> torch.Tensor:
    """Active rotation matrices to SHREC ``(rotZ1, rotX, rotZ2)`` degrees.

    Parameters
    ----------
    rotations
        ``(..., 3, 3)`` ``R = Rz(phi) Rx(theta) Rz(psi)``.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` float64 ``(phi, theta, psi)``, theta in [0, 180]; for theta 0 or 180
        (gimbal lock) psi is 0.
    """
    r = rotations.to(torch.float64)
    theta = torch.acos(r[..., 2, 2].clamp(-1.0, 1.0))
    phi = torch.atan2(r[..., 0, 2], -r[..., 1, 2])
    psi = torch.atan2(r[..., 2, 0], r[..., 2, 1])
    locked = torch.sin(theta).abs() < 1e-6
    # R = Rz(phi +- psi) there: put the whole turn into phi.
    phi_locked = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    phi = torch.where(locked, phi_locked, phi)
    psi = torch.where(locked, torch.zeros_like(psi), psi)
    return torch.rad2deg(torch.stack([phi, theta, psi], -1))


def _to_picks(
    names: list[str], coords: torch.Tensor, rots: torch.Tensor, sc: torch.Tensor
) -> Picks:
    angles = matrix_to_shrec_angles(rots) if rots.shape[0] else rots.new_zeros((0, 3))
    return Picks(names, coords.cpu().numpy(), angles.cpu().numpy(), sc.cpu().numpy())


def top_n_per_class(candidates: Sequence[Candidates], n: int | Mapping[str, int]) -> Picks:
    """SHREC's TM-T: the ``n`` strongest peaks of every class (no competition between classes).

    Parameters
    ----------
    candidates
        Per-class peaks, each strongest first (already separated within the class).
    n
        Picks per class, or a class id -> count map (missing classes keep none).

    Returns
    -------
    Picks
        Classes in the given order, each strongest first, with angles and scores.
    """
    names: list[str] = []
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for c in candidates:
        k = min(len(c), n if isinstance(n, int) else int(n.get(c.name, 0)))
        names += [c.name] * k
        parts.append((c.coords[:k], c.rotations[:k], c.scores[:k]))
    return _concat(names, parts)


def _concat(
    names: list[str], parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> Picks:
    if not parts:
        return Picks([], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    coords = torch.cat([p[0].cpu() for p in parts])
    rots = torch.cat([p[1].cpu() for p in parts])
    scores = torch.cat([p[2].cpu() for p in parts])
    return _to_picks(names, coords, rots, scores)


def filter_picks(
    candidates: Sequence[Candidates],
    threshold: float,
    overlap: float = 0.5,
    max_picks: int | None = None,
) -> Picks:
    """SHREC's TM-F: pool all classes above ``threshold``, suppress overlaps across classes.

    Parameters
    ----------
    candidates
        Per-class peaks with comparable scores.
    threshold
        Least score kept.
    overlap
        Two peaks of classes with radii ``r_i, r_j`` clash when closer than
        ``overlap * (r_i + r_j)`` voxels; the weaker is dropped.
    max_picks
        Most picks kept (strongest first); ``None`` for no limit.

    Returns
    -------
    Picks
        Strongest first, with angles and scores.
    """
    names = [c.name for c in candidates for _ in range(len(c))]
    if not names:
        return _concat([], [])
    coords = torch.cat([c.coords.cpu() for c in candidates]).to(torch.float64)
    rots = torch.cat([c.rotations.cpu() for c in candidates]).to(torch.float64)
    scores = torch.cat([c.scores.cpu() for c in candidates]).to(torch.float64)
    radii = torch.cat(
        [torch.full((len(c),), overlap * c.radius_px, dtype=torch.float64) for c in candidates]
    )
    above = (scores >= threshold).nonzero()[:, 0]
    order = above[torch.argsort(scores[above], descending=True, stable=True)]
    limit = len(order) if max_picks is None else max_picks
    kept = order[_greedy_nms(coords[order], radii[order], limit)]
    return _to_picks([names[i] for i in kept.tolist()], coords[kept], rots[kept], scores[kept])
