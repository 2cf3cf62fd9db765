"""Small rotations around a pose: the local search grid of :mod:`cryopose.pose.refine`.

A candidate pose is ``R' = dR @ R`` for a small rotation ``dR``. Left multiplication keeps the
image-frame meaning: an image at pose ``R`` is ``image(x) = sum_z V(R^T x)``, so at ``dR @ R``
it is ``sum_z V(R^T dR^T x)``: ``dR`` acts on lab (image) coordinates. A ``dR`` about z is an
in-plane rotation of the image about its centre (the RELION origin keeps its meaning), and
``dR`` about x or y tilts the viewing direction about an image axis. Both ``dR @ R`` and
``R @ dR`` cover the same geodesic ball of radius ``|dR|`` around ``R`` (the rotation angle of
``R^T dR R`` is that of ``dR``), so the choice changes which grid points are visited, not the
region searched.

The ``dR`` are ``exp`` of axis-angle vectors on a cubic grid of spacing ``step`` inside the
ball of radius ``radius``: with the defaults (6 degrees, 2 degrees) that is 123 rotations,
and any rotation within the ball is at most ``step * sqrt(3) / 2`` (1.7 degrees) from one.

>>> grid = local_rotation_grid(6.0, 2.0)
>>> tuple(grid.shape)
(123, 3, 3)
>>> bool(torch.equal(grid[0], torch.eye(3, dtype=torch.float64)))
True
"""

from __future__ import annotations

import math

import torch

from cryopose.geometry.rotations import axis_angle_to_matrix

__all__ = ["local_rotation_grid", "local_rotations"]


def local_rotation_grid(radius_deg: float, step_deg: float) -> torch.Tensor:
    """Small rotations ``dR`` covering the ball of ``radius_deg`` around the identity.

    Parameters
    ----------
    radius_deg
        Largest rotation angle in degrees (>= 0).
    step_deg
        Spacing in degrees of the cubic grid of axis-angle vectors (> 0).

    Returns
    -------
    torch.Tensor
        ``(K, 3, 3)`` float64 rotation matrices, sorted by rotation angle (index 0 is the
        identity, so ties in a search keep the unchanged pose).
    """
    if not (radius_deg >= 0.0 and step_deg > 0.0):
        raise ValueError(f"need radius >= 0 and step > 0 degrees, got {radius_deg}, {step_deg}")
    n = math.floor(radius_deg / step_deg + 1e-9)
    ticks = torch.arange(-n, n + 1, dtype=torch.float64)
    cube = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), dim=-1).reshape(-1, 3)
    norm2 = (cube * cube).sum(-1)
    # A small tolerance keeps the points exactly on the sphere (e.g. (3, 0, 0) steps for 6/2).
    inside = norm2 * step_deg**2 <= radius_deg**2 * (1.0 + 1e-9) + 1e-12
    cube, norm2 = cube[inside], norm2[inside]
    cube = cube[torch.argsort(norm2, stable=True)]
    return axis_angle_to_matrix(torch.deg2rad(cube * step_deg))


def local_rotations(rotations: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Candidate poses ``dR @ R`` for every pose and every small rotation.

    Parameters
    ----------
    rotations
        ``(B, 3, 3)`` RELION rotation matrices ``R``.
    grid
        ``(K, 3, 3)`` small rotations ``dR`` from :func:`local_rotation_grid`.

    Returns
    -------
    torch.Tensor
        ``(B, K, 3, 3)`` with ``[b, k] = grid[k] @ rotations[b]``, dtype of ``rotations``.
    """
    return grid.to(rotations)[None] @ rotations[:, None]
