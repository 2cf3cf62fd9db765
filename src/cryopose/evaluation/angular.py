"""Pose errors of predicted star files against the truth: angles under symmetry and shifts.

:func:`pose_errors` matches the particles of a prediction to the true ones by
``rlnImageName`` (the prediction may hold a subset, e.g. after pruning); when names repeat in
either file they are matched by order instead, which needs equal row counts. The angular
error is ``min over g in G of geodesic(A_true g, A_pred)`` in degrees
(:func:`cryopose.geometry.angular_error`), the shift error the Euclidean distance between
the origins ``(rlnOriginXAngst, rlnOriginYAngst)`` in Angstrom (symmetry mates project to the
same image, so origins need no symmetry). :meth:`PoseErrors.summary` gives the mean, the
confidence-weighted mean (weights ``rlnMaxValueProbDistribution`` of the prediction when
present), the median and the fractions within 5 and 10 degrees; :func:`plot_error_histogram`
writes a PNG.

Example usage::

    from cryopose.evaluation.angular import pose_errors, plot_error_histogram
    errors = pose_errors("true.star", "predicted.star", symmetry="D7")
    print(errors.summary())
    plot_error_histogram(errors, "errors.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.geometry.distance import angular_error
from cryopose.io.particles import ParticleTable, read_particles

__all__ = ["PoseErrors", "plot_error_histogram", "pose_errors"]

_CONFIDENCE = "rlnMaxValueProbDistribution"


@dataclass(frozen=True)
class PoseErrors:
    """Per-particle pose errors of a prediction (N particles, the prediction's row order).

    Attributes
    ----------
    image_names
        ``rlnImageName`` of each particle (empty strings when the file has none).
    angular_deg
        ``(N,)`` float64 angular errors in degrees, modulo ``symmetry``.
    shift_angst
        ``(N,)`` float64 distances between true and predicted origins in Angstrom, ``None``
        when either file has no origins.
    confidence
        ``(N,)`` float64 ``rlnMaxValueProbDistribution`` of the prediction, or ``None``.
    symmetry
        Point group used.
    """

    image_names: list[str]
    angular_deg: torch.Tensor
    shift_angst: torch.Tensor | None
    confidence: torch.Tensor | None
    symmetry: str

    def summary(self) -> dict[str, Any]:
        """Summary numbers.

        Returns
        -------
        dict
            ``n``; ``mean_deg``; ``weighted_mean_deg`` (``sum(w e) / sum(w)`` with the
            confidences, the plain mean without them or when they sum to 0); ``median_deg``
            (mean of the two middle values for even N); ``within_5_deg`` and ``within_10_deg``
            (fractions of errors ``<= 5`` and ``<= 10`` degrees); ``shift_error_angst`` (mean
            shift error, ``None`` without origins).
        """
        e = self.angular_deg.to(torch.float64)
        n = int(e.numel())
        mean = float(e.mean())
        weighted = mean
        if self.confidence is not None:
            w = self.confidence.to(torch.float64).clamp_min(0)
            if float(w.sum()) > 0:
                weighted = float((w * e).sum() / w.sum())
        ordered = torch.sort(e).values
        median = 0.5 * float(ordered[(n - 1) // 2] + ordered[n // 2])
        return {
            "mean_deg": mean,
            "weighted_mean_deg": weighted,
            "median_deg": median,
            "within_5_deg": float((e <= 5).to(torch.float64).mean()),
            "within_10_deg": float((e <= 10).to(torch.float64).mean()),
            "n": n,
            "shift_error_angst": None
            if self.shift_angst is None
            else float(self.shift_angst.mean()),
        }


def _table(source: str | Path | ParticleTable) -> ParticleTable:
    table = source if isinstance(source, ParticleTable) else read_particles(source)
    if not table.has_poses:
        raise InputError(
            table.path, "expected poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)",
            f"block data_{table.particles_block}",
        )  # fmt: skip
    if len(table) == 0:
        raise InputError(table.path, "no particles")
    return table


def _names(table: ParticleTable) -> list[str] | None:
    """Return the image of every particle, ``None`` without ``rlnImageName``.

    The stack's resolved path and index when the stacks can be found (star files in
    different folders name the same image differently), else the name as written.
    """
    if "rlnImageName" not in table.particles.columns:
        return None
    try:
        return [f"{index + 1:06d}@{path.resolve()}" for path, index in table.image_locations()]
    except InputError:
        return table.particles["rlnImageName"].astype(str).tolist()


def _match(true: ParticleTable, pred: ParticleTable) -> np.ndarray:
    """``(N_pred,)`` row of ``true`` for every row of ``pred``."""
    true_names, pred_names = _names(true), _names(pred)
    unique = (
        true_names is not None
        and pred_names is not None
        and len(set(true_names)) == len(true_names)
        and len(set(pred_names)) == len(pred_names)
    )
    if not unique:
        if len(true) != len(pred):
            raise InputError(
                pred.path,
                f"particles cannot be matched by rlnImageName (missing or repeated), and by "
                f"order they do not match: {len(pred)} rows here, {len(true)} in {true.path}",
            )
        return np.arange(len(pred), dtype=np.int64)
    assert true_names is not None and pred_names is not None
    where = {name: i for i, name in enumerate(true_names)}
    missing = [i for i, name in enumerate(pred_names) if name not in where]
    if missing:
        i = missing[0]
        raise InputError(
            pred.path,
            f"{len(missing)} particles are not in {true.path}, e.g. {pred_names[i]!r}",
            f"row {i + 1}, column rlnImageName",
        )
    return np.array([where[name] for name in pred_names], dtype=np.int64)


def pose_errors(
    true_table: str | Path | ParticleTable,
    pred_table: str | Path | ParticleTable,
    symmetry: str = "C1",
) -> PoseErrors:
    """Angular and shift errors of predicted poses against the true ones.

    Parameters
    ----------
    true_table
        Star file (or table) with the true poses.
    pred_table
        Star file (or table) with the predicted poses; every particle must be in
        ``true_table`` (matched by ``rlnImageName``, else by order).
    symmetry
        Point group of the particle: a prediction at a symmetry mate has error 0.

    Returns
    -------
    PoseErrors

    Raises
    ------
    InputError
        A file without poses, or particles that do not match (the prediction file named).
    """
    true = _table(true_table)
    pred = _table(pred_table)
    rows = _match(true, pred)
    R_true = true.rotations(torch.float64)[torch.from_numpy(rows)]
    R_pred = pred.rotations(torch.float64)
    errors = angular_error(R_true, R_pred, symmetry)
    shifts = None
    if true.has_shifts and pred.has_shifts:
        delta = true.shifts_angst(torch.float64)[torch.from_numpy(rows)] - pred.shifts_angst(
            torch.float64
        )
        shifts = torch.linalg.vector_norm(delta, dim=-1)
    confidence = None
    if _CONFIDENCE in pred.particles.columns:
        values = np.asarray(pred.particles[_CONFIDENCE], dtype=np.float64)
        confidence = torch.from_numpy(values.copy())
    names = _names(pred) or [""] * len(pred)
    return PoseErrors(names, errors, shifts, confidence, symmetry)


def plot_error_histogram(
    errors: PoseErrors | torch.Tensor, path: str | Path, bins: int = 90
) -> Path:
    """Write a histogram of angular errors (0 to 180 degrees) as a PNG, atomically.

    Parameters
    ----------
    errors
        :class:`PoseErrors` or ``(N,)`` errors in degrees.
    path
        PNG file to write.
    bins
        Number of equal bins over [0, 180] degrees.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    e = errors.angular_deg if isinstance(errors, PoseErrors) else errors
    values = e.detach().cpu().to(torch.float64).reshape(-1).numpy()
    if values.size == 0:
        raise InputError(None, "no errors to plot")
    median = float(np.median(values))
    # Figure + Agg canvas, not pyplot: no global figure state, safe in threads and servers.
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, range=(0.0, 180.0), color="tab:blue")
    ax.axvline(median, color="tab:red", linestyle="--", label=f"median {median:.2f} deg")
    ax.set_xlabel("angular error (degrees)")
    ax.set_ylabel("particles")
    ax.set_xlim(0, 180)
    ax.set_title(f"{values.size} particles, mean {values.mean():.2f} deg")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
