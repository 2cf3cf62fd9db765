"""Write predicted poses back into a copy of the particle star file.

The output is the input table, every column and block kept, with the predicted angles
(``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees, from RELION rotation
matrices), optionally the predicted origins (``rlnOriginXAngst``, ``rlnOriginYAngst``,
RELION's sign) and score columns (e.g. ``rlnMaxValueProbDistribution``), written as a RELION
3.1+ star file, atomically. RELION keeps unknown score labels with a warning.

>>> import tempfile, torch, pandas as pd
>>> from pathlib import Path
>>> from cryopose.io.particles import ParticleTable, read_particles
>>> table = ParticleTable(pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnPixelSize": [2.0],
...                                     "rlnClassNumber": [3]}), None, {}, "")
>>> out = Path(tempfile.mkdtemp()) / "pred.star"
>>> write_predictions(table, torch.eye(3)[None], None, {"rlnMaxValueProbDistribution": [0.7]},
...                   out)
>>> back = read_particles(out).particles
>>> back[["rlnAngleTilt", "rlnClassNumber", "rlnMaxValueProbDistribution"]].values.tolist()
[[0.0, 3.0, 0.7]]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from cryopose.errors import InputError
from cryopose.io.particles import ParticleTable, write_particles

__all__ = ["write_predictions"]


def _check(name: str, value: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(value.shape) != shape:
        raise InputError(None, f"expected {name} of shape {shape}, got {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise InputError(None, f"{name} holds NaN or infinite values")


def write_predictions(
    table: ParticleTable,
    rotations: torch.Tensor,
    shifts_angst: torch.Tensor | None,
    scores: Mapping[str, npt.ArrayLike | torch.Tensor] | None,
    path: str | Path,
) -> None:
    """Write a copy of ``table`` with predicted poses (and scores) as a RELION star file.

    Parameters
    ----------
    table
        The particles the predictions are for, in the same order (e.g.
        :meth:`cryopose.data.dataset.ParticlesDataset.rows`). It is not modified.
    rotations
        ``(N, 3, 3)`` predicted RELION rotation matrices.
    shifts_angst
        ``(N, 2)`` predicted origins (x, y) in Angstrom (RELION's sign), or ``None`` to keep
        the table's origins.
    scores
        Extra per-particle columns, label -> ``(N,)`` numbers (e.g.
        ``{"rlnMaxValueProbDistribution": probs}``); an existing column is replaced.
    path
        Destination star file; relative image names are rewritten to resolve from its
        folder (:meth:`~cryopose.io.particles.ParticleTable.relocated`).

    Raises
    ------
    InputError
        Wrong shapes, non-finite values, or a score named like an angle or origin column.
    """
    n = len(table)
    rotations = torch.as_tensor(rotations).detach().to("cpu", torch.float64)
    _check("rotations", rotations, (n, 3, 3))
    out = replace(table, particles=table.particles.copy(), blocks=dict(table.blocks))
    out.set_rotations(rotations)
    if shifts_angst is not None:
        shifts = torch.as_tensor(shifts_angst).detach().to("cpu", torch.float64)
        _check("shifts_angst", shifts, (n, 2))
        out.set_shifts_angst(shifts)
    reserved = {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"}
    for label, values in (scores or {}).items():
        if label in reserved or not label or any(c.isspace() for c in label):
            raise InputError(None, f"score column {label!r}: expected a new label without spaces")
        column = _score_column(label, values, n)
        out.particles[label] = column
    out.blocks[out.particles_block] = out.particles
    # Image names resolve from the new star file's folder (stacks that cannot be found keep
    # their names).
    write_particles(out.relocated(path, strict=False), path)


def _score_column(
    label: str, values: npt.ArrayLike | torch.Tensor, n: int
) -> npt.NDArray[np.float64]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise InputError(None, f"score {label}: expected shape ({n},), got {array.shape}")
    return array
