"""HEALPix SO(3) grids (the Image2Sphere / cryoPARES output grid) in RELION's convention.

A grid of order ``k`` has ``nside = 2**k``: the ``npix = 12 * 4**k`` HEALPix pixel centres
(NESTED scheme) as viewing directions times ``n_psi = 6 * 2**k`` equally spaced in-plane
angles, ``M = npix * n_psi`` rotations (order 4: 3072 * 96 = 294,912). Grid rotation ``i``
has ``pixel = i % npix`` and ``psi_index = i // npix`` (pixel fastest, as in Image2Sphere's
``so3_healpix_grid``) and is the RELION matrix of the angles::

    rot  = phi   of the pixel centre   (azimuth)
    tilt = theta of the pixel centre   (polar angle)
    psi  = 2 * pi * psi_index / n_psi

so the third row of every grid matrix (the viewing direction) is its pixel centre.

>>> import torch
>>> R = so3_healpix_grid(2, dtype=torch.float64)
>>> R.shape, grid_size(2)
(torch.Size([4608, 3, 3]), 4608)
>>> int(nearest_grid_index(R[1234], 2))
1234
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt
import torch

from cryopose.geometry._healpix_nest import (
    boundaries_nest,
    max_pixrad,
    neighbours_nest,
    pix2ang_nest,
    pix2vec_nest,
    query_disc_centres,
    vec2pix_nest,
)
from cryopose.geometry.euler import euler_to_matrix_rad

__all__ = [
    "grid_neighbours",
    "grid_resolution_deg",
    "grid_size",
    "nearest_grid_index",
    "so3_healpix_angles",
    "so3_healpix_grid",
    "viewing_direction_pixel",
]

# Relative safety margin on radii computed in floating point (pixel radius, search disc):
# a slightly larger radius only costs a few more candidates, never exactness.
_RADIUS_MARGIN = 1e-6

# Rotations per chunk in nearest_grid_index: bounds the (chunk, candidates, 3, 3) temporaries
# to a few tens of MB whatever the batch size.
_CHUNK = 65536

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _check_order(order: int) -> None:
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 0:
        raise ValueError(f"HEALPix grid order must be an integer >= 0, got {order!r}")
    if order > 29:
        raise ValueError(f"HEALPix grid order must be <= 29 (healpy's nside limit), got {order}")


def _check_matrices(R: torch.Tensor) -> None:
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"expected rotation matrices of shape (..., 3, 3), got {tuple(R.shape)}")


def _npix(order: int) -> int:
    return 12 << (2 * int(order))  # 12 * 4**order, kept an int for mypy


def _npsi(order: int) -> int:
    return 6 << int(order)  # 6 * 2**order


def grid_size(order: int) -> int:
    """Return the number of rotations in the HEALPix SO(3) grid of this order.

    Parameters
    ----------
    order
        Grid order ``k >= 0`` (``nside = 2**k``).

    Returns
    -------
    int
        ``12 * 4**k * 6 * 2**k``: 72, 576, 4608, 36864, 294912 for orders 0-4.
    """
    _check_order(order)
    return _npix(order) * _npsi(order)


@functools.cache
def _max_pixel_radius(order: int) -> float:
    """Largest angle (radians) from a pixel centre to any point of its pixel.

    healpy's ``max_pixrad`` measures centre-to-corner distances; the farthest point of a pixel
    from its centre lies on its boundary, so for small orders we also sample the boundaries
    (8 points per edge) and keep the larger value. The two agree to 1e-13 on orders 0-6.
    """
    nside = 2**order
    radius = max_pixrad(nside)
    if order <= 6:
        pix = np.arange(_npix(order))
        edges = boundaries_nest(nside, pix, step=8)  # (npix, 3, 32)
        centres = np.stack(pix2vec_nest(nside, pix), axis=-1)  # (npix, 3)
        cos = np.clip(np.einsum("nk,nkm->nm", centres, edges), -1.0, 1.0)
        radius = max(radius, float(np.arccos(cos.min())))
    return radius * (1.0 + _RADIUS_MARGIN)


def _covering_radius_bound(order: int) -> float:
    """Upper bound (radians) on the covering radius of the grid, see grid_resolution_deg."""
    delta = _max_pixel_radius(order)
    eps = math.pi / _npsi(order)  # half the psi step
    return 2.0 * math.acos(math.cos(delta / 2.0) * math.cos(eps / 2.0))


def grid_resolution_deg(order: int) -> float:
    """Guaranteed covering radius of the grid, in degrees.

    Every rotation of SO(3) lies within this geodesic angle of some grid rotation: it is an
    upper bound on ``max_R min_i angle(R, G_i)``. Proof: the viewing direction ``v`` of R lies
    in some pixel, within ``delta`` of its centre (``delta`` = the largest centre-to-boundary
    angle of any pixel, ``healpy.max_pixrad``). Writing ``R = D @ G`` for the grid rotation G
    at that centre, ``D = Rz(e) @ T`` with T a rotation by at most ``delta`` about an axis in
    the xy-plane, and choosing the grid psi nearest the optimum makes ``|e| <= pi / n_psi``.
    The angle of D then satisfies ``cos(angle / 2) = cos(delta / 2) cos(e / 2)``, hence the
    bound ``2 acos(cos(delta / 2) cos(pi / (2 n_psi)))``.

    Values: 56.3, 31.3, 16.4, 8.36, 4.22 degrees for orders 0-4. For comparison, the HEALPix
    pixel size ``sqrt(4 pi / npix)`` is 3.66 degrees and the psi step 3.75 degrees at order 4;
    the covering radius measured on random rotations is a little smaller than the bound
    (``benchmarks/bench_healpix_nearest.py`` prints it).

    Parameters
    ----------
    order
        Grid order ``k >= 0``.

    Returns
    -------
    float
        Covering-radius bound in degrees.
    """
    _check_order(order)
    return math.degrees(_covering_radius_bound(order))


@functools.lru_cache(maxsize=8)
def _grid_angles_np(order: int) -> FloatArray:
    """Read-only ``(M, 3)`` (rot, tilt, psi) in radians, pixel index fastest."""
    nside, npix, npsi = 2**order, _npix(order), _npsi(order)
    theta, phi = pix2ang_nest(nside, np.arange(npix))
    psi = 2.0 * np.pi * np.arange(npsi) / npsi
    angles = np.empty((npsi, npix, 3), dtype=np.float64)
    angles[..., 0] = phi[None, :]
    angles[..., 1] = theta[None, :]
    angles[..., 2] = psi[:, None]
    out = angles.reshape(npsi * npix, 3)
    out.flags.writeable = False
    return out


def so3_healpix_angles(order: int) -> torch.Tensor:
    """RELION Euler angles of the HEALPix SO(3) grid.

    Parameters
    ----------
    order
        Grid order ``k >= 0``.

    Returns
    -------
    torch.Tensor
        ``(M, 3)`` float64 (rot, tilt, psi) in radians, ``M = grid_size(order)``; row
        ``psi_index * npix + pixel``. A new tensor on every call (the numpy angles are cached).
    """
    _check_order(order)
    return torch.tensor(_grid_angles_np(order), dtype=torch.float64)


def so3_healpix_grid(
    order: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rotation matrices of the HEALPix SO(3) grid, in RELION's convention.

    Parameters
    ----------
    order
        Grid order ``k >= 0``.
    dtype
        Floating dtype of the result (matrices are computed in float64, then cast).
    device
        Device of the result.

    Returns
    -------
    torch.Tensor
        ``(M, 3, 3)`` matrices ``euler_to_matrix_rad((rot, tilt, psi))``, row
        ``psi_index * npix + pixel``; the third row of matrix ``i`` is the centre of NEST pixel
        ``i % npix``.
    """
    _check_order(order)
    angles = torch.from_numpy(_grid_angles_np(order).copy())
    return euler_to_matrix_rad(angles).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=8)
