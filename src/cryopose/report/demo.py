"""Figures and the Markdown page of ``cryopose demo`` (:func:`cryopose.demo.run_demo`).

:func:`plot_error_histograms` overlays the angular-error histograms of several pose sources
(network alone, after refinement); :func:`demo_markdown` turns the demo's ``summary.json``
into a short report.

>>> page = demo_markdown({"structure": "1u6g", "minutes_total": 7.5, "tables": {}})
>>> page.splitlines()[0]
'# cryopose demo: a ligand found by poses learned on the apo protein'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError

__all__ = ["demo_markdown", "plot_error_histograms"]


def plot_error_histograms(
    errors: Mapping[str, torch.Tensor], path: str | Path, bins: int = 60, title: str | None = None
) -> Path:
    """Overlaid histograms of angular errors (0 to 180 degrees), written as a PNG atomically.

    Parameters
    ----------
    errors
        Label -> ``(N_i,)`` errors in degrees; each label gets its median in the legend.
    path
        PNG file to write.
    bins
        Equal bins over [0, 180] degrees.
    title
        Optional figure title.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not errors or any(e.numel() == 0 for e in errors.values()):
        raise InputError(None, "no errors to plot")
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, e in errors.items():
        values = e.detach().cpu().to(torch.float64).reshape(-1).numpy()
        median = float(np.median(values))
        ax.hist(
            values,
            bins=bins,
            range=(0.0, 180.0),
            alpha=0.6,
            label=f"{label} (n={values.size}, median {median:.1f} deg)",
        )
    ax.set_xlabel("angular error (degrees)")
    ax.set_ylabel("particles")
    ax.set_xlim(0, 180)
    ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def demo_markdown(summary: Mapping[str, Any]) -> str:
    """Markdown report of the demo from its summary.

    Parameters
    ----------
    summary
        The demo summary: ``structure``, ``minutes_total`` and ``tables`` (section title ->
        ``{row label: value}``), plus optional ``story`` (paragraph) and ``figures`` (caption
        -> file name relative to the report).

    Returns
    -------
    str
        The page (ends with a newline).
    """
    lines = ["# cryopose demo: a ligand found by poses learned on the apo protein", ""]
    if summary.get("story"):
        lines += [str(summary["story"]), ""]
    lines += [
        f"Structure {summary.get('structure')}, total wall time "
        f"{_fmt(summary.get('minutes_total'))} min.",
        "",
    ]
    tables: Mapping[str, Mapping[str, Any]] = summary.get("tables", {})
    for title, rows in tables.items():
        lines += [f"## {title}", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {label} | {_fmt(value)} |" for label, value in rows.items()]
        lines.append("")
    figures: Mapping[str, str] = summary.get("figures", {})
    for caption, name in figures.items():
        lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)
