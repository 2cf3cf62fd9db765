"""Central slices of HEALPix SO(3) grid cells, computed once per cell and kept.

:mod:`cryopose.pose.refine` ranks every particle's network candidates (grid cells, see
:mod:`cryopose.pose.candidates`) by projection matching. Particles of one data set share most
of their candidates (the grid is finite and views repeat), so each cell's slice is projected
the first time a particle asks for it and read back afterwards: on 1,000 particles with 100
candidates each, tens of thousands of slices instead of 100,000, and none once a stream has
seen every view. A slice does not depend on the particle (the CTF and the shift are applied
by the caller), so the result is exactly what projecting every candidate gives.

Only the band's samples are stored (``M`` complex numbers per cell): at order 3 (36,864
cells), a 36 px working box and an 8 A band at 2 A/px, 118 MB. A grid whose store would
exceed ``max_bytes`` (e.g. order 4 at a large box) is not cached: :meth:`slices` returns
``None`` and the caller projects as before.

>>> import torch
>>> from cryopose.imaging.projection import Projector
>>> cache = GridSliceCache(Projector(torch.zeros(16, 16, 16)), box=16, kmax=0.25)
>>> tuple(cache.slices(torch.tensor([[0, 5]]), torch.tensor([1])).shape)
(1, 2, 16, 9)
"""

from __future__ import annotations

import torch

from cryopose.geometry.euler import euler_to_matrix_rad
from cryopose.geometry.healpix import grid_size, so3_healpix_angles
from cryopose.imaging.projection import Projector

__all__ = ["GridSliceCache"]

#: Default memory cap of one grid order's store.
MAX_BYTES = 512 * 2**20


class GridSliceCache:
    """Slices of grid cells at one working box and band, filled on demand.

    Parameters
    ----------
    projector
        Projector of the reference map.
    box
        Working box of the slices (``Projector.slices(box=...)``).
    kmax
        Band limit in cycles per pixel of the map (``Projector.slices(kmax=...)``).
    max_bytes
        Largest store kept per grid order; a larger grid is not cached.
    """

    def __init__(
        self, projector: Projector, box: int, kmax: float, max_bytes: int = MAX_BYTES
    ) -> None:
        self.projector = projector
        self.box = int(box)
        self.kmax = float(kmax)
        self.max_bytes = int(max_bytes)
        self._inside, _ = projector._sample_points(self.box, self.kmax)
        self._stores: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.projected = 0  # slices computed so far (each cell at most once)

    def _store(self, order: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(cells, M)`` complex store and ``(cells,)`` filled mask of ``order`` (or ``None``)."""
        if order not in self._stores:
            cells = grid_size(order)
            m = int(self._inside.sum())
            dtype = torch.complex64 if self.projector.dtype == torch.float32 else torch.complex128
            itemsize = torch.empty((), dtype=dtype).element_size()
            if cells * m * itemsize > self.max_bytes:
                self._stores[order] = None
            else:
                dev = self.projector.device
                self._stores[order] = (
                    torch.zeros((cells, m), dtype=dtype, device=dev),
                    torch.zeros(cells, dtype=torch.bool, device=dev),
                )
        return self._stores[order]

    def slices(self, indices: torch.Tensor, order: torch.Tensor) -> torch.Tensor | None:
        """``(B, K, box, box // 2 + 1)`` slices of the grid cells ``indices`` ``(B, K)``.

        ``order`` ``(B,)`` is each row's grid order. ``None`` when one of the orders is too
        large to cache (``max_bytes``).
        """
        dev = self.projector.device
        indices, order = indices.to(dev), order.to(dev)
        b, k = indices.shape
        d = self.box
        out = torch.zeros(
            (b, k, d, d // 2 + 1),
            dtype=torch.complex64 if self.projector.dtype == torch.float32 else torch.complex128,
            device=dev,
        )
        for o in torch.unique(order).tolist():
            store = self._store(int(o))
            if store is None:
                return None
            values, filled = store
            rows = order == o
            wanted = indices[rows]
            cells = torch.unique(wanted)
            missing = cells[~filled[cells]]
            if missing.numel():
                angles = so3_healpix_angles(int(o)).to(dev)[missing]
                rot = euler_to_matrix_rad(angles)
                values[missing] = self.projector.slices(rot, box=d, kmax=self.kmax)[:, self._inside]
                filled[missing] = True
                self.projected += int(missing.numel())
            block = out[rows]
            block[:, :, self._inside] = values[wanted]
            out[rows] = block
        return out