def _pixel_frames(order: int) -> FloatArray:
    """Read-only ``(npix, 3, 3)`` grid matrices with psi = 0, float64."""
    angles = _grid_angles_np(order)[: _npix(order)].copy()
    frames: FloatArray = euler_to_matrix_rad(torch.from_numpy(angles)).numpy()
    frames.flags.writeable = False
    return frames


@functools.lru_cache(maxsize=8)
def _candidate_pixels(order: int) -> IntArray:
    """For every pixel p, all pixels whose centre can host the nearest grid rotation.

    Returns a read-only ``(npix, K)`` table, rows padded with p itself. If v (the viewing
    direction of R) lies in p, the nearest grid rotation is within the covering radius U of R,
    and a grid rotation with direction c is at least ``angle(v, c) >= angle(c_p, c) - delta``
    from R (a rotation by theta moves no unit vector by more than theta). So only centres with
    ``angle(c_p, c) <= delta + U`` can win: that disc is the candidate set.
    """
    nside, npix = 2**order, _npix(order)
    radius = (_max_pixel_radius(order) + _covering_radius_bound(order)) * (1.0 + _RADIUS_MARGIN)
    centres = np.stack(pix2vec_nest(nside, np.arange(npix)), axis=-1)
    if radius >= np.pi:
        rows = [np.arange(npix, dtype=np.int64)] * npix
    else:
        rows = query_disc_centres(nside, centres, radius)
    width = max(len(r) for r in rows)
    table = np.empty((npix, width), dtype=np.int64)
    for p, r in enumerate(rows):
        table[p, : len(r)] = r
        table[p, len(r) :] = p
    table.flags.writeable = False
    return table


