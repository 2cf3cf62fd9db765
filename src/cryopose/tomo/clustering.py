"""Learned picking, clustering half: a voxel segmentation -> particle centres with classes.

:func:`cluster_segmentation` labels the connected components of the predicted foreground (every
voxel whose class is not 0), 6-connected by default. Each component becomes one pick:

* components: by default of the voxels of one class (``by_class``), so that touching
  particles of different classes stay apart; else of the whole foreground;
* class: the majority class of its voxels (ties to the lower index);
* centre: the centroid of its voxels, weighted by the foreground probability when given;
* score: the component's mean foreground probability (its size when no probability is given);
* size filter: a component is dropped when it has fewer than ``min_voxels[class]`` voxels,
  the caller's expected volume of the class times a fraction
  (:mod:`cryopose.tomo.picker` uses the median target volume of each class seen in training);
* fragment suppression: a smaller component whose centre lies within ``min_distance[c]`` of a
  larger kept component of class ``c`` is a piece of the same particle (masks of elongated or
  hollow proteins fall apart at 1 nm voxels) and is dropped.

Connected components need a well-calibrated segmentation: a network trained on patches centred
on particles over-predicts foreground on a whole tomogram (measured: 11-25 % of the voxels
against 3 % true), neighbours merge and the argmax classes fragment each particle. The
learned picker therefore uses :func:`peak_picks` by default: local maxima of the smoothed
foreground probability (a mean-shift with a Gaussian kernel converges to these modes), one
pick each, class from the smoothed class probabilities at the peak, score the smoothed
foreground; the score threshold is calibrated on the training tomograms
(:func:`match_centres` counts hits there).

>>> import numpy as np
>>> labels = np.zeros((8, 8, 8), dtype=np.int64)
>>> labels[1:4, 1:4, 1:4] = 2
>>> picks = cluster_segmentation(labels, ["a", "b"])
>>> picks.class_ids.tolist(), picks.coords.tolist()
(['b'], [[2.0, 2.0, 2.0]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cryopose.io.picks import Picks

__all__ = [
    "cluster_segmentation",
    "drop_converged",
    "match_centres",
    "merge_saddle_picks",
    "peak_picks",
    "refine_centres",
]


def cluster_segmentation(
    labels: Any,
    class_names: Sequence[str],
    foreground: Any | None = None,
    min_voxels: Mapping[int, int] | None = None,
    min_distance: Mapping[int, float] | None = None,
    connectivity: int = 1,
    by_class: bool = True,
) -> Picks:
    """Particle picks from a label volume (module docstring).

    Parameters
    ----------
    labels
        ``(Z, Y, X)`` int class index per voxel, 0 background, ``k`` = ``class_names[k - 1]``
        (numpy array or tensor).
    class_names
        Names of classes ``1..len(class_names)``.
    foreground
        Optional ``(Z, Y, X)`` foreground probability (``1 - P(background)``), weights the
        centroid and gives the score.
    min_voxels
        Least component size per class index; missing classes keep every component.
    min_distance
        Fragment suppression radius per class index (voxels): components are visited from
        the largest down, and one whose centre lies closer than ``min_distance[c]`` to the
        centre of an already kept component of class ``c`` is dropped as a fragment of it.
    connectivity
        1: faces (6-connected), 2: +edges (18), 3: +corners (26).
    by_class
        Components of voxels of the same class (touching particles of different classes
        stay apart); ``False``: components of the whole foreground, each with its majority
        class.

    Returns
    -------
    Picks
        One pick per kept component, centres ``(x, y, z)`` in voxels, ordered by descending
        score.
    """
    lab = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64)
    if lab.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {lab.shape}")
    n_classes = len(class_names) + 1
    if lab.min(initial=0) < 0 or lab.max(initial=0) >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    comp, n = _components(lab, n_classes, structure, by_class)
    if n == 0:
        return Picks([], np.zeros((0, 3)), scores=np.zeros(0))
    flat = comp.ravel()
    inside = flat > 0
    ids = flat[inside] - 1
    votes = np.bincount(ids * n_classes + lab.ravel()[inside], minlength=n * n_classes)
    major = votes.reshape(n, n_classes)[:, 1:].argmax(axis=1) + 1
    size = np.bincount(ids, minlength=n)
    if foreground is None:
        w: npt.NDArray[np.float64] = np.ones(ids.shape[0])
    else:
        fg = np.asarray(foreground.cpu() if hasattr(foreground, "cpu") else foreground)
        w = fg.astype(np.float64).ravel()[inside]
    w_sum = np.bincount(ids, weights=w, minlength=n)
    zyx = np.unravel_index(np.flatnonzero(inside), lab.shape)
    centre = (
        np.stack([np.bincount(ids, weights=w * c, minlength=n) for c in zyx], axis=1)
        / np.maximum(w_sum, 1e-12)[:, None]
    )
    score = w_sum / size if foreground is not None else size.astype(np.float64)
    threshold = np.array([0, *[(min_voxels or {}).get(k, 0) for k in range(1, n_classes)]])
    keep = size >= threshold[major]
    if min_distance:
        keep &= _suppress_fragments(centre, size, major, keep, min_distance)
    order = np.argsort(-score[keep], kind="stable")
    names = np.asarray(class_names)[major[keep] - 1][order]
    return Picks(names, centre[keep][order][:, ::-1], scores=score[keep][order])


def _components(
    lab: npt.NDArray[np.int64], n_classes: int, structure: npt.NDArray[np.bool_], by_class: bool
) -> tuple[npt.NDArray[np.int64], int]:
    """Component ids (1..n, 0 background) of the foreground or of each class separately."""
    if not by_class:
        comp, n = ndimage.label(lab > 0, structure=structure)
        return comp.astype(np.int64), int(n)
    out = np.zeros(lab.shape, dtype=np.int64)
    n = 0
    for c in range(1, n_classes):
        comp_c, n_c = ndimage.label(lab == c, structure=structure)
        out[comp_c > 0] = comp_c[comp_c > 0] + n
        n += int(n_c)
    return out, n


def _suppress_fragments(
    centre: npt.NDArray[np.float64],
    size: npt.NDArray[np.int64],
    major: npt.NDArray[np.int64],
    candidate: npt.NDArray[np.bool_],
    min_distance: Mapping[int, float],
) -> npt.NDArray[np.bool_]:
    """Greedy, largest first: drop candidates near a kept component (``min_distance`` of it)."""
    radius = np.array([float(min_distance.get(int(c), 0.0)) for c in major])
    kept: list[int] = []
    out = np.zeros(len(size), dtype=bool)
    for i in np.argsort(-size, kind="stable"):
        if not candidate[i]:
            continue
        if kept:
            d = np.linalg.norm(centre[kept] - centre[i], axis=1)
            if bool((d < radius[kept]).any()):
                continue
        kept.append(int(i))
        out[i] = True
    return out


def merge_saddle_picks(
    picks: Picks, foreground: Any, ratio: float = 0.6, max_distance: float = 12.0
) -> Picks:
    """Drop a pick joined to a better one by foreground without a valley (one particle).

    An elongated particle can show two foreground maxima; two neighbouring particles have
    background between them. Going down the picks by score, a pick is dropped when a kept
    pick lies within ``max_distance`` voxels and the foreground along the segment between
    them never falls below ``ratio`` x the lower of their two scores.

    Parameters
    ----------
    picks
        Centres ``(x, y, z)`` in voxels with scores (the foreground at the centre).
    foreground
        ``(Z, Y, X)`` the smoothed foreground the scores were read from (numpy or tensor).
    ratio
        Least foreground along the segment, relative to the lower score, for one particle.
    max_distance
        Picks further apart are never merged (voxels).

    Returns
    -------
    Picks
        The picks kept, in their order.

    >>> fg = np.zeros((1, 1, 12), dtype=np.float32)
    >>> fg[0, 0, :] = [0, 1, .9, .8, .9, 1, 0, 0, 1, 0, 0, 0]
    >>> p = Picks(["a"] * 3, [[1, 0, 0], [5, 0, 0], [8, 0, 0]], scores=[1.0, 1.0, 1.0])
    >>> merge_saddle_picks(p, fg).coords[:, 0].tolist()
    [1.0, 8.0]
    """
    if len(picks) < 2:
        return picks
    fg = np.asarray(
        foreground.cpu() if hasattr(foreground, "cpu") else foreground, dtype=np.float32
    )
    scores = picks.scores if picks.scores is not None else np.ones(len(picks))
    xyz = picks.coords
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        merged = False
        near = np.asarray(kept, dtype=np.int64)
        if near.size:
            dist = np.linalg.norm(xyz[near] - xyz[i], axis=1)
            near = near[dist <= max_distance]
        for j in near.tolist():
            d = float(np.linalg.norm(xyz[i] - xyz[j]))
            t = np.linspace(0.0, 1.0, 2 * int(np.ceil(d)) + 2)
            points = xyz[j][None, :] + t[:, None] * (xyz[i] - xyz[j])[None, :]
            low = ndimage.map_coordinates(fg, points[:, ::-1].T, order=1, mode="nearest").min()
            if low >= ratio * min(scores[i], scores[j]):
                merged = True
                break
        if not merged:
            kept.append(int(i))
    idx = np.sort(np.asarray(kept, dtype=np.int64))
    angles = None if picks.angles is None else picks.angles[idx]
    sc = None if picks.scores is None else picks.scores[idx]
    return Picks(picks.class_ids[idx], picks.coords[idx], angles=angles, scores=sc)


def peak_picks(
    prob: Any,
    class_names: Sequence[str],
    sigma: float = 1.0,
    radius: int = 4,
    threshold: float = 0.5,
) -> Picks:
    """Pick the local maxima of the smoothed foreground probability.

    Parameters
    ----------
    prob
        ``(1 + n_classes, Z, Y, X)`` class probabilities (class 0 background), numpy or tensor.
    class_names
        Names of classes ``1..n_classes``.
    sigma
        Standard deviation (voxels) of the Gaussian smoothing of the foreground
        ``1 - prob[0]`` and of the class probabilities.
    radius
        A peak is the largest smoothed value within a ``(2 radius + 1)^3`` cube.
    threshold
        Least smoothed foreground at a peak.

    Returns
    -------
    Picks
        Centres ``(x, y, z)`` in voxels (integer voxels), the class whose smoothed probability
        is highest at the peak, score = smoothed foreground, ordered by descending score.
    """
    p = np.asarray(prob.cpu() if hasattr(prob, "cpu") else prob, dtype=np.float32)
    if p.ndim != 4 or p.shape[0] != len(class_names) + 1:
        raise ValueError(f"prob must be (1 + {len(class_names)}, Z, Y, X), got {p.shape}")
    smooth = ndimage.gaussian_filter((1.0 - p[0]).astype(np.float32), sigma)
    size = 2 * radius + 1
    top = ndimage.maximum_filter(smooth, size=size, mode="constant", cval=-np.inf)
    peaks = np.argwhere((smooth == top) & (smooth > threshold))
    if len(peaks) == 0:
        return Picks([], np.zeros((0, 3)), scores=np.zeros(0))
    at = tuple(peaks.T)
    votes = np.stack(
        [ndimage.gaussian_filter(p[c], sigma)[at] for c in range(1, p.shape[0])], axis=1
    )
    score = smooth[at].astype(np.float64)
    order = np.argsort(-score, kind="stable")
    names = np.asarray(class_names)[votes.argmax(axis=1)][order]
    return Picks(names, peaks[order][:, ::-1].astype(np.float64), scores=score[order])


def refine_centres(
    picks: Picks,
    foreground: Any,
    radii: Mapping[str, float],
    iterations: int = 3,
) -> Picks:
    """Move each pick to the foreground-weighted centroid of a ball around it (mean shift).

    A maximum of the smoothed foreground is where the most protein is, not the particle's
    centre: a hollow particle (the 20S proteasome 3j9i is a barrel) puts it in the wall, 3-4
    voxels off the centre and outside the occupancy SHREC counts as a hit. The centroid of the
    foreground within the particle's radius is the centre of the whole particle. Each step
    replaces the centre by the centroid of ``foreground`` over the voxels within
    ``radii[class]`` of the current (rounded) centre, a flat-kernel mean shift.

    Parameters
    ----------
    picks
        Centres ``(x, y, z)`` in voxels; a class missing from ``radii`` is left in place.
    foreground
        ``(Z, Y, X)`` foreground probability (numpy or tensor), unsmoothed.
    radii
        Ball radius per class name, voxels.
    iterations
        Mean-shift steps.

    Returns
    -------
    Picks
        The same picks (classes, angles, scores, order) with the moved centres.

    >>> fg = np.zeros((1, 1, 12), dtype=np.float32)
    >>> fg[0, 0, [3, 7]] = 1.0
    >>> p = Picks(["a"], [[3, 0, 0]], scores=[1.0])
    >>> refine_centres(p, fg, {"a": 4.0}).coords[0].tolist()
    [5.0, 0.0, 0.0]
    """
    fg = np.asarray(
        foreground.cpu() if hasattr(foreground, "cpu") else foreground, dtype=np.float32
    )
    if fg.ndim != 3:
        raise ValueError(f"foreground must be (Z, Y, X), got shape {fg.shape}")
    shape = np.array(fg.shape)
    coords = picks.coords.astype(np.float64).copy()
    for i, name in enumerate(picks.class_ids):
        radius = float(radii.get(str(name), 0.0))
        if radius <= 0:
            continue
        r = int(np.ceil(radius))
        grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1].reshape(3, -1).T
        ball = grid[(grid**2).sum(axis=1) <= radius * radius]
        centre = coords[i, ::-1]  # (z, y, x)
        for _ in range(iterations):
            points = np.round(centre).astype(np.int64) + ball
            points = points[np.all((points >= 0) & (points < shape), axis=1)]
            weights = fg[points[:, 0], points[:, 1], points[:, 2]].astype(np.float64)
            if weights.sum() <= 0:
                break
            centre = (points * weights[:, None]).sum(axis=0) / weights.sum()
        coords[i] = centre[::-1]
    return Picks(picks.class_ids, coords, angles=picks.angles, scores=picks.scores)


def match_centres(
    picks_zyx: npt.NDArray[np.float64],
    centres_zyx: npt.NDArray[np.float64],
    radii: npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_]:
    """Which picks are the first hit of a particle (for calibrating a score threshold).

    Parameters
    ----------
    picks_zyx
        ``(m, 3)`` pick centres, in the order they are accepted (descending score).
    centres_zyx
        ``(n, 3)`` true particle centres.
    radii
        ``(n,)`` hit radius of each particle (voxels): a pick within it hits the particle.

    Returns
    -------
    numpy.ndarray
        ``(m,)`` True where the pick hits a particle not hit by an earlier pick (a true
        positive); False for misses and repeated hits (false positives).
    """
    out = np.zeros(len(picks_zyx), dtype=bool)
    if len(picks_zyx) == 0 or len(centres_zyx) == 0:
        return out
    d = np.linalg.norm(picks_zyx[:, None, :] - centres_zyx[None, :, :], axis=2)
    d = np.where(d <= radii[None, :], d, np.inf)
    taken = np.zeros(len(centres_zyx), dtype=bool)
    for i in range(len(picks_zyx)):
        j = int(np.argmin(d[i]))
        if np.isfinite(d[i, j]) and not taken[j]:
            taken[j] = True
            out[i] = True
    return out


def drop_converged(picks: Picks, radii: Mapping[str, float], factor: float = 1.0) -> Picks:
    """Drop picks whose centres ended up on a better-scored pick's particle.

    After :func:`refine_centres`, two maxima of one particle move to the same centre. Picks
    are taken in descending score; one closer than ``factor`` x the smaller of the two class
    radii to a pick already kept is dropped (two distinct particles are at least about the sum
    of their radii apart).

    Parameters
    ----------
    picks
        Centres ``(x, y, z)`` in voxels with classes and scores (no scores: kept in order).
    radii
        Radius per class name, voxels; a class missing from it has radius 0 (never dropped).
    factor
        Multiple of the smaller radius (0 keeps every pick).

    Returns
    -------
    Picks
        The kept picks, in their original order.

    >>> p = Picks(["a", "a", "a"], [[0, 0, 0], [1, 0, 0], [9, 0, 0]], scores=[0.5, 0.9, 0.4])
    >>> drop_converged(p, {"a": 3.0}).coords[:, 0].tolist()
    [1.0, 9.0]
    """
    if factor <= 0 or len(picks) < 2:
        return picks
    scores = np.zeros(len(picks)) if picks.scores is None else np.asarray(picks.scores)
    radius = np.array([float(radii.get(str(name), 0.0)) for name in picks.class_ids])
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if kept:
            distance = np.linalg.norm(picks.coords[kept] - picks.coords[i], axis=1)
            if np.any(distance < factor * np.minimum(radius[kept], radius[i])):
                continue
        kept.append(int(i))
    keep = np.sort(np.array(kept, dtype=np.int64))
    angles = None if picks.angles is None else picks.angles[keep]
    scores_kept = None if picks.scores is None else picks.scores[keep]
    return Picks(picks.class_ids[keep], picks.coords[keep], angles=angles, scores=scores_kept)
