"""Junk pruning by directional robust z-scores of the pose network's confidence (cryoPARES).

The score of a particle is the sum of its 10 largest pose probabilities (``cryoposeTop10Score``):
a network that recognises the particle puts its mass on a few poses, junk spreads it. How
peaked the distribution can be depends on the view (a featureless side view is less certain
than a distinctive top view), so a raw threshold would prune whole views. The score is
therefore normalised per viewing direction::

    z = (score - median_c) / (1.4826 * MAD_c)

where ``median_c`` and ``MAD_c`` (median absolute deviation, scaled by 1.4826 so that it equals
the standard deviation of a normal distribution) are taken over the *validation* particles of
the model (held out from its training, so their scores look like those of new particles) whose
predicted viewing direction falls in the same HEALPix pixel ``c`` of order 2 (192 pixels,
cones of about 15 degrees; the viewing direction of a RELION matrix is its third row).

Rules
-----
* **Symmetry.** With a point group G the poses ``A g`` are the same view, so a validation
  particle counts in every pixel its orbit ``{(A g)^T e_z}`` visits (once per pixel). A particle
  is scored with the statistics of the pixel of its own predicted direction.
* **Sparse cones.** A pixel holding fewer than ``min_count`` validation particles (default 20)
  pools its 8 HEALPix neighbours (the pixel and its neighbours, each particle once); when the
  pool still holds fewer than ``min_count``, the global median and MAD of all validation
  particles are used. The source of each pixel's statistics is recorded (0 own pixel,
  1 neighbours, 2 global).
* **Ties.** A scale of 0 (all scores tied) falls back to the global scale, and a global
  scale of 0 to 1.

Gold standard: the model trained on half ``h`` writes ``MODEL_DIR/validation_half{h}.pt``
(a ``torch.save`` dict of tensors ``pred_rotations`` (n, 3, 3), ``true_rotations`` (n, 3, 3),
``max_probability`` (n,), ``top10_score`` (n,); ``h = 0`` for a ``full.pt`` model) and a
particle is scored with the statistics of the model that predicted it.
:func:`fit_directional_stats` turns those files into ``MODEL_DIR/directional_stats.json``.

Refinement z-score
------------------
The network score alone separates junk poorly: with a 32 px network trained for 6 CPU-minutes
(median pose error 15 deg) its directional z-score reached ROC AUC 0.77 on simulated junk
(``benchmarks/bench_pruning.py``). Local refinement against a reference map
(:mod:`cryopose.pose.refine`) measures something the network cannot: whether the image *is* a
projection of the map. Its peak significance ``cryoposeRefinePeakZ`` (the z-score of the best
correlation among all translations of its correlation map) ranked the same junk with AUC 0.98
(each of the five junk kinds 0.96-1.00) and, refined from the true poses, 1.00. A particle
refined from a wrong pose still matches the map better than junk does: with a network trained
for 2 minutes, no better than random (median error 122 deg), the network z-score fell to
AUC 0.52 and the refinement's to 0.92. What remains are particles whose pose is wrong by more
than the local search reaches (at 6 minutes a quarter stayed more than 40 deg off, with a
median significance of 5.4 against 8.3-9.3 for those within 15 deg), and "other protein" junk
of the particle's size, which matches a wrong projection about as well.

:func:`refine_zscores` turns that significance into a robust z-score,
``cryoposeRefineZScore = (s - median) / (1.4826 MAD)``, with the median and MAD taken over the
particles being scored themselves (there is no validation set for a new data set; the median
and MAD ignore up to half of the values, so a junk fraction well below one half does not move
them much). A threshold of ``-k`` then means "``k`` standard deviations below the typical
particle of this data set", whatever the box, band or noise level. On the benchmark the
threshold that best separated particles from junk (Youden's J) was -1.0: it kept 90% of the
particles and 1% of the junk.

By default the statistics are global, not per cone. Measured on the benchmark's 850 particles:
at their *true* poses the median significance of the 12 order-0 cones spans 9.3-9.8 (robust SD
0.69, the sampling error of each median about 0.1), so the significance itself does not depend
on the view; at *network* poses it spans 7.1-8.9, because the network is wrong more often in
some views, and normalising per cone (``order=2``) then forgives particles at wrong poses in
those views and lowered the AUC from 0.98 to 0.95. Per-cone statistics (``order``, with the
pooling rules above applied to the particles' own refined poses) are available for data whose
views differ in significance, e.g. a strongly preferred orientation with thin side views.
Adding the network z-score to it lowered the AUC too (0.945), and so does the network
probability in ``cryoposeRefineScore`` (0.92): at that training budget the network's
confidence is mostly noise.

Thresholds: :func:`threshold_from_junk` maximises Youden's J between the z-scores of particles
and of known junk; :func:`threshold_from_fraction` removes a given fraction. :func:`prune_star`
keeps particles whose score column (default ``cryoposeDirectionalZScore``, or
``cryoposeRefineZScore`` after refinement) is at least the threshold.

>>> import torch
>>> from cryopose.geometry import random_rotations
>>> R = random_rotations(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
>>> scores = torch.rand(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
>>> stats = cone_statistics(R, scores, min_count=5)
>>> z = stats.zscores(R, scores)
>>> z.shape, stats.median.shape
(torch.Size([500]), torch.Size([192]))
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.geometry._healpix_nest import neighbours_nest
from cryopose.geometry.healpix import viewing_direction_pixel
from cryopose.geometry.symmetry import symmetry_group

__all__ = [
    "CONE_ORDER",
    "MAD_SCALE",
    "MIN_COUNT",
    "REFINE_ZSCORE_COLUMN",
    "STATS_NAME",
    "ZSCORE_COLUMN",
    "ConeStatistics",
    "DirectionalStats",
    "PruneResult",
    "cone_statistics",
    "fit_directional_stats",
    "load_directional_stats",
    "prune_star",
    "refine_zscores",
    "robust_statistics",
    "roc_auc",
    "threshold_from_fraction",
    "threshold_from_junk",
    "validation_name",
]

STATS_NAME = "directional_stats.json"
ZSCORE_COLUMN = "cryoposeDirectionalZScore"
REFINE_ZSCORE_COLUMN = "cryoposeRefineZScore"
# HEALPix order of the cones: nside 4, 192 pixels of about 14.7 degrees.
CONE_ORDER = 2
# MAD -> standard deviation of a normal distribution.
MAD_SCALE = 1.4826
MIN_COUNT = 20
_FORMAT = 1


def validation_name(half: int) -> str:
    """File name of the validation predictions of the model trained on ``half`` (0: full)."""
    return f"validation_half{half}.pt"


def robust_statistics(values: npt.ArrayLike | torch.Tensor) -> tuple[float, float]:
    """Median and scaled MAD (``1.4826 * median |x - median|``) of ``values``.

    Parameters
    ----------
    values
        ``(n,)`` numbers, n >= 1.

    Returns
    -------
    tuple of float
        ``(median, scale)``; for even n the median is the mean of the two middle values
        (as ``numpy.median``).
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise InputError(None, "no values for a median; expected at least one")
    median = float(np.median(x))
    return median, MAD_SCALE * float(np.median(np.abs(x - median)))


