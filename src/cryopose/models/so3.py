"""Harmonic analysis on S2 and SO(3) for the Image2Sphere head, in RELION's rotation convention.

Functions on the sphere are expanded in real, orthonormal spherical harmonics
(``int_S2 Y_lm Y_l'm' du = delta``, e3nn's ``"integral"`` normalisation) and functions on SO(3)
in real Wigner-D matrices ``D_l(R)`` of the same basis, which satisfy

    ``Y_l(R u) = D_l(R) Y_l(u)``  and  ``D_l(R1 @ R2) = D_l(R1) D_l(R2)``

for rotation matrices ``R`` acting on column vectors of xyz coordinates -- the matrices of
:mod:`cryopose.geometry` (RELION's pose ``A``: the image is the projection of the volume rotated
by ``A``). An SO(3) signal with Fourier coefficients ``H_l`` (``(2l+1, 2l+1)`` blocks) is

    ``h(R) = sum_l sum_mn H_l[m, n] D_l(R)[m, n]``.

Coefficients are stored *flat*: the blocks ``H_0 .. H_lmax`` flattened row-major and concatenated,
``(..., C)`` with ``C = sum_l (2l+1)**2`` (:func:`so3_size`); sphere coefficients likewise as
``(..., (lmax+1)**2)``. Left multiplication of the argument, ``h'(R) = h(Q^T R)``, maps ``H_l`` to
``D_l(Q) H_l``: that is the symmetry the network keeps (an in-plane rotation ``Q`` of the image
moves the pose ``A`` to ``Q A``).

Grid evaluation uses the structure of the HEALPix SO(3) grid (:func:`cryopose.geometry.
so3_healpix_grid`): every grid rotation is ``R_k = Rz(psi_j) @ B_p`` with ``B_p`` the pixel's
psi = 0 frame, so ``D(R_k) = D(Rz(psi_j)) D(B_p)`` and only ``n_psi + npix`` Wigner matrices are
stored (order 4: 96 + 3072 instead of 294,912). The per-(order, lmax) matrices are cached.

The basis is e3nn's (``e3nn.o3.spherical_harmonics``, version 0.6), which the models were first
trained with, computed here without importing e3nn (its import pulls in ``torch._dynamo``: 1.3 s
at every start of a pose command). Degree ``l`` holds ``m = -l .. l`` in that order; they are the
textbook real harmonics without the Condon-Shortley phase, with the polar axis along ``y`` and
the azimuth measured from ``z`` toward ``x``:

    ``Y_lm(u) = K_lm P_l^|m|(y) * {sqrt(2) cos(m phi), 1, sqrt(2) sin(|m| phi)}``  (m > 0, 0, < 0)

where ``sin(theta) exp(i phi) = z + i x``. The tests compare both functions with e3nn.

>>> import torch
>>> from cryopose.geometry import random_rotations
>>> R = random_rotations(2, dtype=torch.float64)
>>> D = wigner_d(R, 2)
>>> bool(torch.allclose(flat_wigner(R[0] @ R[1], 2)[10:], (D[2][0] @ D[2][1]).reshape(-1),
...                     atol=1e-5))
True
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from cryopose.geometry._healpix_nest import pix2vec_nest
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.euler import euler_to_matrix_rad
from cryopose.geometry.healpix import so3_healpix_grid

__all__ = [
    "SO3Grid",
    "flat_wigner",
    "hemisphere_points",
    "s2_healpix_points",
    "s2_size",
    "so3_local_rotations",
    "so3_size",
    "spherical_harmonics",
    "wigner_d",
]


def _check_lmax(lmax: int) -> None:
    if isinstance(lmax, bool) or not isinstance(lmax, int) or lmax < 0:
        raise ValueError(f"lmax must be an integer >= 0, got {lmax!r}")


def s2_size(lmax: int) -> int:
    """Return the number of spherical-harmonic coefficients up to ``lmax``: ``(lmax+1)**2``."""
    _check_lmax(lmax)
    return (lmax + 1) ** 2


def so3_size(lmax: int) -> int:
    """Return the number of flat Wigner-D coefficients up to ``lmax``: ``sum_l (2l+1)**2``.

    >>> [so3_size(l) for l in (0, 1, 6, 8)]
    [1, 10, 455, 969]
    """
    _check_lmax(lmax)
    return (lmax + 1) * (2 * lmax + 1) * (2 * lmax + 3) // 3


def _so3_offsets(lmax: int) -> list[tuple[int, int, int]]:
    """``(l, start, stop)`` of each degree's block in the flat SO(3) layout."""
    out, start = [], 0
    for ell in range(lmax + 1):
        stop = start + (2 * ell + 1) ** 2
        out.append((ell, start, stop))
        start = stop
    return out


