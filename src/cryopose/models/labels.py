"""Target distributions over the HEALPix SO(3) grid for pose classification, with symmetry.

A particle at pose ``R`` of a map with point group G is equally well described by every
``R @ g`` (:mod:`cryopose.geometry.symmetry`). Its label puts equal mass on the grid cell nearest
to each of these ``|G|`` poses (cryoPARES' symmetric labels), optionally mixed with a uniform
distribution (label smoothing ``eps``): ``(1 - eps) / |G|`` on each mate's cell plus ``eps / M``
everywhere. At order 4 (``M = 294,912``) the dense form is 1.2 MB per particle, so the loss also
has a sparse form that only needs the ``(B, |G|)`` cell indices.

>>> import torch
>>> from cryopose.geometry import euler_to_matrix
>>> R = euler_to_matrix(torch.tensor([[10.0, 40.0, 70.0]]))
>>> labels = rotation_labels(R, 1, symmetry="D2")
>>> labels.shape, int((labels > 0).sum()), float(labels.sum())
(torch.Size([1, 576]), 4, 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryopose.geometry.healpix import grid_size, nearest_grid_index
from cryopose.geometry.symmetry import symmetry_group

__all__ = ["label_cross_entropy", "rotation_label_indices", "rotation_labels"]


def _check_smoothing(smoothing: float) -> None:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must lie in [0, 1), got {smoothing}")


def rotation_label_indices(R: torch.Tensor, order: int, symmetry: str = "C1") -> torch.Tensor:
    """Grid cells of every symmetry mate of each pose (the sparse label).

    Parameters
    ----------
    R
        ``(B, 3, 3)`` poses (RELION convention).
    order
        HEALPix SO(3) grid order.
    symmetry
        Point group (``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I``...).

    Returns
    -------
    torch.Tensor
        ``(B, |G|)`` int64 indices ``nearest_grid_index(R @ g)`` in the group's element
        order (identity first), on R's device. Two mates can share a cell at coarse orders;
        both entries are kept so that each carries ``1 / |G|`` of the mass.
    """
    if R.ndim != 3 or R.shape[-2:] != (3, 3):
        raise ValueError(f"expected poses of shape (B, 3, 3), got {tuple(R.shape)}")
    group = symmetry_group(symmetry).to(device=R.device)
    mates = R.to(torch.float64)[:, None] @ group[None]  # (B, |G|, 3, 3)
    return nearest_grid_index(mates, order)


def rotation_labels(
    R: torch.Tensor, order: int, symmetry: str = "C1", smoothing: float = 0.0
) -> torch.Tensor:
    """Dense target distributions over the grid.

    Parameters
    ----------
    R
        ``(B, 3, 3)`` poses (RELION convention).
    order
        HEALPix SO(3) grid order.
    symmetry
        Point group name.
    smoothing
        Label smoothing ``eps`` in ``[0, 1)``: this much mass is spread uniformly over all
        ``M`` cells.

    Returns
    -------
    torch.Tensor
        ``(B, M)`` float32 distributions (rows sum to 1): ``(1 - eps) / |G|`` added at each
        mate's cell, plus ``eps / M`` everywhere.
    """
    _check_smoothing(smoothing)
    index = rotation_label_indices(R, order, symmetry)
    size = grid_size(order)
    labels = torch.full((R.shape[0], size), smoothing / size, device=R.device)
    mass = torch.full(index.shape, (1.0 - smoothing) / index.shape[1], device=R.device)
    return labels.scatter_add_(1, index, mass)


def label_cross_entropy(
    logits: torch.Tensor, label_indices: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy against symmetric smoothed labels, from the sparse indices.

    Equal to ``-(rotation_labels(...) * log_softmax(logits)).sum(-1).mean()`` without building
    the ``(B, M)`` labels.

    Parameters
    ----------
    logits
        ``(B, M)`` unnormalised log-probabilities over the grid.
    label_indices
        ``(B, |G|)`` indices from :func:`rotation_label_indices`.
    smoothing
        Label smoothing ``eps`` in ``[0, 1)``.

    Returns
    -------
    torch.Tensor
        Scalar mean loss over the batch (nats).
    """
    _check_smoothing(smoothing)
    if logits.ndim != 2 or label_indices.ndim != 2 or logits.shape[0] != label_indices.shape[0]:
        raise ValueError(
            f"expected logits (B, M) and indices (B, G), got {tuple(logits.shape)} "
            f"and {tuple(label_indices.shape)}"
        )
    log_p = F.log_softmax(logits, dim=-1)
    on_mates = log_p.gather(1, label_indices.to(logits.device)).mean(dim=1)
    loss = -(1.0 - smoothing) * on_mates
    if smoothing > 0:
        loss = loss - smoothing * log_p.mean(dim=1)
    return loss.mean()