def _orbit_pixels(rotations: torch.Tensor, symmetry: str, order: int) -> torch.Tensor:
    """``(n, |G|)`` pixel of each symmetry mate's viewing direction."""
    group = symmetry_group(symmetry).to(torch.float64)
    R = rotations.detach().to("cpu", torch.float64)
    return viewing_direction_pixel(R[:, None] @ group[None], 2**order)


def _neighbour_pixels(order: int) -> npt.NDArray[np.int64]:
    """``(npix, 9)`` each pixel followed by its 8 NEST neighbours (-1 where there are 7)."""
    nside = 2**order
    pixels = np.arange(12 * nside * nside)
    neighbours = neighbours_nest(nside, pixels)
    return np.concatenate([pixels[:, None], neighbours.T], axis=1)


@dataclass(frozen=True)
class ConeStatistics:
    """Median and scale of the scores per viewing cone, for one model.

    Attributes
    ----------
    order
        HEALPix order of the cones (``12 * 4**order`` pixels, NEST).
    symmetry
        Point group whose orbits were pooled.
    median, scale
        ``(npix,)`` float64 median and ``1.4826 * MAD`` used for each pixel.
    count
        ``(npix,)`` int64 validation particles in the pixel itself.
    source
        ``(npix,)`` int64: 0 own pixel, 1 pixel and neighbours, 2 global.
    global_median, global_scale
        The statistics of all validation particles.
    """

    order: int
    symmetry: str
    median: torch.Tensor
    scale: torch.Tensor
    count: torch.Tensor
    source: torch.Tensor
    global_median: float
    global_scale: float

    def zscores(self, rotations: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Directional z-scores ``(score - median_c) / scale_c`` of predicted poses.

        Parameters
        ----------
        rotations
            ``(n, 3, 3)`` predicted RELION rotation matrices.
        scores
            ``(n,)`` their top-10 scores.

        Returns
        -------
        torch.Tensor
            ``(n,)`` float64.
        """
        pixel = viewing_direction_pixel(rotations.detach().to("cpu", torch.float64), 2**self.order)
        s = scores.detach().to("cpu", torch.float64)
        return (s - self.median[pixel]) / self.scale[pixel]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "order": self.order,
            "symmetry": self.symmetry,
            "median": self.median.tolist(),
            "scale": self.scale.tolist(),
            "count": self.count.tolist(),
            "source": self.source.tolist(),
            "global_median": self.global_median,
            "global_scale": self.global_scale,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ConeStatistics:
        """Inverse of :meth:`to_dict`."""
        order = int(values["order"])
        stats = cls(
            order=order,
            symmetry=str(values["symmetry"]),
            median=torch.tensor(values["median"], dtype=torch.float64),
            scale=torch.tensor(values["scale"], dtype=torch.float64),
            count=torch.tensor(values["count"], dtype=torch.int64),
            source=torch.tensor(values["source"], dtype=torch.int64),
            global_median=float(values["global_median"]),
            global_scale=float(values["global_scale"]),
        )
        npix = 12 * 4**order
        if any(t.shape != (npix,) for t in (stats.median, stats.scale, stats.count, stats.source)):
            raise ValueError(f"expected {npix} values per cone statistic for order {order}")
        return stats


def cone_statistics(
    rotations: torch.Tensor,
    scores: torch.Tensor,
    symmetry: str = "C1",
    order: int = CONE_ORDER,
    min_count: int = MIN_COUNT,
) -> ConeStatistics:
    """Per-cone median and scaled MAD of validation scores (rules in the module docstring).

    Parameters
    ----------
    rotations
        ``(n, 3, 3)`` predicted RELION rotations of the validation particles.
    scores
        ``(n,)`` their top-10 scores.
    symmetry
        Point group: each particle counts in every pixel its symmetry orbit visits.
    order
        HEALPix order of the cones.
    min_count
        Fewest particles for a pixel's own statistics (then neighbours, then global).

    Returns
    -------
    ConeStatistics
    """
    s = scores.detach().to("cpu", torch.float64).numpy().reshape(-1)
    if rotations.shape != (len(s), 3, 3):
        raise InputError(
            None, f"expected rotations ({len(s)}, 3, 3) for {len(s)} scores, "
            f"got {tuple(rotations.shape)}"
        )  # fmt: skip
    if len(s) == 0:
        raise InputError(None, "no validation particles for the directional statistics")
    npix = 12 * 4**order
    orbit = _orbit_pixels(rotations, symmetry, order).numpy()
    # members[p]: validation particles whose orbit visits pixel p (each once).
    members: list[set[int]] = [set() for _ in range(npix)]
    for i, row in enumerate(orbit):
        for p in set(row.tolist()):
            members[p].add(i)
    g_median, g_scale = robust_statistics(s)
    g_scale = g_scale if g_scale > 0 else 1.0
    neighbours = _neighbour_pixels(order)
    median = np.empty(npix)
    scale = np.empty(npix)
    source = np.empty(npix, dtype=np.int64)
    count = np.array([len(m) for m in members], dtype=np.int64)
    for p in range(npix):
        pool = members[p]
        source[p] = 0
        if len(pool) < min_count:
            pool = set().union(*(members[q] for q in neighbours[p] if q >= 0))
            source[p] = 1
        if len(pool) < min_count:
            median[p], scale[p], source[p] = g_median, g_scale, 2
            continue
        median[p], scale[p] = robust_statistics(s[sorted(pool)])
        if not scale[p] > 0:
            scale[p] = g_scale
    return ConeStatistics(
        order=order,
        symmetry=symmetry,
        median=torch.from_numpy(median),
        scale=torch.from_numpy(scale),
        count=torch.from_numpy(count),
        source=torch.from_numpy(source),
        global_median=g_median,
        global_scale=g_scale,
    )


@dataclass(frozen=True)
class DirectionalStats:
    """Cone statistics of every model of a model folder.

    Attributes
    ----------
    halves
        Model half (1, 2, or 0 for ``full.pt``) -> its validation statistics.
    min_count
        The ``min_count`` they were computed with.
    """

    halves: dict[int, ConeStatistics]
    min_count: int = MIN_COUNT

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the content of ``directional_stats.json``)."""
        return {
            "format": _FORMAT,
            "min_count": self.min_count,
            "halves": {str(h): s.to_dict() for h, s in self.halves.items()},
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: Path | None = None) -> DirectionalStats:
        """Inverse of :meth:`to_dict`; a bad file raises :class:`InputError` naming ``path``."""
        try:
            if values.get("format") != _FORMAT:
                raise ValueError(f"expected format {_FORMAT}")
            halves = {int(h): ConeStatistics.from_dict(v) for h, v in values["halves"].items()}
            return cls(halves, int(values["min_count"]))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"not cryopose directional statistics ({err})") from None


