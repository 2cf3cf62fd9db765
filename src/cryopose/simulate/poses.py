"""Pose distributions for simulated particles: uniform, or strongly preferred views.

A RELION pose ``A`` (DESIGN.md) views the volume along its direction ``A^T (0, 0, 1)``, the
third row of ``A``: ``(sin(tilt) cos(rot), sin(tilt) sin(rot), cos(tilt))``. ``rot`` and
``tilt`` choose the viewing direction and ``psi`` the in-plane angle. Preferred orientation
in real data (particles lying flat on the air-water interface) concentrates the *viewing
directions* while the in-plane angle stays uniform, which is what
:func:`preferred_orientation_poses` draws.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> R = preferred_orientation_poses(1000, g, kind="top", concentration=50.0)
>>> bool((R[:, 2, 2] > 0.9).float().mean() > 0.95)  # viewing directions within ~25 deg of +z
True
>>> bool((uniform_poses(1000, g)[:, 2, 2] > 0.9).float().mean() < 0.1)
True
"""

from __future__ import annotations

import math

import torch

from cryopose.geometry.euler import euler_to_matrix_rad
from cryopose.geometry.rotations import random_rotations

__all__ = [
    "PREFERRED_VIEWS",
    "preferred_orientation_poses",
    "uniform_poses",
    "viewing_directions",
    "von_mises_fisher",
]