def spherical_harmonics(u: torch.Tensor, lmax: int) -> torch.Tensor:
    """Real orthonormal spherical harmonics of directions, degrees 0..lmax.

    Parameters
    ----------
    u
        ``(..., 3)`` xyz vectors (normalised first; must be non-zero).
    lmax
        Largest degree.

    Returns
    -------
    torch.Tensor
        ``(..., (lmax+1)**2)``: degree ``l`` occupies ``[l**2, (l+1)**2)``. Orthonormal on the
        unit sphere and ``Y_l(R u) = D_l(R) Y_l(u)`` with :func:`wigner_d`.
    """
    _check_lmax(lmax)
    if u.shape[-1] != 3:
        raise ValueError(f"expected vectors of shape (..., 3), got {tuple(u.shape)}")
    v = u.to(torch.float64)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    x, y, z = v.unbind(-1)
    # (z + i x)^m = sin(theta)^m exp(i m phi): cos and sin parts by the complex recursion.
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(lmax):
        c, s_ = cos_m[-1], sin_m[-1]
        cos_m.append(c * z - s_ * x)
        sin_m.append(c * x + s_ * z)
    # P_l^m(y) / sin(theta)^m, a polynomial in y, by the standard three-term recursion.
    legendre: dict[tuple[int, int], torch.Tensor] = {}
    for m in range(lmax + 1):
        legendre[m, m] = torch.full_like(y, float(math.prod(range(1, 2 * m, 2))))
        if m < lmax:
            legendre[m + 1, m] = (2 * m + 1) * y * legendre[m, m]
        for ell in range(m + 2, lmax + 1):
            legendre[ell, m] = (
                (2 * ell - 1) * y * legendre[ell - 1, m] - (ell + m - 1) * legendre[ell - 2, m]
            ) / (ell - m)
    columns = []
    for ell in range(lmax + 1):
        for m in range(-ell, ell + 1):
            a = abs(m)
            ratio = math.prod(range(ell - a + 1, ell + a + 1))  # (l + |m|)! / (l - |m|)!
            k = math.sqrt((2 * ell + 1) / (4 * math.pi) / ratio)
            if m == 0:
                columns.append(k * legendre[ell, 0])
            else:
                part = cos_m[a] if m > 0 else sin_m[a]
                columns.append(math.sqrt(2) * k * legendre[ell, a] * part)
    return torch.stack(columns, dim=-1).to(u.dtype)


def _probe_points(lmax: int) -> torch.Tensor:
    """``(P, 3)`` float64 directions (a Fibonacci sphere) at which :func:`wigner_d` probes."""
    n = 2 * (2 * lmax + 1) + 8
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / n
    r = torch.sqrt(1 - y**2)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * torch.sin(phi), y, r * torch.cos(phi)], dim=-1)


