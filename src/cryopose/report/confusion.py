"""Confusion-matrix plot (PNG) for cryo-ET particle classification.

Rows are true classes and columns predicted classes, as in
:attr:`cryopose.evaluation.shrec.ShrecResult.confusion`. The figure is drawn on a private
matplotlib Agg canvas (no pyplot, no global backend switch) and written atomically.

Example usage::

    labels, matrix = result.confusion
    plot_confusion(labels, matrix, "confusion.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryopose._atomic import atomic_path
from cryopose.errors import InputError

__all__ = ["plot_confusion", "row_normalise"]


def row_normalise(matrix: Any) -> npt.NDArray[np.float64]:
    """Divide each row of a count matrix by its sum; an empty row stays all zero.

    Parameters
    ----------
    matrix
        ``(R, C)`` non-negative counts, rows true classes.

    Returns
    -------
    numpy.ndarray
        ``(R, C)`` float64 fractions; each non-empty row sums to 1.

    >>> row_normalise([[1, 3], [0, 0]]).tolist()
    [[0.25, 0.75], [0.0, 0.0]]
    """
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2:
        raise InputError(None, f"confusion matrix must be 2D, got shape {counts.shape}")
    sums = counts.sum(axis=1, keepdims=True)
    # Rows with no entries (a class absent from the truth) would divide by zero: keep them zero.
    out = np.zeros_like(counts)
    np.divide(counts, sums, out=out, where=sums > 0)
    return out


def plot_confusion(
    labels: Sequence[str],
    matrix: Any,
    path: str | Path,
    normalise: bool = True,
    title: str | None = None,
) -> Path:
    """Write a confusion matrix as a PNG heat map with the value written in each non-zero cell.

    Parameters
    ----------
    labels
        ``K`` class names, used for both rows (true) and columns (predicted).
    matrix
        ``(K, K)`` counts, ``matrix[i, j]`` = particles of true class ``i`` predicted ``j``.
    path
        Output ``.png``.
    normalise
        Show each row as fractions of its total (:func:`row_normalise`) instead of counts.
    title
        Optional figure title.

    Returns
    -------
    Path
        ``path``.
    """
    counts = np.asarray(matrix)
    k = len(labels)
    if counts.shape != (k, k):
        raise InputError(None, f"confusion matrix must be ({k}, {k}) for {k} labels")
    values = row_normalise(counts) if normalise else counts.astype(np.float64)

    size = 2.0 + 0.55 * k
    fig = Figure(figsize=(size, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmax = 1.0 if normalise else max(float(values.max(initial=0.0)), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(labels), rotation=90)
    ax.set_yticks(range(k), labels=list(labels))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i, j in zip(*np.nonzero(values), strict=True):
        text = f"{values[i, j]:.2f}" if normalise else f"{int(counts[i, j])}"
        # White text on dark cells keeps the number readable.
        colour = "white" if values[i, j] > 0.6 * vmax else "black"
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
