"""Rotation matrices <-> unit quaternions <-> axis-angle vectors, and uniform random rotations.

All matrices are ``(..., 3, 3)`` rotation matrices that **left-multiply column vectors**
(``x' = R @ x``), the same matrices as :func:`cryopose.geometry.euler_to_matrix` returns for
RELION angles. The functions here only change the representation of a matrix; they do not
change which way it acts.

- A quaternion ``q = (w, x, y, z)`` (scalar first) of unit norm stands for the matrix
  ``R(q) v = q v q*``: the right-handed rotation by ``theta = 2 acos(w)`` about the unit axis
  ``(x, y, z) / sin(theta / 2)``. ``q`` and ``-q`` give the same matrix; the functions here
  return the representative with ``w >= 0``.
- An axis-angle vector ``v`` of shape ``(..., 3)`` stands for the right-handed rotation by
  ``|v|`` radians about ``v / |v|`` (Rodrigues).

Everything is batched over leading dimensions, works in float32 and float64 on any device, and
is differentiable (gradients stay finite at the identity).

>>> import torch
>>> R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, torch.pi / 2]))
>>> torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
True
>>> matrix_to_quaternion(R)
tensor([0.7071, 0.0000, 0.0000, 0.7071])
"""

from __future__ import annotations

import torch

from cryopose.geometry.euler import euler_to_matrix, matrix_to_euler

__all__ = [
    "axis_angle_to_matrix",
    "euler_to_quaternion",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "quaternion_to_euler",
    "quaternion_to_matrix",
    "random_rotations",
]


def _check_matrices(R: torch.Tensor) -> None:
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"expected matrices of shape (..., 3, 3), got {tuple(R.shape)}")


def _check_last(t: torch.Tensor, size: int, what: str) -> None:
    if t.ndim == 0 or t.shape[-1] != size:
        raise ValueError(f"expected {what} of shape (..., {size}), got {tuple(t.shape)}")


def _sqrt_positive(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf or nan) where ``x <= 0``."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(w, x, y, z)`` to rotation matrices.

    Parameters
    ----------
    q
        ``(..., 4)`` quaternions, scalar first. They are normalised first, so any non-zero
        length is accepted; ``q`` and ``-q`` give the same matrix.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices ``R`` with ``R @ v = q v q*`` for column vectors ``v``.
    """
    _check_last(q, 4, "quaternions")
    w, x, y, z = (q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)).unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to unit quaternions ``(w, x, y, z)`` with ``w >= 0``.

    Uses Shepperd's method: each of the four components can be recovered from the diagonal, the
    others from off-diagonal sums and differences divided by it; the branch with the largest
    divisor is taken, so the result is accurate for every rotation, including half turns where
    ``w`` is 0.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices (left-multiplying column vectors).

    Returns
    -------
    torch.Tensor
        ``(..., 4)`` unit quaternions, scalar first, ``w >= 0``, such that
        ``quaternion_to_matrix(matrix_to_quaternion(R)) == R``. For half turns (``w == 0``)
        the sign of the vector part is whatever the selected branch gives.
    """
    _check_matrices(R)
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 2|w|, 2|x|, 2|y|, 2|z|
    q_abs = _sqrt_positive(
        torch.stack(
            [
                1 + m00 + m11 + m22,
                1 + m00 - m11 - m22,
                1 - m00 + m11 - m22,
                1 - m00 - m11 + m22,
            ],
            dim=-1,
        )
    )
    qa0, qa1, qa2, qa3 = q_abs.unbind(-1)
    # Row k holds 2 * q_abs[k] * q, computed from the k-th diagonal combination.
    candidates = torch.stack(
        [
            torch.stack([qa0 * qa0, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, qa1 * qa1, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, qa2 * qa2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, qa3 * qa3], dim=-1),
        ],
        dim=-2,
    )
    # The floor only keeps the unselected branches finite (and their gradients zero).
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    candidates = candidates / (2 * torch.maximum(q_abs, floor))[..., None]
    best = q_abs.argmax(dim=-1, keepdim=True)
    q = torch.take_along_dim(candidates, best[..., None], dim=-2).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors to rotation matrices (Rodrigues' formula).

    Parameters
    ----------
    v
        ``(..., 3)`` rotation vectors: direction = axis, length = right-handed angle in radians.
        The zero vector gives the identity; small angles are exact to rounding (no division by
        the angle) and the gradient at 0 is finite.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices (left-multiplying column vectors).
    """
    _check_last(v, 3, "axis-angle vectors")
    angle = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    half = angle / 2
    # sin(t/2) / t = 0.5 * sinc(t / 2pi) with torch's normalised sinc: smooth through t = 0.
    q = torch.cat([torch.cos(half), 0.5 * torch.sinc(half / torch.pi) * v], dim=-1)
    return quaternion_to_matrix(q)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to axis-angle vectors.

    Goes through :func:`matrix_to_quaternion` and ``theta = 2 atan2(|xyz|, w)``, which is
    accurate near 0 and near pi (unlike ``acos((trace - 1) / 2)``).

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` rotation vectors with length in ``[0, pi]``. For a half turn the axis sign
        is arbitrary (``v`` and ``-v`` are the same rotation).
    """
    q = matrix_to_quaternion(R)
    w, xyz = q[..., :1], q[..., 1:]
    n = torch.linalg.vector_norm(xyz, dim=-1, keepdim=True)
    tiny = n < 1e-6 if q.dtype != torch.float64 else n < 1e-12
    n_safe = torch.where(tiny, torch.ones_like(n), n)
    # theta / n; as n -> 0 (w -> 1) it tends to 2 / w (first-order series of atan).
    scale = torch.where(tiny, 2 / w.clamp_min(0.5), 2 * torch.atan2(n_safe, w) / n_safe)
    return xyz * scale


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotations drawn uniformly (Haar measure) from SO(3).

    Draws Gaussian 4-vectors and normalises them: their direction is uniform on S^3, which maps
    to the Haar measure on SO(3).

    Parameters
    ----------
    n
        Number of rotations.
    generator
        Optional torch generator (on ``device``) for reproducible draws.
    dtype
        Floating dtype of the result.
    device
        Device of the result.

    Returns
    -------
    torch.Tensor
        ``(n, 3, 3)`` rotation matrices (left-multiplying column vectors).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    q = torch.randn((n, 4), generator=generator, dtype=dtype, device=device)
    return quaternion_to_matrix(q)


def euler_to_quaternion(angles_deg: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles in degrees to quaternions, through the RELION matrix.

    Parameters
    ----------
    angles_deg
        ``(..., 3)`` (rlnAngleRot, rlnAngleTilt, rlnAnglePsi) in degrees.

    Returns
    -------
    torch.Tensor
        ``(..., 4)`` unit quaternions ``(w, x, y, z)``, ``w >= 0``, of the matrix
        :func:`cryopose.geometry.euler_to_matrix` gives.
    """
    return matrix_to_quaternion(euler_to_matrix(angles_deg))


def quaternion_to_euler(q: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(w, x, y, z)`` to RELION Euler angles in degrees, through the matrix.

    Parameters
    ----------
    q
        ``(..., 4)`` quaternions (normalised first).

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` (rot, tilt, psi) in degrees, in the ranges of
        :func:`cryopose.geometry.matrix_to_euler`.
    """
    return matrix_to_euler(quaternion_to_matrix(q))
