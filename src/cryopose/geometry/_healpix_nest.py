"""HEALPix NEST pixel centres and pixel look-up in numpy, without importing healpy.

healpy's import pulls in matplotlib and astropy (0.7-1.3 s on this machine), and the pose
pipeline only needs three of its functions: pixel centres as angles or unit vectors, and the
pixel of a direction, in the NEST scheme. These are the HEALPix reference algorithms (Gorski
et al. 2005, ApJ 622:759; the ``nest2xyf``, ``pix2loc`` and ``loc2pix`` routines of the
HEALPix C++ library): a NEST index splits into a base face and two interleaved bit fields
``(ix, iy)``; the face and ``ix + iy`` give the ring (so ``z``), ``ix - iy`` the position
along it (so ``phi``). Tests check them against healpy at orders 0-6.

>>> import numpy as np
>>> theta, phi = pix2ang_nest(1, np.arange(3))
>>> np.round(np.degrees(theta), 2).tolist(), np.round(np.degrees(phi), 2).tolist()
([48.19, 48.19, 48.19], [45.0, 135.0, 225.0])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["pix2ang_nest", "pix2vec_nest", "vec2pix_nest"]

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


def _pix2zphi(nside: int, pix: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``z = cos(theta)``, ``sin(theta)`` and ``phi`` of NEST pixel centres."""
    order = _order(nside)
    p = np.asarray(pix, dtype=np.int64)
    if p.size and (p.min() < 0 or p.max() >= 12 * nside * nside):
        raise ValueError(f"pixel indices must be in [0, {12 * nside * nside}) at nside {nside}")
    face = p >> (2 * order)
    local = p & (nside * nside - 1)
    ix, iy = _compress_bits(local, order), _compress_bits(local >> 1, order)
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