@functools.lru_cache(maxsize=16)
def _probe_inverse(lmax: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Probe points ``(P, 3)`` and per degree the pseudo-inverse ``(2l+1, P)`` of ``Y_l(U)``."""
    points = _probe_points(lmax)
    Y = spherical_harmonics(points, lmax)
    return points, [torch.linalg.pinv(Y[:, ell**2 : (ell + 1) ** 2]) for ell in range(lmax + 1)]


def wigner_d(R: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """Real Wigner-D matrices of rotations, one ``(..., 2l+1, 2l+1)`` tensor per degree.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices (RELION convention: left-multiply column vectors).
    lmax
        Largest degree.

    Returns
    -------
    list[torch.Tensor]
        ``[D_0, ..., D_lmax]`` in R's dtype; orthogonal, ``D_l(R1 R2) = D_l(R1) D_l(R2)`` and
        ``Y_l(R u) = D_l(R) Y_l(u)`` (:func:`spherical_harmonics`), computed in float64.
    """
    _check_lmax(lmax)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"expected matrices of shape (..., 3, 3), got {tuple(R.shape)}")
    # Y_l(R U) = D_l(R) Y_l(U) at P probe directions U, solved for D_l by least squares.
    points, inverse = _probe_inverse(lmax)
    rotated = torch.einsum("...ij,pj->...pi", R.to(torch.float64), points.to(R.device))
    Y = spherical_harmonics(rotated, lmax)  # (..., P, (lmax+1)**2)
    return [
        (inv.to(R.device) @ Y[..., ell**2 : (ell + 1) ** 2]).transpose(-1, -2).to(R.dtype)
        for ell, inv in enumerate(inverse)
    ]


def flat_wigner(R: torch.Tensor, lmax: int) -> torch.Tensor:
    """Wigner-D matrices of rotations in the flat SO(3) layout.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.
    lmax
        Largest degree.

    Returns
    -------
    torch.Tensor
        ``(..., so3_size(lmax))``; the signal with flat coefficients ``H`` takes the value
        ``(H * flat_wigner(R)).sum(-1)`` at ``R``.
    """
    blocks = wigner_d(R, lmax)
    return torch.cat([D.reshape(*R.shape[:-2], -1) for D in blocks], dim=-1)


def s2_healpix_points(order: int) -> torch.Tensor:
    """Centres of the HEALPix pixels (NESTED) of a given order, as unit vectors.

    Parameters
    ----------
    order
        HEALPix order ``k`` (``nside = 2**k``, ``12 * 4**k`` points).

    Returns
    -------
    torch.Tensor
        ``(12 * 4**k, 3)`` float64 unit vectors.
    """
    if order < 0:
        raise ValueError(f"HEALPix order must be >= 0, got {order}")
    nside = 2**order
    xyz = pix2vec_nest(nside, np.arange(12 * nside * nside))
    return torch.from_numpy(np.stack(xyz, axis=-1).astype(np.float64))


def hemisphere_points(order: int) -> torch.Tensor:
    """HEALPix pixel centres on the upper hemisphere ``z > 0`` (the image-projection grid).

    A point ``u`` is seen in the image at ``(x, y) = (u_x, u_y)`` (orthographic projection of
    the hemisphere onto the unit disc). The set is invariant under 90 degree rotations about z
    (HEALPix rings are), which makes the projection exactly equivariant to ``torch.rot90``.

    Parameters
    ----------
    order
        HEALPix order ``k``; ``6 * 4**k - 2**(k+1)`` points for ``k >= 1`` (the equator ring,
        ``z = 0``, is left out).

    Returns
    -------
    torch.Tensor
        ``(P, 3)`` float64 unit vectors with ``z > 0``.
    """
    points = s2_healpix_points(order)
    return points[points[:, 2] > 1e-12]


def so3_local_rotations(radius_deg: float, order: int) -> torch.Tensor:
    """Rotations of the HEALPix SO(3) grid within a geodesic radius of the identity.

    The support of the local SO(3) convolution kernel (Image2Sphere's "near identity grid").

    Parameters
    ----------
    radius_deg
        Geodesic radius in degrees (> 0).
    order
        Order of the HEALPix SO(3) grid to draw the rotations from.

    Returns
    -------
    torch.Tensor
        ``(K, 3, 3)`` float64 rotation matrices, the identity first (it is always included).
    """
    if not radius_deg > 0:
        raise ValueError(f"kernel radius must be positive, got {radius_deg}")
    grid = so3_healpix_grid(order, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    angle = geodesic_distance(eye, grid)
    near = grid[(angle <= math.radians(radius_deg)) & (angle > 1e-9)]
    return torch.cat([eye[None], near])


#: :class:`SO3Grid` keeps the whole ``(C, M)`` Wigner matrix when it has at most this many
#: entries (order 2, lmax 6: 2.1 M), else only its factors.
DENSE_MAX_ENTRIES = 4_000_000


def _psi_samples(order: int, lmax: int) -> torch.Tensor:
    """In-plane angles ``(S,)`` at which :class:`SO3Grid` evaluates signals.

    The grid's own ``n_psi``, or ``2 lmax + 1`` equispaced angles when those are fewer.
    """
    n = min(6 * 2**order, 2 * lmax + 1)
    angles: torch.Tensor = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return angles


def _psi_interpolation(order: int, lmax: int) -> torch.Tensor:
    """``(n_psi, S)`` trigonometric interpolation from :func:`_psi_samples` to the grid's psi.

    With ``S`` odd equispaced samples the Dirichlet kernel ``sin(S d / 2) / (S sin(d / 2))``
    reproduces every trigonometric polynomial of degree ``<= (S - 1) / 2`` exactly.
    """
    n_psi = 6 * 2**order
    samples = _psi_samples(order, lmax)
    S = samples.numel()
    if n_psi == S:
        return torch.eye(n_psi, dtype=torch.float64)
    target = 2 * math.pi * torch.arange(n_psi, dtype=torch.float64) / n_psi
    d = target[:, None] - samples[None, :]
    half = torch.sin(d / 2)
    kernel = torch.sin(S * d / 2) / (S * torch.where(half.abs() < 1e-12, 1.0, half))
    return torch.where(half.abs() < 1e-12, 1.0, kernel)


@functools.lru_cache(maxsize=16)
def _grid_wigner(order: int, lmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the cached float64 in-plane and pixel Wigner-D matrices.

    ``(S, C)`` at the angles of :func:`_psi_samples` and ``(npix, C)`` at the pixel frames.
    """
    npix = 12 * 4**order
    frames = so3_healpix_grid(order, dtype=torch.float64)[:npix]  # psi = 0: B_p
    psi = _psi_samples(order, lmax)
    zeros = torch.zeros_like(psi)
    in_plane = euler_to_matrix_rad(torch.stack([zeros, zeros, psi], dim=-1))  # Rz(psi_j)
    psi_w = flat_wigner(in_plane, lmax)
    pix_w = flat_wigner(frames, lmax)
    return psi_w, pix_w


class SO3Grid(torch.nn.Module):
    """Evaluate SO(3) signals on a HEALPix SO(3) grid, and project grid values back.

    Holds the factorised Wigner-D matrices of one (order, lmax) as non-persistent buffers (they
    follow ``.to(device)`` but are not saved in checkpoints).

    Along the in-plane angle a signal of degree ``<= lmax`` is a trigonometric polynomial of
    degree ``<= lmax`` (each ``D_l(Rz(psi))`` is), so it is evaluated at ``S = 2 lmax + 1``
    equispaced angles only and interpolated exactly to the grid's ``n_psi`` when ``S < n_psi``
    (order 3, lmax 6: 13 instead of 48 angles in the costly product with the pixel matrices);
    :meth:`from_grid`, the adjoint, first applies the transposed interpolation.

    Parameters
    ----------
    order
        HEALPix SO(3) grid order (:func:`cryopose.geometry.so3_healpix_grid`).
    lmax
        Largest degree of the signals.
    dtype
        Floating dtype of the buffers.

    Examples
    --------
    >>> g = SO3Grid(1, 2)
    >>> H = torch.randn(3, so3_size(2))
    >>> values = g.to_grid(H)
    >>> values.shape
    torch.Size([3, 576])
    >>> R = so3_healpix_grid(1)[100]
    >>> bool(torch.allclose(values[:, 100], H @ flat_wigner(R.double(), 2).float(), atol=1e-4))
    True
    """

    psi_wigner: torch.Tensor
    pixel_wigner: torch.Tensor
    psi_interpolation: torch.Tensor
    degree_weights: torch.Tensor
    dense: torch.Tensor | None

    def __init__(self, order: int, lmax: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        _check_lmax(lmax)
        self.order = order
        self.lmax = lmax
        self.n_psi = 6 << order  # 6 * 2**order
        self.npix = 12 << (2 * order)  # 12 * 4**order
        psi_w, pix_w = _grid_wigner(order, lmax)
        self.n_samples = int(psi_w.shape[0])
        # Built in float64, cast to ``dtype`` at the end.
        self.register_buffer("psi_wigner", psi_w, persistent=False)
        self.register_buffer("pixel_wigner", pix_w, persistent=False)
        interp = _psi_interpolation(order, lmax)
        self.register_buffer("psi_interpolation", interp, persistent=False)
        weights = [
            torch.full(((2 * ell + 1) ** 2,), (2 * ell + 1) / self.size, dtype=torch.float64)
            for ell in range(lmax + 1)
        ]
        self.register_buffer("degree_weights", torch.cat(weights), persistent=False)
        self.register_buffer("dense", None, persistent=False)
        C = so3_size(lmax)
        if C * self.size <= DENSE_MAX_ENTRIES:
            # One matrix product instead of per-degree batches of small ones: the activation
            # (order 1, lmax 6: 455 x 576) took 0.19 instead of 1.77 s per 1,024 particles.
            eye = torch.eye(C, dtype=torch.float64)
            self.dense = self._to_grid_factored(eye)
        self.to(dtype)

    @property
    def size(self) -> int:
        """Number of grid rotations ``M = n_psi * npix``."""
        return self.n_psi * self.npix

    def to_grid(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Values of SO(3) signals at every grid rotation.

        Parameters
        ----------
        coefficients
            ``(..., C)`` flat Wigner coefficients, ``C = so3_size(lmax)``.

        Returns
        -------
        torch.Tensor
            ``(..., M)``: entry ``psi_index * npix + pixel`` is ``h(R_k)`` for grid rotation
            ``R_k = so3_healpix_grid(order)[k]``.
        """
        if self.dense is not None:
            return coefficients @ self.dense
        return self._to_grid_factored(coefficients)

    def _to_grid_factored(self, coefficients: torch.Tensor) -> torch.Tensor:
        """:meth:`to_grid` through the factorised Wigner matrices."""
        lead = coefficients.shape[:-1]
        parts = []
        for ell, start, stop in _so3_offsets(self.lmax):
            d = 2 * ell + 1
            Dz = self.psi_wigner[:, start:stop].reshape(self.n_samples, d, d)
            H = coefficients[..., start:stop].reshape(*lead, 1, d, d)
            # sum_mn H[m,n] (Dz B)[m,n] = sum_kn (Dz^T H)[k,n] B[k,n]
            parts.append((Dz.transpose(-1, -2) @ H).reshape(*lead, self.n_samples, d * d))
        rotated = torch.cat(parts, dim=-1)  # (..., S, C)
        values = rotated @ self.pixel_wigner.T  # (..., S, npix)
        if self.n_samples < self.n_psi:
            values = self.psi_interpolation @ values  # (..., n_psi, npix)
        return values.reshape(*lead, self.size)

    def from_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Fourier coefficients of grid samples by quadrature (equal weights).

        The HEALPix SO(3) grid has equal-area directions times uniform in-plane angles, so
        equal weights approximate the Haar measure: ``H_l = (2l+1) / M sum_k h(R_k) D_l(R_k)``,
        the inverse of :meth:`to_grid` for band-limited signals up to the grid's aliasing.

        Parameters
        ----------
        values
            ``(..., M)`` signal values in grid order.

        Returns
        -------
        torch.Tensor
            ``(..., C)`` flat coefficients.
        """
        if self.dense is not None:
            return (values @ self.dense.T) * self.degree_weights
        return self._from_grid_factored(values)

    def _from_grid_factored(self, values: torch.Tensor) -> torch.Tensor:
        """:meth:`from_grid` through the factorised Wigner matrices."""
        lead = values.shape[:-1]
        v = values.reshape(*lead, self.n_psi, self.npix)
        if self.n_samples < self.n_psi:
            v = self.psi_interpolation.T @ v  # (..., S, npix)
        partial = v @ self.pixel_wigner  # (..., S, C): sum_p v[j, p] D(B_p)
        parts = []
        for ell, start, stop in _so3_offsets(self.lmax):
            d = 2 * ell + 1
            Dz = self.psi_wigner[:, start:stop].reshape(self.n_samples, d, d)
            T = partial[..., start:stop].reshape(*lead, self.n_samples, d, d)
            H = (Dz @ T).sum(dim=-3) * (d / self.size)
            parts.append(H.reshape(*lead, d * d))
        return torch.cat(parts, dim=-1)
