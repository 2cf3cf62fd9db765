"""Pages and plots of a gold-standard evaluation: error histogram, Markdown and HTML reports.

The HTML page is self-contained (plots embedded as base64 PNG), so it can be mailed or attached
to a notebook as one file. Every file is written atomically.

>>> from cryopose.report.gold_standard import write_report_pages  # doctest: +SKIP
>>> write_report_pages(report, "evaluation/")  # doctest: +SKIP
{'error_histogram': 'errors.png', 'markdown': 'report.md', 'html': 'report.html'}
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cryopose._atomic import atomic_path

if TYPE_CHECKING:
    from cryopose.evaluation.gold_standard import GoldStandardReport

__all__ = ["markdown_report", "plot_error_histogram", "write_report_pages"]


def plot_error_histogram(
    errors_deg: torch.Tensor, path: str | Path, title: str | None = None, bins: int = 36
) -> Path:
    """Histogram of per-particle angular errors in degrees (0-180), written as a PNG.

    Parameters
    ----------
    errors_deg
        ``(N,)`` errors in degrees.
    path
        Output ``.png``.
    title
        Optional figure title.
    bins
        Number of bins over ``[0, 180]`` degrees.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    e = errors_deg.detach().to("cpu", torch.float64).numpy()
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    ax = fig.add_subplot()
    ax.hist(e, bins=bins, range=(0.0, 180.0), color="#4477aa")
    if len(e):
        ax.axvline(float(e.mean()), color="k", linestyle="--", linewidth=0.8, label="mean")
        ax.legend()
    ax.set_xlabel("angular error (degrees)")
    ax.set_ylabel("particles")
    if title:
        ax.set_title(title)
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _rows(report: GoldStandardReport) -> list[tuple[str, str]]:
    c = report.cesped
    rows = [
        ("particles", str(report.n_particles)),
        ("symmetry, prediction type", f"{report.symmetry}, {report.prediction_type}"),
        ("box, pixel size", f"{report.box} px, {_f(report.angpix)} A"),
        ("mask", "yes" if report.masked else "no"),
        ("mean angular error", f"{_f(report.mean_error_deg, 2)} deg"),
        (
            f"weighted mean angular error ({report.weights_source})",
            f"{_f(report.weighted_mean_error_deg, 2)} deg",
        ),
        ("median angular error", f"{_f(report.median_error_deg, 2)} deg"),
        (
            "shift RMSE",
            "-" if report.shift_rmse_angst is None else f"{report.shift_rmse_angst:.2f} A",
        ),
    ]
    for label, pair in (
        ("GT0 vs GT1", report.gt_halves),
        ("V0 vs V1", report.half_maps),
        ("V vs GT", report.map_vs_gt),
        ("V0 vs GT1, V1 vs GT0", report.cross_halves),
    ):
        rows.append(
            (
                f"{label}: PCC, resolution 0.143 / 0.5",
                f"{_f(pair.pcc, 4)}, {_f(pair.resolution_0143, 2)} / {_f(pair.resolution_05, 2)} A",
            )
        )
    rows += [
        ("dPCC (cross halves - GT halves)", _f(report.delta_pcc, 4)),
        (
            "dFSC at 0.143 / 0.5 (A, > 0 worse)",
            f"{_f(report.delta_fsc, 2)} / {_f(report.delta_fsc_05, 2)}",
        ),
        ("CESPED delta PCC (V,GT - GT0,GT1)", _f(c.delta_pcc, 4)),
        ("CESPED delta resolution (A)", _f(c.delta_resolution, 2)),
        ("CESPED lost frequency (fraction of Nyquist)", _f(c.delta_resolution_fraction, 4)),
    ]
    if report.relion_pcc is not None:
        rows.append(("PCC of V with relion_reconstruct", _f(report.relion_pcc, 5)))
    rows.append(("time", f"{report.seconds:.1f} s"))
    return rows


def markdown_report(report: GoldStandardReport) -> str:
    """Markdown summary of a report (a two-column table and the two plots)."""
    lines = ["# Gold-standard evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _rows(report)]
    lines += ["", "![FSC curves](fsc.png)", "", "![Angular errors](errors.png)", ""]
    return "\n".join(lines)


def _html_report(report: GoldStandardReport, out: Path) -> str:
    cells = "\n".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _rows(report)
    )
    images = []
    for name, alt in (("fsc.png", "FSC curves"), ("errors.png", "angular errors")):
        if (out / name).is_file():
            data = base64.b64encode((out / name).read_bytes()).decode("ascii")
            images.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Gold-standard evaluation"
        "</title><style>body{font-family:sans-serif}td{padding:2px 10px}"
        "tr:nth-child(even){background:#eee}</style></head><body>\n"
        f"<h1>Gold-standard evaluation</h1>\n<table>\n{cells}\n</table>\n"
        + "\n".join(images)
        + "\n</body></html>\n"
    )


def write_report_pages(report: GoldStandardReport, out_dir: str | Path) -> dict[str, str]:
    """Write ``errors.png``, ``report.md`` and a self-contained ``report.html``.

    ``fsc.png`` is embedded in the HTML page when it is already in ``out_dir``.

    Returns
    -------
    dict[str, str]
        Role -> file name (relative to ``out_dir``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_error_histogram(
        report.errors_deg, out / "errors.png", title=f"{report.symmetry}, {report.prediction_type}"
    )
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown_report(report), encoding="utf-8")
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(_html_report(report, out), encoding="utf-8")
    return {"error_histogram": "errors.png", "markdown": "report.md", "html": "report.html"}
