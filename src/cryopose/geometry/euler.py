"""RELION ZYZ Euler angles <-> rotation matrices.

RELION's angles (rot, tilt, psi) = (a, b, g) give the matrix (DESIGN.md)::

    A = [[ cg*cb*ca - sg*sa,   cg*cb*sa + sg*ca,  -cg*sb],
         [-sg*cb*ca - cg*sa,  -sg*cb*sa + cg*ca,   sg*sb],
         [ sb*ca,              sb*sa,              cb   ]]

i.e. ``A = Rz(g) @ Ry(b) @ Rz(a)`` with the *passive* elementary matrices
``Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and ``Ry(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``.
A particle at pose A is the projection along z of the volume rotated by A. The third row of A
is the viewing direction (polar angle tilt, azimuth rot).

>>> import torch
>>> R = euler_to_matrix(torch.tensor([30.0, 60.0, -45.0]))
>>> torch.allclose(matrix_to_euler(R), torch.tensor([30.0, 60.0, -45.0]), atol=1e-4)
True
"""

from __future__ import annotations

import math

import torch

__all__ = ["euler_to_matrix", "euler_to_matrix_rad", "matrix_to_euler", "matrix_to_euler_rad"]


def euler_to_matrix_rad(angles: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles in radians to rotation matrices.

    Parameters
    ----------
    angles
        ``(..., 3)`` tensor of (rot, tilt, psi) in radians.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices, same dtype and device as ``angles``.
    """
    if angles.shape[-1] != 3:
        raise ValueError(f"expected angles of shape (..., 3), got {tuple(angles.shape)}")
    a, b, g = angles.unbind(-1)
    ca, sa = torch.cos(a), torch.sin(a)
    cb, sb = torch.cos(b), torch.sin(b)
    cg, sg = torch.cos(g), torch.sin(g)
    rows = [
        torch.stack([cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb], dim=-1),
        torch.stack([sb * ca, sb * sa, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def euler_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles in degrees (as in star files) to rotation matrices.

    Parameters
    ----------
    angles_deg
        ``(..., 3)`` tensor of (rlnAngleRot, rlnAngleTilt, rlnAnglePsi) in degrees.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices in RELION's convention.
    """
    return euler_to_matrix_rad(torch.deg2rad(angles_deg))


def matrix_to_euler_rad(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to RELION Euler angles in radians.

    Tilt is returned in ``[0, pi]``, rot and psi in ``(-pi, pi]``. At the gimbal poles
    (tilt 0 or pi) rot is set to 0 and the whole in-plane angle goes to psi, as RELION does.

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` (rot, tilt, psi) in radians.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"expected matrices of shape (..., 3, 3), got {tuple(R.shape)}")
    abs_sb = torch.sqrt(R[..., 0, 2] ** 2 + R[..., 1, 2] ** 2)
    eps = 16 * torch.finfo(R.dtype).eps if R.dtype.is_floating_point else 1e-6
    regular = abs_sb > eps
    tilt = torch.atan2(abs_sb, R[..., 2, 2])
    rot = torch.where(regular, torch.atan2(R[..., 2, 1], R[..., 2, 0]), torch.zeros_like(tilt))
    psi_regular = torch.atan2(R[..., 1, 2], -R[..., 0, 2])
    # At the poles only rot + psi (tilt 0) or psi - rot (tilt pi) is defined; rot := 0.
    psi_north = torch.atan2(-R[..., 1, 0], R[..., 0, 0])
    psi_south = torch.atan2(R[..., 1, 0], -R[..., 0, 0])
    psi_pole = torch.where(R[..., 2, 2] > 0, psi_north, psi_south)
    psi = torch.where(regular, psi_regular, psi_pole)
    # Build the pole tilt in R's own dtype: a Python-scalar torch.where would round pi to float32.
    pole_tilt = torch.where(
        R[..., 2, 2] > 0, torch.zeros_like(tilt), torch.full_like(tilt, math.pi)
    )
    tilt = torch.where(regular, tilt, pole_tilt)
    return torch.stack([rot, tilt, psi], dim=-1)


def matrix_to_euler(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to RELION Euler angles in degrees (rot, tilt, psi).

    Parameters
    ----------
    R
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` angles in degrees; tilt in ``[0, 180]``, rot and psi in ``(-180, 180]``.
    """
    return torch.rad2deg(matrix_to_euler_rad(R))