def _load_validation(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(path, "missing the validation predictions of this model half")
    data = torch.load(path, map_location="cpu", weights_only=True)
    keys = ("pred_rotations", "top10_score")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise InputError(path, f"expected a dict of tensors with keys {list(keys)}")
    n = len(data["top10_score"])
    if tuple(data["pred_rotations"].shape) != (n, 3, 3):
        raise InputError(
            path, f"pred_rotations of shape {tuple(data['pred_rotations'].shape)}; "
            f"expected ({n}, 3, 3) for {n} top10_score values"
        )  # fmt: skip
    return {k: torch.as_tensor(v) for k, v in data.items()}


def fit_directional_stats(
    model_dir: str | Path, min_count: int = MIN_COUNT, write: bool = True
) -> DirectionalStats:
    """Directional statistics of a model folder from its ``validation_half{h}.pt`` files.

    Parameters
    ----------
    model_dir
        Pose model folder (see :mod:`cryopose.models.model_dir`).
    min_count
        Fewest particles for a cone's own statistics.
    write
        Write ``MODEL_DIR/directional_stats.json`` (atomically).

    Returns
    -------
    DirectionalStats
        One :class:`ConeStatistics` per model half, pooled over the model's symmetry.
    """
    from cryopose.models.model_dir import read_pose_model_spec

    folder = Path(model_dir)
    spec = read_pose_model_spec(folder)
    halves: dict[int, ConeStatistics] = {}
    for half in spec.halves:
        data = _load_validation(folder / validation_name(half))
        halves[half] = cone_statistics(
            data["pred_rotations"], data["top10_score"], spec.symmetry, min_count=min_count
        )
    stats = DirectionalStats(halves, min_count)
    if write:
        with atomic_path(folder / STATS_NAME) as tmp:
            tmp.write_text(json.dumps(stats.to_dict()) + "\n")
    return stats


def load_directional_stats(model_dir: str | Path) -> DirectionalStats | None:
    """Load the statistics of a model folder: its json, else fitted in memory, else ``None``.

    ``directional_stats.json`` is read when present; otherwise, when every half has its
    validation file, the statistics are computed (not written: the folder may be read-only);
    a model without validation predictions gives ``None``.
    """
    from cryopose.models.model_dir import read_pose_model_spec

    folder = Path(model_dir)
    path = folder / STATS_NAME
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(path, f"not valid JSON ({err})") from None
        return DirectionalStats.from_dict(values, path)
    spec = read_pose_model_spec(folder)
    if all((folder / validation_name(h)).is_file() for h in spec.halves):
        return fit_directional_stats(folder, write=False)
    return None


def refine_zscores(
    peak_z: torch.Tensor,
    rotations: torch.Tensor | None = None,
    symmetry: str = "C1",
    order: int | None = None,
    min_count: int = MIN_COUNT,
) -> torch.Tensor:
    """Robust z-scores of the refinement peak significance against the particles themselves.

    ``(s - median) / (1.4826 MAD)`` over all particles (``order=None``, the default; see the
    module docstring for why) or per viewing cone of their refined poses.

    Parameters
    ----------
    peak_z
        ``(n,)`` peak significance of each particle's refined match
        (``RefineResult.zscore``, column ``cryoposeRefinePeakZ``).
    rotations
        ``(n, 3, 3)`` refined RELION rotations; needed only with ``order``.
    symmetry
        Point group pooled in the cones (with ``order``).
    order
        HEALPix order of the cones, or ``None`` for one global median and MAD.
    min_count
        Fewest particles for a cone's own statistics (with ``order``).

    Returns
    -------
    torch.Tensor
        ``(n,)`` float64 ``cryoposeRefineZScore``.

    Raises
    ------
    InputError
        No particles, non-finite values, or ``order`` without ``rotations``.
    """
    s = torch.from_numpy(_as_array(peak_z))
    if s.numel() == 0:
        raise InputError(None, "no particles to score")
    if order is None:
        median, scale = robust_statistics(s)
        return (s - median) / (scale if scale > 0 else 1.0)
    if rotations is None:
        raise InputError(None, "directional refinement z-scores need the refined rotations")
    stats = cone_statistics(rotations, s, symmetry, order=order, min_count=min_count)
    return stats.zscores(rotations, s)


# ---------------------------------------------------------------------- thresholds


def roc_auc(
    positive: npt.ArrayLike | torch.Tensor, negative: npt.ArrayLike | torch.Tensor
) -> float:
    """Area under the ROC curve: P(positive score > negative score), ties counting 1/2.

    Computed from ranks (Mann-Whitney U): with average ranks ``r`` of the positives in the
    pooled sample, ``AUC = (sum r - n_p (n_p + 1) / 2) / (n_p n_n)``.

    Parameters
    ----------
    positive, negative
        ``(n_p,)`` and ``(n_n,)`` scores (e.g. z-scores of particles and of junk).
    """
    p = _as_array(positive)
    q = _as_array(negative)
    if p.size == 0 or q.size == 0:
        raise InputError(None, "ROC AUC needs at least one positive and one negative score")
    pooled = np.concatenate([p, q])
    order = np.argsort(pooled, kind="stable")
    ranks = np.empty(len(pooled))
    ranks[order] = np.arange(1, len(pooled) + 1)
    # Tied values share their average rank.
    values, inverse = np.unique(pooled, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(values))
    counts = np.bincount(inverse, minlength=len(values))
    ranks = (sums / counts)[inverse]
    u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2
    return float(u / (p.size * q.size))


def _as_array(values: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float64]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise InputError(None, "scores hold NaN or infinite values")
    return x


def threshold_from_junk(
    good_z: npt.ArrayLike | torch.Tensor, junk_z: npt.ArrayLike | torch.Tensor
) -> float:
    """Threshold that best separates particles from known junk (Youden's J).

    Keeping ``z >= t``, ``J(t) = P(good >= t) - P(junk >= t)`` is maximised over the observed
    values; among equal maxima the lowest ``t`` (keeping the most particles) wins. The value
    returned is halfway between that ``t`` and the next lower observed value, so the same
    particles are kept while the threshold does not sit on a data point.

    Parameters
    ----------
    good_z
        ``(n,)`` z-scores of the particles (they may themselves hold some junk).
    junk_z
        ``(m,)`` z-scores of known junk (rejected particles or simulated junk).

    Returns
    -------
    float
        The threshold ``t``.
    """
    good = np.sort(_as_array(good_z))
    junk = np.sort(_as_array(junk_z))
    if good.size == 0 or junk.size == 0:
        raise InputError(None, "a junk threshold needs z-scores of particles and of junk")
    candidates = np.unique(np.concatenate([good, junk]))
    tpr = 1.0 - np.searchsorted(good, candidates, side="left") / good.size
    fpr = 1.0 - np.searchsorted(junk, candidates, side="left") / junk.size
    j = tpr - fpr
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    if best == 0:
        return float(candidates[0])
    return float(0.5 * (candidates[best] + candidates[best - 1]))


def threshold_from_fraction(z: npt.ArrayLike | torch.Tensor, junk_fraction: float) -> float:
    """Threshold that removes ``round(junk_fraction * n)`` particles (the lowest z-scores).

    The threshold is halfway between the k-th and (k+1)-th lowest z-score (``k`` removed), so
    exactly k particles fall below it unless z-scores tie there.

    Parameters
    ----------
    z
        ``(n,)`` z-scores.
    junk_fraction
        Fraction in ``[0, 1)`` to remove.
    """
    x = np.sort(_as_array(z))
    if not 0.0 <= junk_fraction < 1.0:
        raise InputError(None, f"junk fraction must be in [0, 1), got {junk_fraction}")
    if x.size == 0:
        raise InputError(None, "no z-scores to threshold")
    k = min(round(junk_fraction * x.size), x.size - 1)
    if k == 0:
        return float(x[0])
    return float(0.5 * (x[k - 1] + x[k]))


# ---------------------------------------------------------------------- star files


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_star` did.

    Attributes
    ----------
    threshold
        Score threshold (kept: ``score >= threshold``).
    n_input, n_kept
        Particles read and written.
    out_star
        The star file written.
    """

    threshold: float
    n_input: int
    n_kept: int
    out_star: Path


def _scores_of(
    star: Path,
    model_dir: str | Path | None,
    device: str,
    batch_size: int,
    column: str = ZSCORE_COLUMN,
) -> Any:
    """``(n,)`` scores of a star file: its ``column``, else inferred with ``model_dir``.

    Only the network's ``cryoposeDirectionalZScore`` can be inferred here; other columns
    (``cryoposeRefineZScore``: ``cryopose refine``) must be in the file.
    """
    from cryopose.io.particles import read_particles

    table = read_particles(star)
    if column in table.particles.columns:
        values = np.asarray(np.asarray(table.particles[column], dtype=np.float64), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(
                star, "expected a finite score", f"row {int(bad[0]) + 1}, column {column}"
            )
        return table, values
    if column != ZSCORE_COLUMN:
        hint = ": run 'cryopose refine' on it first" if column == REFINE_ZSCORE_COLUMN else ""
        raise InputError(star, f"no column {column}{hint}")
    if model_dir is None:
        raise InputError(
            star,
            f"no column {ZSCORE_COLUMN}: run 'cryopose infer' on it first, or give the model "
            "to score it",
        )
    from cryopose.pose.infer import infer_poses

    result = infer_poses(star, model_dir, device=device, batch_size=batch_size, progress=False)
    if result.zscore is None:
        raise InputError(
            Path(model_dir) / STATS_NAME,
            "the model has no directional statistics (directional_stats.json or "
            "validation_half*.pt)",
        )
    return table, result.zscore.numpy()


def prune_star(
    star: str | Path,
    out_star: str | Path,
    threshold: float | None = None,
    junk_fraction: float | None = None,
    junk_star: str | Path | None = None,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    score_column: str = ZSCORE_COLUMN,
) -> PruneResult:
    """Keep the particles of ``star`` whose score is at least a threshold.

    Give exactly one of ``threshold``, ``junk_fraction`` or ``junk_star``.

    Parameters
    ----------
    star
        Particles with the score column: ``cryoposeDirectionalZScore`` (the output of
        ``cryopose infer``) or ``cryoposeRefineZScore`` (of ``cryopose refine``).
    out_star
        Where to write the kept particles (every column and block kept, input order).
    threshold
        Keep ``z >= threshold``.
    junk_fraction
        Remove this fraction, lowest z first (:func:`threshold_from_fraction`).
    junk_star
        Known junk (rejected particles or simulated junk): threshold by
        :func:`threshold_from_junk`. Its z-scores are read from its column or, when absent,
        inferred with ``model_dir``.
    model_dir
        Pose model folder, to score ``junk_star`` when it has no z-scores.
    device, batch_size
        For that inference.
    score_column
        The column to threshold (any numeric column; higher is better).

    Returns
    -------
    PruneResult

    Raises
    ------
    InputError
        Not exactly one criterion, or a star file without the score column (file named).
    """
    from cryopose.io.particles import write_particles

    given = sum(v is not None for v in (threshold, junk_fraction, junk_star))
    if given != 1:
        raise InputError(
            None, "give exactly one of a threshold, a junk fraction or a junk star file"
        )
    star = Path(star)
    table, z = _scores_of(star, None, device, batch_size, score_column)
    if threshold is not None:
        t = float(threshold)
        if math.isnan(t):
            raise InputError(None, "the threshold is NaN")
    elif junk_fraction is not None:
        t = threshold_from_fraction(z, junk_fraction)
    else:
        assert junk_star is not None
        _, junk_z = _scores_of(Path(junk_star), model_dir, device, batch_size, score_column)
        t = threshold_from_junk(z, junk_z)
    keep = z >= t
    # Image names resolve from the output's folder (unfound stacks keep their names).
    write_particles(table.subset(keep).relocated(out_star, strict=False), out_star)
    return PruneResult(t, len(table), int(keep.sum()), Path(out_star))
