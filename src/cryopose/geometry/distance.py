"""Geodesic distances between rotations, angular error under point-group symmetry, summaries.

Rotations are ``(..., 3, 3)`` matrices in RELION's convention (left-multiplying column
vectors). The geodesic distance between ``R1`` and ``R2`` is the rotation angle of
``R1^T R2`` in radians, in ``[0, pi]``. Under a point group G the poses equivalent to ``A``
are ``A @ g`` (see :mod:`cryopose.geometry.symmetry`), so the angular error of a prediction is
``min_g geodesic(A_true @ g, A_pred)``.

>>> import torch
>>> from cryopose.geometry.rotations import axis_angle_to_matrix
>>> A = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64))
>>> round(float(geodesic_distance(torch.eye(3, dtype=torch.float64), A)), 6)
0.3
>>> quarter_turn = axis_angle_to_matrix(torch.tensor([0.0, 0.0, torch.pi / 2]))
>>> round(float(angular_error(torch.eye(3), quarter_turn, "C4")), 4)
0.0
"""

from __future__ import annotations

import torch

from cryopose.errors import InputError
from cryopose.geometry.symmetry import symmetry_group

__all__ = ["angular_error", "error_summary", "geodesic_distance", "quaternion_distance"]

# Largest number of (pose, group element) pairs scored at once in angular_error.
_MAX_PAIRS = 1 << 22


def _rotation_angle(M: torch.Tensor) -> torch.Tensor:
    """Rotation angle in radians of ``(..., 3, 3)`` rotation matrices.

    ``atan2(|skew part|, trace - 1)`` where ``|skew| = 2 sin t`` and ``trace - 1 = 2 cos t``:
    accurate to rounding near 0 and near pi, where ``acos`` loses half the digits.
    """
    skew = torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]],
        dim=-1,
    )
    trace = M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2]
    return torch.atan2(torch.linalg.vector_norm(skew, dim=-1), trace - 1)


