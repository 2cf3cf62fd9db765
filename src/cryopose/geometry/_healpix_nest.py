"""HEALPix NEST pixel centres and pixel look-up in numpy, without importing healpy.

healpy's import pulls in matplotlib and astropy (0.7-1.3 s on this machine), and the pose
pose pipeline only needs a few of its functions, in the NEST scheme: pixel centres as angles
or unit vectors, the pixel of a direction, a pixel's neighbours, points on its boundary, the
largest pixel radius, and the pixels whose centres lie in a disc. These are the HEALPix
reference algorithms (Gorski et al. 2005, ApJ 622:759; the ``nest2xyf``, ``pix2loc``,
``xyf2loc``, ``loc2pix``, ``neighbors``, ``boundaries`` and ``max_pixrad`` routines of the
HEALPix C++ library): a NEST index splits into a base face and two interleaved bit fields
``(ix, iy)``; the face and ``ix + iy`` give the ring (so ``z``), ``ix - iy`` the position
along it (so ``phi``); a neighbour across a face edge is found from tables of which face lies
in each direction and how its axes are turned. Tests check them against healpy at orders 0-6.

>>> import numpy as np
>>> theta, phi = pix2ang_nest(1, np.arange(3))
>>> np.round(np.degrees(theta), 2).tolist(), np.round(np.degrees(phi), 2).tolist()
([48.19, 48.19, 48.19], [45.0, 135.0, 225.0])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "boundaries_nest",
    "max_pixrad",
    "neighbours_nest",
    "pix2ang_nest",
    "pix2vec_nest",
    "query_disc_centres",
    "vec2pix_nest",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Ring number (in units of nside) of the southernmost corner of each base face, and the
# longitude (in units of pi / 4) of its centre.
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], dtype=np.int64)
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=np.int64)


def _order(nside: int) -> int:
    order = int(nside).bit_length() - 1
    if nside < 1 or 1 << order != nside or order > 29:
        raise ValueError(f"nside must be a power of 2 up to 2**29, got {nside}")
    return order


def _compress_bits(v: IntArray, order: int) -> IntArray:
    """Even bits of ``v`` packed together (bit ``2 b`` becomes bit ``b``)."""
    out = np.zeros_like(v)
    for b in range(order):
        out |= ((v >> (2 * b)) & 1) << b
    return out


def _spread_bits(v: IntArray, order: int) -> IntArray:
    """Inverse of :func:`_compress_bits`: bit ``b`` becomes bit ``2 b``."""
    out = np.zeros_like(v)
    for b in range(order):
        out |= ((v >> b) & 1) << (2 * b)
    return out


def _nest2xyf(nside: int, pix: npt.ArrayLike) -> tuple[IntArray, IntArray, IntArray, int]:
    """Split NEST pixels (flattened) into base face, ``ix`` and ``iy``; also return the order."""
    order = _order(nside)
    p = np.asarray(pix, dtype=np.int64).reshape(-1)
    if p.size and (p.min() < 0 or p.max() >= 12 * nside * nside):
        raise ValueError(f"pixel indices must be in [0, {12 * nside * nside}) at nside {nside}")
    local = p & (nside * nside - 1)
    ix, iy = _compress_bits(local, order), _compress_bits(local >> 1, order)
    return p >> (2 * order), ix, iy, order


def _pix2zphi(nside: int, pix: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``z = cos(theta)``, ``sin(theta)`` and ``phi`` of NEST pixel centres."""
    shape = np.shape(pix)
    face, ix, iy, _ = _nest2xyf(nside, pix)
    face, ix, iy = face.reshape(shape), ix.reshape(shape), iy.reshape(shape)
    jr = _JRLL[face] * nside - ix - iy - 1  # ring index, 1 .. 4 nside - 1
    fact2 = 4.0 / (12.0 * nside * nside)
    north, south = jr < nside, jr > 3 * nside
    nr = np.where(north, jr, np.where(south, 4 * nside - jr, nside))
    # Polar caps: 1 - |z| = nr^2 / (3 nside^2) exactly; sin(theta) from it keeps precision.
    cap = (nr * nr).astype(np.float64) * fact2
    z = np.where(north, 1.0 - cap, np.where(south, cap - 1.0, (2 * nside - jr) * 2.0 / (3 * nside)))
    sth = np.where(north | south, np.sqrt(cap * (2.0 - cap)), np.sqrt((1.0 - z) * (1.0 + z)))
    tmp = _JPLL[face] * nr + ix - iy
    tmp = np.where(tmp < 0, tmp + 8 * nr, tmp)
    phi = (np.pi / 4) * tmp / nr  # nr pixels per quarter ring (nr >= 1)
    return z, sth, phi