def _pixel_of_directions(v: FloatArray, nside: int) -> IntArray:
    """NEST pixel of ``(N, 3)`` non-zero vectors (need not be unit length)."""
    return vec2pix_nest(nside, v[:, 0], v[:, 1], v[:, 2])


def viewing_direction_pixel(R: torch.Tensor, nside: int) -> torch.Tensor:
    """HEALPix NEST pixel containing each rotation's viewing direction.

    The viewing direction of a RELION matrix is its third row (polar angle tilt, azimuth rot).

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.
    nside
        HEALPix nside (a power of two).

    Returns
    -------
    torch.Tensor
        ``(...,)`` int64 pixel indices in ``[0, 12 * nside**2)``, on R's device.
    """
    _check_matrices(R)
    if isinstance(nside, bool) or not isinstance(nside, int) or nside < 1 or nside & (nside - 1):
        raise ValueError(f"nside must be a positive power of two, got {nside!r}")
    v = R[..., 2, :].detach().to("cpu", torch.float64).reshape(-1, 3).numpy()
    pix = _pixel_of_directions(v, nside)
    return torch.from_numpy(pix).reshape(R.shape[:-2]).to(R.device)


def _best_psi(C: FloatArray, npsi: int) -> tuple[IntArray, FloatArray]:
    """Best grid psi and its trace for ``trace(Rz(psi) @ C)``, over ``(..., 3, 3)`` C.

    With RELION's passive ``Rz(psi) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]``,
    ``trace(Rz(psi) C) = cos(psi) a + sin(psi) b + C22`` with ``a = C00 + C11`` and
    ``b = C10 - C01``: a sinusoid peaking at ``atan2(b, a)`` and decreasing with the circular
    distance from it, so one of the two grid psi values bracketing the peak is the best.
    """
    a = C[..., 0, 0] + C[..., 1, 1]
    b = C[..., 1, 0] - C[..., 0, 1]
    step = 2.0 * np.pi / npsi
    lower = np.floor(np.arctan2(b, a) / step).astype(np.int64)
    best_j = np.empty_like(lower)
    best_t = np.full(a.shape, -np.inf)
    for j in (lower, lower + 1):
        j = j % npsi
        t = np.cos(j * step) * a + np.sin(j * step) * b + C[..., 2, 2]
        better = t > best_t
        best_j = np.where(better, j, best_j)
        best_t = np.where(better, t, best_t)
    return best_j, best_t


def _nearest_np(R: FloatArray, order: int) -> IntArray:
    """Nearest grid index for ``(N, 3, 3)`` float64 matrices."""
    npix, npsi = _npix(order), _npsi(order)
    cand = _candidate_pixels(order)[_pixel_of_directions(R[:, 2, :], 2**order)]  # (N, K)
    frames = _pixel_frames(order)[cand]  # (N, K, 3, 3)
    # angle(R, Rz(psi) B) is decreasing in trace(R^T Rz(psi) B) = trace(Rz(psi) B R^T).
    C = np.einsum("nkij,nlj->nkil", frames, R)
    psi_j, trace = _best_psi(C, npsi)
    k = np.argmax(trace, axis=1)
    rows = np.arange(len(R))
    return np.asarray(psi_j[rows, k] * npix + cand[rows, k], dtype=np.int64)