def geodesic_distance(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Geodesic distance on SO(3): the rotation angle of ``R1^T R2``.

    Parameters
    ----------
    R1, R2
        ``(..., 3, 3)`` rotation matrices; leading dimensions broadcast.

    Returns
    -------
    torch.Tensor
        ``(...)`` angles in radians, in ``[0, pi]``. Equal to ``acos((trace(R1^T R2) - 1) / 2)``
        but accurate near 0 and pi; differentiable away from 0 and pi.
    """
    if R1.shape[-2:] != (3, 3) or R2.shape[-2:] != (3, 3):
        raise ValueError(
            f"expected matrices of shape (..., 3, 3), got {tuple(R1.shape)} and {tuple(R2.shape)}"
        )
    return _rotation_angle(R1.transpose(-1, -2) @ R2)


def quaternion_distance(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Geodesic distance between the rotations of two quaternions: ``2 acos |<q1, q2>|``.

    Computed as ``4 atan2(|q1 - s q2|, |q1 + s q2|)`` with ``s = sign <q1, q2>`` (the angle
    between unit 4-vectors is twice the atan2 of their half-difference and half-sum), which is
    accurate near 0 and pi where ``acos`` is not.

    Parameters
    ----------
    q1, q2
        ``(..., 4)`` quaternions ``(w, x, y, z)``; normalised first; leading dims broadcast.

    Returns
    -------
    torch.Tensor
        ``(...)`` angles in radians in ``[0, pi]``, the same value as :func:`geodesic_distance`
        of the corresponding matrices.
    """
    if q1.shape[-1:] != (4,) or q2.shape[-1:] != (4,):
        raise ValueError(
            f"expected quaternions of shape (..., 4), got {tuple(q1.shape)} and {tuple(q2.shape)}"
        )
    q1 = q1 / torch.linalg.vector_norm(q1, dim=-1, keepdim=True)
    q2 = q2 / torch.linalg.vector_norm(q2, dim=-1, keepdim=True)
    # q and -q are the same rotation: compare against the closer of the two.
    sign = torch.where((q1 * q2).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(q2)
    q2 = sign * q2
    diff = torch.linalg.vector_norm(q1 - q2, dim=-1)
    total = torch.linalg.vector_norm(q1 + q2, dim=-1)
    return 4 * torch.atan2(diff, total)


def angular_error(
    R_true: torch.Tensor, R_pred: torch.Tensor, symmetry: str | torch.Tensor = "C1"
) -> torch.Tensor:
    """Angular error in degrees between true and predicted poses, modulo a point group.

    ``min over g in G of geodesic(R_true @ g, R_pred)``. The best ``g`` is chosen by the
    largest ``trace(g^T R_true^T R_pred)`` (one matrix product per chunk), and only its
    angle is computed accurately, so memory stays bounded: poses are processed in chunks of at
    most ``2**22 / |G|``. Gradients flow to both inputs through the selected ``g``.

    Parameters
    ----------
    R_true, R_pred
        ``(..., 3, 3)`` rotation matrices (RELION convention); leading dimensions broadcast.
    symmetry
        Point-group name (see :func:`cryopose.geometry.symmetry_group`) or a ``(|G|, 3, 3)``
        tensor of group rotations.

    Returns
    -------
    torch.Tensor
        ``(...)`` errors in degrees in ``[0, 180]``, dtype of the promoted inputs.
    """
    if R_true.shape[-2:] != (3, 3) or R_pred.shape[-2:] != (3, 3):
        raise ValueError(
            "expected matrices of shape (..., 3, 3), "
            f"got {tuple(R_true.shape)} and {tuple(R_pred.shape)}"
        )
    dtype = torch.promote_types(R_true.dtype, R_pred.dtype)
    group = symmetry_group(symmetry) if isinstance(symmetry, str) else symmetry
    if group.ndim != 3 or group.shape[-2:] != (3, 3):
        raise ValueError(f"expected group rotations of shape (G, 3, 3), got {tuple(group.shape)}")
    group = group.to(dtype=dtype, device=R_true.device)
    batch = torch.broadcast_shapes(R_true.shape[:-2], R_pred.shape[:-2])  # type: ignore[no-untyped-call]
    # M = R_true^T R_pred; the error for g is the angle of g^T M.
    M = (R_true.to(dtype).transpose(-1, -2) @ R_pred.to(dtype)).expand(*batch, 3, 3)
    M = M.reshape(-1, 3, 3)
    if group.shape[0] == 1:
        angles = _rotation_angle(group[0].transpose(-1, -2) @ M)
    else:
        chunk = max(1, _MAX_PAIRS // group.shape[0])
        flat_group = group.reshape(-1, 9)
        parts = []
        for start in range(0, M.shape[0], chunk):
            m = M[start : start + chunk]
            # trace(g^T m) = <g, m> (Frobenius) = 1 + 2 cos(angle): largest = closest.
            best = (m.reshape(-1, 9) @ flat_group.T).argmax(dim=1)
            parts.append(_rotation_angle(group[best].transpose(-1, -2) @ m))
        angles = torch.cat(parts) if parts else M.new_zeros(0)
    return torch.rad2deg(angles).reshape(batch)


def error_summary(
    errors_deg: torch.Tensor, weights: torch.Tensor | None = None
) -> dict[str, float]:
    """Summary statistics of angular errors.

    Parameters
    ----------
    errors_deg
        ``(N,)`` (or any shape, flattened) angular errors in degrees.
    weights
        Optional non-negative weights of the same shape, e.g. the predictions' confidences;
        at least one must be positive.

    Returns
    -------
    dict[str, float]
        ``count`` (N, an int), ``mean``, ``weighted_mean`` (``sum(w e) / sum(w)``; the
        plain mean when no weights are given), ``median`` (mean of the two middle values
        for even N, as ``numpy.median``), ``frac_within_5`` and ``frac_within_10``
        (fraction of errors ``<= 5`` and ``<= 10`` degrees).

    Raises
    ------
    InputError
        For no errors, weights of another shape, negative weights or weights summing to 0.
    """
    e = errors_deg.detach().reshape(-1).to(torch.float64)
    n = e.numel()
    if n == 0:
        raise InputError(None, "no errors to summarise; expected at least one value", "errors")
    if weights is None:
        w = torch.ones_like(e)
    else:
        if weights.shape != errors_deg.shape:
            raise InputError(
                None,
                f"weights of shape {tuple(weights.shape)}; expected the errors' shape "
                f"{tuple(errors_deg.shape)}",
                "weights",
            )
        w = weights.detach().reshape(-1).to(device=e.device, dtype=torch.float64)
        if bool((w < 0).any()) or not float(w.sum()) > 0:
            raise InputError(None, "weights must be non-negative with a positive sum", "weights")
    ordered = torch.sort(e).values
    median = 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    return {
        "count": n,
        "mean": float(e.mean()),
        "weighted_mean": float((w * e).sum() / w.sum()),
        "median": float(median),
        "frac_within_5": float((e <= 5).to(torch.float64).mean()),
        "frac_within_10": float((e <= 10).to(torch.float64).mean()),
    }