def pix2ang_nest(nside: int, pix: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Return the colatitude ``theta`` and longitude ``phi`` (radians) of NEST pixel centres.

    As ``healpy.pix2ang(nside, pix, nest=True)``.
    """
    z, sth, phi = _pix2zphi(nside, pix)
    return np.arctan2(sth, z), phi


def pix2vec_nest(nside: int, pix: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return the unit vectors ``(x, y, z)`` of NEST pixel centres.

    As ``healpy.pix2vec(nside, pix, nest=True)``.
    """
    z, sth, phi = _pix2zphi(nside, pix)
    return sth * np.cos(phi), sth * np.sin(phi), z


def vec2pix_nest(nside: int, x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike) -> IntArray:
    """Return the NEST pixel holding each direction ``(x, y, z)`` (any length, not zero).

    As ``healpy.vec2pix(nside, x, y, z, nest=True)``.
    """
    order = _order(nside)
    vx, vy, vz = (np.asarray(a, dtype=np.float64) for a in (x, y, z))
    norm = np.sqrt(vx * vx + vy * vy + vz * vz)
    zn = vz / norm
    za = np.abs(zn)
    tt = np.mod(np.arctan2(vy, vx) / (np.pi / 2), 4.0)  # longitude in [0, 4)
    tt = np.where(tt >= 4.0, 0.0, tt)
    # Equatorial belt.
    t1 = nside * (0.5 + tt)
    t2 = nside * (zn * 0.75)
    jp = (t1 - t2).astype(np.int64)
    jm = (t1 + t2).astype(np.int64)
    ifp, ifm = jp >> order, jm >> order
    face_eq = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix_eq = jm & (nside - 1)
    iy_eq = nside - (jp & (nside - 1)) - 1
    # Polar caps: sqrt(3 (1 - |z|)), from sin(theta) near the pole to keep precision.
    ntt = np.minimum(3, tt.astype(np.int64))
    tp = tt - ntt
    sth = np.sqrt(vx * vx + vy * vy) / norm
    tmp = np.where(
        za > 0.99, nside * sth / np.sqrt((1.0 + za) / 3.0), nside * np.sqrt(3 * (1 - za))
    )
    jpp = np.minimum((tp * tmp).astype(np.int64), nside - 1)
    jmp = np.minimum(((1.0 - tp) * tmp).astype(np.int64), nside - 1)
    north = zn >= 0
    ix_cap = np.where(north, nside - jmp - 1, jpp)
    iy_cap = np.where(north, nside - jpp - 1, jmp)
    face_cap = np.where(north, ntt, ntt + 8)
    eq = za <= 2.0 / 3.0
    face = np.where(eq, face_eq, face_cap)
    ix = np.where(eq, ix_eq, ix_cap)
    iy = np.where(eq, iy_eq, iy_cap)
    out: IntArray = (face << (2 * order)) + _spread_bits(ix, order) + (_spread_bits(iy, order) << 1)
    return out


# Neighbour offsets in (ix, iy), in healpy's order: SW, W, NW, N, NE, E, SE, S.
_NB_X = np.array([-1, -1, 0, 1, 1, 1, 0, -1], dtype=np.int64)
_NB_Y = np.array([0, 1, 1, 1, 0, -1, -1, -1], dtype=np.int64)
# Face in each of the 9 directions (rows: 3 * dy + dx + 4 for dx, dy in -1, 0, 1) around each
# base face (columns), -1 where three faces meet and there is none.
_NB_FACE = np.array(
    [
        [8, 9, 10, 11, -1, -1, -1, -1, 10, 11, 8, 9],
        [5, 6, 7, 4, 8, 9, 10, 11, 9, 10, 11, 8],
        [-1, -1, -1, -1, 5, 6, 7, 4, -1, -1, -1, -1],
        [4, 5, 6, 7, 11, 8, 9, 10, 11, 8, 9, 10],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [1, 2, 3, 0, 0, 1, 2, 3, 5, 6, 7, 4],
        [-1, -1, -1, -1, 7, 4, 5, 6, -1, -1, -1, -1],
        [3, 0, 1, 2, 3, 0, 1, 2, 4, 5, 6, 7],
        [2, 3, 0, 1, -1, -1, -1, -1, 0, 1, 2, 3],
    ],
    dtype=np.int64,
)
# How the neighbouring face's axes are turned (bit 1: flip x, 2: flip y, 4: swap x and y),
# per direction and per row of base faces (north, equator, south).
_NB_SWAP = np.array(
    [[0, 0, 3], [0, 0, 6], [0, 0, 0], [0, 0, 5], [0, 0, 0], [5, 0, 0], [0, 0, 0], [6, 0, 0],
     [3, 0, 0]],
    dtype=np.int64,
)  # fmt: skip


def neighbours_nest(nside: int, pix: npt.ArrayLike) -> IntArray:
    """Return the 8 NEST neighbours of each pixel (``(8, N)``, -1 where there are only 7).

    Rows in healpy's order (SW, W, NW, N, NE, E, SE, S), as
    ``healpy.get_all_neighbours(nside, pix, nest=True)``.
    """
    face, ix, iy, order = _nest2xyf(nside, pix)
    x = ix[None, :] + _NB_X[:, None]  # (8, N)
    y = iy[None, :] + _NB_Y[:, None]
    direction = np.full(x.shape, 4, dtype=np.int64)
    direction += np.where(x < 0, -1, np.where(x >= nside, 1, 0))
    direction += np.where(y < 0, -3, np.where(y >= nside, 3, 0))
    x, y = np.mod(x, nside), np.mod(y, nside)
    faces = np.broadcast_to(face[None, :], x.shape)
    new_face = _NB_FACE[direction, faces]
    bits = _NB_SWAP[direction, faces >> 2]
    x = np.where(bits & 1, nside - x - 1, x)
    y = np.where(bits & 2, nside - y - 1, y)
    x, y = np.where(bits & 4, y, x), np.where(bits & 4, x, y)
    out = (new_face << (2 * order)) + _spread_bits(x, order) + (_spread_bits(y, order) << 1)
    result: IntArray = np.where(new_face < 0, -1, out)
    return result


def _xyf2vec(x: FloatArray, y: FloatArray, face: IntArray) -> FloatArray:
    """``(..., 3)`` unit vectors of face-local coordinates ``x, y`` in [0, 1] of ``face``."""
    jr = _JRLL[face] - x - y
    north, south = jr < 1, jr > 3
    nr = np.where(north, jr, np.where(south, 4 - jr, 1.0))
    cap = nr * nr / 3.0
    z = np.where(north, 1.0 - cap, np.where(south, cap - 1.0, (2 - jr) * 2.0 / 3.0))
    sth = np.where(north | south, np.sqrt(np.maximum(cap * (2.0 - cap), 0.0)), 0.0)
    sth = np.where(north | south, sth, np.sqrt((1.0 - z) * (1.0 + z)))
    tmp = _JPLL[face] * nr + x - y
    tmp = np.where(tmp < 0, tmp + 8, np.where(tmp >= 8, tmp - 8, tmp))
    phi = np.where(nr < 1e-15, 0.0, (np.pi / 4) * tmp / np.maximum(nr, 1e-15))
    out: FloatArray = np.stack([sth * np.cos(phi), sth * np.sin(phi), z], axis=-1)
    return out


def boundaries_nest(nside: int, pix: npt.ArrayLike, step: int = 1) -> FloatArray:
    """Return ``4 * step`` points along the boundary of each pixel, ``(N, 3, 4 * step)``.

    As ``healpy.boundaries(nside, pix, step, nest=True)``: the corners and ``step - 1`` points
    between them on each edge, in healpy's order.
    """
    face, ix, iy, _ = _nest2xyf(nside, pix)
    xc, yc = (ix[:, None] + 0.5) / nside, (iy[:, None] + 0.5) / nside
    dc, d = 0.5 / nside, 1.0 / (step * nside)
    i = np.arange(step)[None, :]
    still = 0.0 * i  # broadcasts a fixed coordinate along an edge
    xs = np.concatenate([xc + dc - i * d, xc - dc + still, xc - dc + i * d, xc + dc + still], 1)
    ys = np.concatenate([yc + dc + still, yc + dc - i * d, yc - dc + still, yc - dc + i * d], 1)
    vec = _xyf2vec(xs, ys, np.broadcast_to(face[:, None], xs.shape))  # (N, 4 step, 3)
    out: FloatArray = np.moveaxis(vec, -1, 1)
    return out


def max_pixrad(nside: int) -> float:
    """Return the largest centre-to-corner angle of any pixel (radians), as healpy's."""
    _order(nside)
    za, phia = 2.0 / 3.0, np.pi / (4 * nside)
    t1 = (1.0 - 1.0 / nside) ** 2
    zb = 1 - t1 / 3
    sa, sb = np.sqrt((1 - za) * (1 + za)), np.sqrt((1 - zb) * (1 + zb))
    va = np.array([sa * np.cos(phia), sa * np.sin(phia), za])
    vb = np.array([sb, 0.0, zb])
    return float(np.arctan2(np.linalg.norm(np.cross(va, vb)), float(va @ vb)))


def query_disc_centres(nside: int, centre: npt.ArrayLike, radius: float) -> list[IntArray]:
    """Return the pixels of the disc around each unit vector of ``centre`` ``(N, 3)``.

    Sorted NEST pixels with centres within ``radius`` radians, as
    ``healpy.query_disc(nside, vec, radius, nest=True)`` (not inclusive) up to ties at the edge.
    """
    c = np.asarray(centre, dtype=np.float64).reshape(-1, 3)
    pix_centres = np.stack(pix2vec_nest(nside, np.arange(12 * nside * nside)), axis=-1)
    cos_r = np.cos(radius)
    out: list[IntArray] = []
    for start in range(0, len(c), 1024):
        inside = c[start : start + 1024] @ pix_centres.T >= cos_r
        out.extend(np.flatnonzero(row).astype(np.int64) for row in inside)
    return out