# Mean viewing directions (x, y, z in the volume frame) and their weights for each kind.
PREFERRED_VIEWS: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, ...]]] = {
    # Particles lying flat: nearly all seen down the z axis.
    "top": (((0.0, 0.0, 1.0),), (1.0,)),
    # Half top views, half side views along two orthogonal side directions.
    "top-side": (((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), (0.5, 0.25, 0.25)),
    # Side views only, four directions around the equator.
    "side": (
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
        (0.25, 0.25, 0.25, 0.25),
    ),
}


def uniform_poses(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Rotations drawn uniformly (Haar measure) from SO(3).

    Parameters
    ----------
    n
        Number of poses.
    generator
        CPU torch generator, for reproducible draws.
    dtype
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        ``(n, 3, 3)`` RELION rotation matrices.
    """
    return random_rotations(n, generator=generator, dtype=dtype)


def von_mises_fisher(
    mean: torch.Tensor, concentration: float, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw unit vectors from the von Mises-Fisher distribution on the sphere S^2.

    Density ``proportional to exp(kappa * mu . x)``; drawn exactly (Wood 1994, closed form in
    3D): ``w = mu . x = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa`` with ``u`` uniform, and a
    uniform azimuth around ``mu``. The mean angle from ``mu`` is about
    ``sqrt(pi / (2 kappa))`` radians for large kappa (kappa = 20: 16 degrees).

    Parameters
    ----------
    mean
        ``(3,)`` mean direction (normalised here).
    concentration
        kappa > 0 (dimensionless); 0 gives the uniform distribution.
    n
        Number of samples.
    generator
        CPU torch generator.

    Returns
    -------
    torch.Tensor
        ``(n, 3)`` float64 unit vectors.
    """
    if concentration < 0:
        raise ValueError(f"concentration must be >= 0, got {concentration}")
    mu = mean.to(torch.float64)
    mu = mu / torch.linalg.vector_norm(mu)
    # 1 - rand is in (0, 1]: the logarithm below stays finite.
    u = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64)
    phi = 2.0 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    if concentration == 0.0:
        w = 2.0 * u - 1.0
    else:
        k = concentration
        w = 1.0 + torch.log(u + (1.0 - u) * math.exp(-2.0 * k)) / k
    w = w.clamp(-1.0, 1.0)
    # Orthonormal basis (e1, e2) of the plane perpendicular to mu.
    helper = torch.tensor(
        [1.0, 0.0, 0.0] if abs(float(mu[0])) < 0.9 else [0.0, 1.0, 0.0], dtype=torch.float64
    )
    e1 = torch.linalg.cross(mu, helper)
    e1 = e1 / torch.linalg.vector_norm(e1)
    e2 = torch.linalg.cross(mu, e1)
    r = torch.sqrt((1.0 - w * w).clamp_min(0.0))
    out = w[:, None] * mu + (r * torch.cos(phi))[:, None] * e1 + (r * torch.sin(phi))[:, None] * e2
    unit: torch.Tensor = out / torch.linalg.vector_norm(out, dim=-1, keepdim=True)
    return unit


def viewing_directions(rotations: torch.Tensor) -> torch.Tensor:
    """Return the viewing direction ``A^T (0, 0, 1)`` of RELION poses, in the volume frame.

    Parameters
    ----------
    rotations
        ``(..., 3, 3)`` RELION rotation matrices A.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` unit vectors, the third rows of A.
    """
    return rotations[..., 2, :]


def _poses_from_directions(
    directions: torch.Tensor, psi: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """RELION matrices whose viewing direction is ``directions`` and in-plane angle ``psi``."""
    d = directions.to(torch.float64)
    rot = torch.atan2(d[:, 1], d[:, 0])
    tilt = torch.acos(d[:, 2].clamp(-1.0, 1.0))
    angles = torch.stack([rot, tilt, psi.to(torch.float64)], dim=-1)
    return euler_to_matrix_rad(angles).to(dtype)


def preferred_orientation_poses(
    n: int,
    generator: torch.Generator | None = None,
    kind: str = "top-side",
    concentration: float = 20.0,
    directions: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Poses with strongly preferred viewing directions and uniform in-plane angle.

    The viewing direction (:func:`viewing_directions`) follows a mixture of von Mises-Fisher
    distributions (:func:`von_mises_fisher`) of common concentration ``kappa`` around a few
    mean directions; psi is uniform in [-pi, pi). Mixture components are picked with their
    weights, one per pose.

    Parameters
    ----------
    n
        Number of poses.
    generator
        CPU torch generator, for reproducible draws.
    kind
        ``"top"`` (all around +z), ``"top-side"`` (+z with weight 1/2, +x and +y with 1/4
        each) or ``"side"`` (+x, +y, -x, -y, 1/4 each); see :data:`PREFERRED_VIEWS`. Ignored
        when ``directions`` is given.
    concentration
        kappa of every component; larger is more concentrated (20: mean 16 degrees from the
        mean direction, 100: 7 degrees).
    directions
        Optional ``(K, 3)`` custom mean viewing directions (volume frame, x y z).
    weights
        Optional ``(K,)`` weights of ``directions`` (normalised here; equal by default).
    dtype
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        ``(n, 3, 3)`` RELION rotation matrices.
    """
    if directions is None:
        if kind not in PREFERRED_VIEWS:
            raise ValueError(
                f"unknown preferred-orientation kind {kind!r}; expected one of "
                f"{', '.join(PREFERRED_VIEWS)}"
            )
        dirs_t, weights_t = PREFERRED_VIEWS[kind]
        means = torch.tensor(dirs_t, dtype=torch.float64)
        w = torch.tensor(weights_t, dtype=torch.float64)
    else:
        means = directions.to(torch.float64).reshape(-1, 3)
        w = (
            torch.ones(len(means), dtype=torch.float64)
            if weights is None
            else weights.to(torch.float64).reshape(-1)
        )
        if len(w) != len(means) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("weights must be K non-negative numbers, not all zero")
    cdf = torch.cumsum(w / w.sum(), dim=0)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    component = torch.searchsorted(cdf, u, right=True).clamp_max(len(means) - 1)
    dirs = torch.empty((n, 3), dtype=torch.float64)
    for k in range(len(means)):
        # Every component draws n samples so that the random stream does not depend on
        # how many poses each component receives.
        dirs_k = von_mises_fisher(means[k], concentration, n, generator)
        sel = component == k
        dirs[sel] = dirs_k[sel]
    psi = (torch.rand(n, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * math.pi
    return _poses_from_directions(dirs, psi, dtype)
