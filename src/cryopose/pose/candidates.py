"""The network's top-k grid poses per particle, carried from inference to local refinement.

A network trained for minutes often ranks the true pose among its most probable grid cells
without making it the first, and its neighbour-averaged pose can then fall between two
modes, tens of degrees from either: too far for a local search. :mod:`cryopose.pose.refine`
therefore first matches each particle against its input pose and these candidates (no local
search, one correlation each) and refines from the best one.

In a star file (``cryopose infer`` writes them, ``cryopose refine`` reads them) the candidates
are two columns:

* ``cryoposeTopKIndices``: the grid indices of the k most probable cells, most probable
  first, as one comma-separated token without spaces (e.g. ``1735,1736,20011``); a single
  candidate is a plain integer;
* ``cryoposeGridOrder``: the order of the HEALPix SO(3) grid they index
  (:func:`cryopose.geometry.healpix.so3_healpix_angles`: index ``psi_index * npix + pixel``).

Eleven short integers instead of 30 Euler angles keep the file small, and the grid is
deterministic, so the rotations come back exactly. RELION (measured with 3.1.3's
``relion_star_handler`` on ``cryopose infer`` output) ignores these unknown labels and keeps
them in its output. Rows with fewer candidates than others (star files merged from runs
with different ``top_k``) are padded by repeating their most probable cell: a duplicate
candidate is harmless, like the symmetry-equivalent grid cells of a symmetric map.

>>> import torch
>>> encode_indices(torch.tensor([[5, 7, 9], [1, 2, 3]]))
['5,7,9', '1,2,3']
>>> c = Candidates(torch.tensor([[5, 7, 9]]), torch.tensor([1]))
>>> tuple(c.rotations(slice(0, 1)).shape)
(1, 3, 3, 3)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from cryopose.errors import InputError
from cryopose.geometry.euler import euler_to_matrix_rad
from cryopose.geometry.healpix import grid_size, so3_healpix_angles
from cryopose.io.particles import ParticleTable

__all__ = [
    "GRID_ORDER_COLUMN",
    "TOPK_COLUMN",
    "Candidates",
    "encode_indices",
    "table_candidates",
    "with_candidate_columns",
]

TOPK_COLUMN = "cryoposeTopKIndices"
GRID_ORDER_COLUMN = "cryoposeGridOrder"


@dataclass(frozen=True)
class Candidates:
    """Top-k grid cells of N particles.

    Attributes
    ----------
    indices
        ``(N, k)`` int64 grid indices, most probable first.
    order
        ``(N,)`` int64 grid order of each particle's indices.
    """

    indices: torch.Tensor
    order: torch.Tensor

    def __post_init__(self) -> None:
        if self.indices.ndim != 2 or self.order.shape != (self.indices.shape[0],):
            raise ValueError(
                f"expected indices (N, k) and order (N,), got {tuple(self.indices.shape)} "
                f"and {tuple(self.order.shape)}"
            )

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """Candidates per particle."""
        return int(self.indices.shape[1])

    def subset(self, rows: np.ndarray | torch.Tensor) -> Candidates:
        """Keep the candidates of the particles ``rows`` (indices or a boolean mask)."""
        sel = torch.as_tensor(rows)
        return Candidates(self.indices[sel], self.order[sel])

    def rotations(self, rows: slice, k: int | None = None) -> torch.Tensor:
        """``(B, k, 3, 3)`` float64 RELION rotations of the first ``k`` candidates of ``rows``."""
        idx = self.indices[rows, : self.k if k is None else k].cpu()
        order = self.order[rows].cpu()
        out = torch.empty((*idx.shape, 3, 3), dtype=torch.float64)
        for o in torch.unique(order).tolist():
            sel = order == o
            angles = so3_healpix_angles(int(o))[idx[sel]]
            out[sel] = euler_to_matrix_rad(angles)
        return out


def encode_indices(indices: torch.Tensor) -> list[str]:
    """``(N, k)`` grid indices -> N comma-separated tokens (``cryoposeTopKIndices``)."""
    return [",".join(str(v) for v in row) for row in indices.cpu().tolist()]


def with_candidate_columns(
    table: ParticleTable, indices: torch.Tensor, order: int
) -> ParticleTable:
    """Copy of ``table`` with ``cryoposeTopKIndices`` and ``cryoposeGridOrder`` set.

    Parameters
    ----------
    table
        N particles (not modified).
    indices
        ``(N, k)`` grid indices, most probable first.
    order
        Grid order of the indices.
    """
    if indices.shape[0] != len(table):
        raise ValueError(f"{indices.shape[0]} candidate rows for {len(table)} particles")
    particles = table.particles.copy()
    particles[TOPK_COLUMN] = encode_indices(indices)
    particles[GRID_ORDER_COLUMN] = np.full(len(table), order, dtype=np.int64)
    blocks = dict(table.blocks)
    blocks[table.particles_block] = particles
    return replace(table, particles=particles, blocks=blocks)


def _parse_row(value: object, row: int, table: ParticleTable) -> list[int]:
    text = str(value).strip()
    try:
        out = [int(t) for t in text.split(",")]
    except ValueError:
        raise InputError(
            table.path,
            f"expected comma-separated grid indices, found {text!r}",
            where=f"row {row + 1}, column {TOPK_COLUMN}",
        ) from None
    return out


def table_candidates(table: ParticleTable) -> Candidates | None:
    """Read the candidates from ``table``'s columns (``None`` without the columns).

    Raises
    ------
    InputError
        A value that is not a list of indices, an index outside its grid, an invalid order
        or ``cryoposeTopKIndices`` without ``cryoposeGridOrder`` (row and column named).
    """
    cols = table.particles.columns
    if TOPK_COLUMN not in cols:
        return None
    if GRID_ORDER_COLUMN not in cols:
        raise InputError(
            table.path, f"{TOPK_COLUMN} needs the grid order: expected a {GRID_ORDER_COLUMN} column"
        )
    rows = [_parse_row(v, i, table) for i, v in enumerate(table.particles[TOPK_COLUMN])]
    k = max((len(r) for r in rows), default=1)
    indices = torch.tensor([r + [r[0]] * (k - len(r)) for r in rows], dtype=torch.int64)
    indices = indices.reshape(len(rows), k)
    raw_order = table.particles[GRID_ORDER_COLUMN].to_numpy()
    order = np.zeros(len(rows), dtype=np.int64)
    for i, value in enumerate(raw_order):
        try:
            o = int(value)
            ok = o == float(value) and 0 <= o <= 8
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(
                table.path,
                f"expected a grid order (an integer from 0 to 8), found {value!r}",
                where=f"row {i + 1}, column {GRID_ORDER_COLUMN}",
            )
        order[i] = o
    sizes = torch.tensor([grid_size(int(o)) for o in order], dtype=torch.int64).reshape(-1, 1)
    bad = torch.nonzero((indices < 0) | (indices >= sizes))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise InputError(
            table.path,
            f"grid index {int(indices[row, col])} is outside the order-{order[row]} grid "
            f"(0 to {int(sizes[row, 0]) - 1})",
            where=f"row {row + 1}, column {TOPK_COLUMN}",
        )
    return Candidates(indices, torch.from_numpy(order))