def nearest_grid_index(R: torch.Tensor, order: int) -> torch.Tensor:
    """Index of the grid rotation nearest to each rotation, by geodesic distance.

    Exact (up to ties and float64 round-off): the viewing direction's pixel gives a candidate
    set of pixel centres that provably contains the nearest one (all centres within
    ``delta + U`` of the pixel centre, ``delta`` the pixel radius and ``U`` the covering
    radius, see ``grid_resolution_deg``), and for each candidate direction the best in-plane
    angle is found analytically. About 20 directions and 2 psi values per rotation are
    evaluated instead of the whole grid. The result maximises ``trace(R^T G)``, which for
    matrices that are not exactly orthonormal means the Frobenius-nearest grid rotation.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices (RELION convention), any float dtype and device.
    order
        Grid order ``k >= 0``.

    Returns
    -------
    torch.Tensor
        ``(...,)`` int64 grid indices (``psi_index * npix + pixel``), on R's device.
    """
    _check_order(order)
    _check_matrices(R)
    flat = R.detach().to("cpu", torch.float64).reshape(-1, 3, 3).numpy()
    if not np.isfinite(flat).all():
        raise ValueError("rotation matrices contain NaN or infinite values")
    out = np.empty(len(flat), dtype=np.int64)
    for start in range(0, len(flat), _CHUNK):
        out[start : start + _CHUNK] = _nearest_np(flat[start : start + _CHUNK], order)
    return torch.from_numpy(out).reshape(R.shape[:-2]).to(R.device)


def grid_neighbours(index: torch.Tensor, order: int, include_self: bool = True) -> torch.Tensor:
    """Neighbouring grid rotations: 8 HEALPix neighbour directions x 3 in-plane angles.

    For grid rotation G at pixel p, the neighbours are, for each direction c in {p and its
    8 HEALPix neighbours}, the grid rotations at c with the psi index ``j*`` closest to G
    (found analytically, as in ``nearest_grid_index``) and ``j* - 1``, ``j* + 1`` (wrapping
    around). For c = p, ``j*`` is G's own psi index. Aligning psi per direction matters near
    the poles, where neighbouring pixels differ by up to 90 degrees in rot and the same psi
    index there is a distant rotation.

    Where healpy reports a missing neighbour (``-1``: at orders >= 1, the 24 pixels around the
    8 vertices where only three base pixels meet have 7 neighbours; at order 0 every pixel
    misses one or two), the three entries for that direction are padding equal to ``index``
    itself, so the output keeps a fixed width; with ``include_self=False``, mask
    ``out != index[..., None]`` to drop the padding.

    Parameters
    ----------
    index
        ``(...,)`` integer grid indices of order ``order``.
    order
        Grid order ``k >= 0``.
    include_self
        Keep ``index`` itself as the first entry (K = 27) or drop it (K = 26).

    Returns
    -------
    torch.Tensor
        ``(..., K)`` int64 grid indices on index's device; first the centre direction
        (psi j-1, j, j+1 with j itself left out when ``include_self=False``), then the 8
        neighbour directions in healpy's order (SW, W, NW, N, NE, E, SE, S), 3 psi each.
    """
    _check_order(order)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise ValueError(f"grid indices must be an integer tensor, got {index.dtype}")
    npix, npsi, size = _npix(order), _npsi(order), grid_size(order)
    flat = index.detach().to("cpu", torch.int64).reshape(-1).numpy()
    if flat.size and (flat.min() < 0 or flat.max() >= size):
        raise ValueError(f"grid indices must lie in [0, {size}) for order {order}")
    pix, j = flat % npix, flat // npix
    neigh = neighbours_nest(2**order, pix).T
    missing = neigh < 0
    neigh = np.where(missing, pix[:, None], neigh)  # (N, 8)
    # Psi index of each neighbour direction best aligned with the centre rotation G.
    frames = _pixel_frames(order)
    G = np.einsum("nij,njk->nik", _rz(j * 2.0 * np.pi / npsi), frames[pix])
    C = np.einsum("nkij,nlj->nkil", frames[neigh], G)
    j_star, _ = _best_psi(C, npsi)  # (N, 8)
    shifts = np.array([-1, 0, 1])
    centre = ((j[:, None] + shifts) % npsi) * npix + pix[:, None]  # (N, 3)
    if not include_self:
        centre = centre[:, [0, 2]]
    around = ((j_star[..., None] + shifts) % npsi) * npix + neigh[..., None]  # (N, 8, 3)
    around = np.where(missing[..., None], flat[:, None, None], around)
    out = np.concatenate([centre, around.reshape(len(flat), 24)], axis=1)
    return torch.from_numpy(out).reshape(*index.shape, out.shape[-1]).to(index.device)


def _rz(psi: FloatArray) -> FloatArray:
    """RELION's passive ``(..., 3, 3)`` rotation about z by ``psi`` radians."""
    c, s = np.cos(psi), np.sin(psi)
    zero, one = np.zeros_like(psi), np.ones_like(psi)
    return np.stack(
        [np.stack([c, s, zero], -1), np.stack([-s, c, zero], -1), np.stack([zero, zero, one], -1)],
        axis=-2,
    )
